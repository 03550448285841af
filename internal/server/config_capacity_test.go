package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/riffle-dev/riffle/internal/server"
)

// TestLoadConfigCapacity: the node's capacity keys load, and negative
// values are refused naming the key.
func TestLoadConfigCapacity(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("capacity:\n  cpuMilli: 8000\n  memoryMib: 16384\n  overcommit: 1.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := server.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Capacity != (server.CapacityConfig{CPUMilli: 8000, MemoryMib: 16384, Overcommit: 1.5}) {
		t.Errorf("capacity = %+v", c.Capacity)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	c.Capacity.Overcommit = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "capacity") {
		t.Errorf("negative overcommit: %v", err)
	}
}
