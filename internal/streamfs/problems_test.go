package streamfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/streamfs"
)

// TestProblemsNameCorruptSpans: a read failing on corrupt data leaves
// Problems naming the layer and span, and saying the data does not match
// its digest; the spans and layers are the image's.
func TestProblemsNameCorruptSpans(t *testing.T) {
	r, m, dir, img := featureMountImage(t, streamfs.Options{NoPrefetch: true, ReadTimeout: 5 * time.Second})
	if got := m.Problems(); len(got) != 0 {
		t.Fatalf("problems before any read: %v", got)
	}
	r.corrupt.Store(1 << 30)
	if _, err := os.ReadFile(filepath.Join(dir, "data/big.bin")); !errors.Is(err, unix.EIO) {
		t.Fatalf("read from a corrupting registry: %v, want EIO", err)
	}
	ps := m.Problems()
	if len(ps) < 3 || len(ps) > 8 {
		t.Fatalf("%d problems, want the 3 or more attempts, at most 8 kept: %v", len(ps), ps)
	}
	p := ps[len(ps)-1]
	if !p.Corrupt || !errors.Is(p.Err, streamfs.ErrCorrupt) {
		t.Errorf("last problem %v: want a corrupt fetch", p)
	}
	if !strings.Contains(p.String(), "does not match its digest") || !strings.Contains(p.String(), p.Layer.String()) {
		t.Errorf("problem text %q: want the layer and \"does not match its digest\"", p.String())
	}
	found := false
	for i, l := range img.Layers {
		if l.Digest() == p.Layer {
			spans := l.Spans()
			found = p.Span < len(spans) && spans[p.Span].Offset == p.Offset && spans[p.Span].Size == p.Size
			t.Logf("layer %d: %s", i, p)
		}
	}
	if !found {
		t.Errorf("problem %v names no span of the image", p)
	}
	for _, q := range ps {
		if q.Time.After(time.Now()) || q.Time.IsZero() {
			t.Errorf("problem time %v", q.Time)
		}
	}
}
