package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServePortTaken: `riffle serve` on a taken address fails, names the
// address and the flag, and creates no data directory.
func TestServePortTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := filepath.Join(t.TempDir(), "data")
	out, err := runRiffle(context.Background(), "serve", "--data-dir", dir, "--listen", taken.Addr().String())
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("serve on a taken port: err = %v (output %q), want the address and --listen named", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("data dir %s created by a serve that could not listen (stat: %v)", dir, err)
	}
}
