package server_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/server"
)

// pullInto leaves the layers of a one-layer image in dir's layer store,
// as an earlier riffle serve or riffle pull would.
func pullInto(t *testing.T, dir string, seed uint64) string {
	t.Helper()
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(reg)
	t.Cleanup(func() { hs.Close(); reg.Close() })
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "f", Size: 64 << 10, Seed: seed},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(hs.URL, "http://") + "/p/r/img:v1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Options{Layout: node.Layout{Root: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	rfs, err := n.Pull(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	rfs.Release()
	return rfs.Lower[0]
}

// TestLayersMaxBytesEvicts: a server whose layer store is over
// layers.maxBytes removes unused layers (here at start); under it, they
// stay.
func TestLayersMaxBytesEvicts(t *testing.T) {
	under := t.TempDir()
	kept := pullInto(t, under, 1)
	startServerWith(t, server.Config{DataDir: under})
	over := t.TempDir()
	gone := pullInto(t, over, 2)
	startServerWith(t, server.Config{DataDir: over, Layers: server.LayersConfig{MaxBytes: 1}})
	for i := 0; ; i++ {
		if _, err := os.Stat(gone); os.IsNotExist(err) {
			break
		}
		if i == 200 {
			t.Fatal("the layer over layers.maxBytes stayed 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.ReadFile(filepath.Join(kept, "f")); err != nil {
		t.Fatalf("the layer under the default limit: %v", err)
	}
}

func TestLoadConfigLayers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("layers:\n  maxBytes: 10GiB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := server.LoadConfig(p)
	if err != nil || c.Layers.MaxBytes != 10<<30 {
		t.Fatalf("layers.maxBytes: %d, %v", c.Layers.MaxBytes, err)
	}
	if d := (server.Config{}).WithDefaults().Layers.MaxBytes; d != node.DefaultLayerBytes {
		t.Fatalf("default layers.maxBytes %d", d)
	}
	if err := (server.Config{Layers: server.LayersConfig{MaxBytes: -1}}).Validate(); err == nil || !strings.Contains(err.Error(), "layers.maxBytes") {
		t.Fatalf("negative layers.maxBytes: %v", err)
	}
}
