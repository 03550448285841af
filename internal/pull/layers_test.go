package pull_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/testutil"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// fixture is the embedded registry behind an httptest server holding one
// pushed image, and a client resolving it.
type fixture struct {
	c   *remote.Client
	img *remote.Image
	// blobGets counts blob GETs the registry served.
	blobGets atomic.Int64
	// corrupt is a blob digest whose bytes the registry serves changed.
	corrupt atomic.Value
}

func newFixture(t testing.TB, spec imagegen.Spec) *fixture {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.New(ctx, registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			f.blobGets.Add(1)
			if c, _ := f.corrupt.Load().(string); c != "" && strings.HasSuffix(r.URL.Path, c) {
				w = &mtimeFlipper{ResponseWriter: w}
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close(); reg.Close() })
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	f.c = remote.New(remote.Options{Timeout: time.Minute})
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/img:v1"
	if err := f.c.Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	if f.img, err = f.c.Resolve(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

// standaloneFeatures is imagegen.AllFeatures without its hard link to a
// file of a lower layer, which a per-layer store refuses.
func standaloneFeatures() imagegen.Spec {
	spec := imagegen.AllFeatures()
	layers := append([]imagegen.Layer(nil), spec.Layers...)
	var kept []imagegen.Entry
	for _, e := range layers[1].Entries {
		if e.Name != "links/hard-xlayer" {
			kept = append(kept, e)
		}
	}
	layers[1].Entries = kept
	spec.Layers = layers
	return spec
}

func openStore(t testing.TB) *layerstore.Store {
	t.Helper()
	s, err := layerstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A pull into the layer store, mounted as overlayfs over LowerDirs, shows
// the same tree as the merged pull.Image; a second pull fetches nothing.
func TestLayersOverlayMatchesImage(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	f := newFixture(t, standaloneFeatures())
	merged := t.TempDir()
	whole, err := pull.Image(ctx, f.c, f.img, merged, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	fetched, err := pull.Layers(ctx, f.c, f.img, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Every distinct blob once (AllFeatures repeats one layer); the
	// merged pull applies every layer.
	var want, wantTar, allTar int64
	seen := map[digest.Digest]bool{}
	for _, l := range f.img.Manifest.Layers {
		n := tarSize(t, f, l.Digest)
		allTar += n
		if !seen[l.Digest] {
			want += l.Size
			wantTar += n
		}
		seen[l.Digest] = true
	}
	if fetched.Wire != want || fetched.Uncompressed != wantTar {
		t.Errorf("fetched %d bytes and extracted %d, want %d and %d (each distinct blob once)", fetched.Wire, fetched.Uncompressed, want, wantTar)
	}
	if whole.Uncompressed != allTar {
		t.Errorf("pull.Image extracted %d bytes, want %d", whole.Uncompressed, allTar)
	}
	lowers := pull.LowerDirs(s, f.img)
	if len(lowers) != len(seen) {
		t.Errorf("LowerDirs lists %d directories for %d distinct layers", len(lowers), len(seen))
	}
	if lowers[0] != s.Path(f.img.Config.RootFS.DiffIDs[len(f.img.Config.RootFS.DiffIDs)-1]) {
		t.Errorf("LowerDirs does not start with the top-most layer: %v", lowers)
	}
	target := t.TempDir()
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(target, 0)
	a, err := fstree.Scan(ctx, merged)
	if err != nil {
		t.Fatal(err)
	}
	b, err := fstree.Scan(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if d := fstree.Diff(a, b, fstree.IgnoreDirNlink()); d != nil {
		t.Errorf("overlay over pull.Layers differs from pull.Image:\n%s", strings.Join(d, "\n"))
	}

	gets := f.blobGets.Load()
	again, err := pull.Layers(ctx, f.c, f.img, s, 0)
	if err != nil || again != (pull.Bytes{}) || f.blobGets.Load() != gets {
		t.Errorf("second pull: %+v with %d blob GETs (%v), want nothing", again, f.blobGets.Load()-gets, err)
	}
}

// tarSize returns the length of the uncompressed stream of f's blob d.
func tarSize(t *testing.T, f *fixture, d digest.Digest) int64 {
	t.Helper()
	ctx := context.Background()
	var mt string
	var size int64
	for _, l := range f.img.Manifest.Layers {
		if l.Digest == d {
			mt, size = l.MediaType, l.Size
		}
	}
	b, err := f.c.RepositoryBlob(ctx, f.img.Repository, d, size)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	u, err := unpack.Decompress(types.MediaType(mt), rc)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	n, err := io.Copy(io.Discard, u)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A blob whose bytes do not match its digest fails the pull and leaves no
// layer, even when its content decompresses to the right diffID: the
// registry here changes the gzip header's MTIME field, which gzip ignores.
func TestLayersBlobDigestMismatch(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	f := newFixture(t, imagegen.Large(1<<20))
	f.corrupt.Store(string(f.img.Manifest.Layers[0].Digest))
	s := openStore(t)
	_, err := pull.Layers(ctx, f.c, f.img, s, 0)
	if !errors.Is(err, remote.ErrDigestMismatch) {
		t.Fatalf("pull.Layers: %v, want ErrDigestMismatch", err)
	}
	d := digest.Digest(f.img.Config.RootFS.DiffIDs[0].String())
	if s.Has(d) {
		t.Error("the layer of a bad blob is complete")
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "sha256", d.Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bad layer left something behind: %v", err)
	}
}

// mtimeFlipper changes byte 4 of a response body (in a gzip blob, the
// first byte of the MTIME field).
type mtimeFlipper struct {
	http.ResponseWriter
	off int
}

func (m *mtimeFlipper) Write(p []byte) (int, error) {
	if m.off <= 4 && m.off+len(p) > 4 {
		q := append([]byte(nil), p...)
		q[4-m.off] ^= 0x55
		p = q
	}
	m.off += len(p)
	return m.ResponseWriter.Write(p)
}

func TestLayersCrossLayerHardLink(t *testing.T) {
	testutil.RequiresRoot(t)
	f := newFixture(t, imagegen.AllFeatures())
	_, err := pull.Layers(context.Background(), f.c, f.img, openStore(t), 0)
	if !errors.Is(err, layerstore.ErrCrossLayerLink) {
		t.Fatalf("pull.Layers: %v, want ErrCrossLayerLink", err)
	}
}

// benchSpec is a 4-layer image of 4 × 24 MiB in 96 files per layer, mixed
// (half compressible) content.
func benchSpec() imagegen.Spec {
	var spec imagegen.Spec
	for l := range 4 {
		var es []imagegen.Entry
		dir := "layer" + string(rune('a'+l))
		es = append(es, imagegen.Entry{Type: imagegen.Dir, Name: dir})
		for i := range 96 {
			es = append(es, imagegen.Entry{Type: imagegen.File, Name: dir + "/f" + string(rune('a'+i/26)) + string(rune('a'+i%26)), Size: 256 << 10, Seed: uint64(l*1000 + i)})
		}
		spec.Layers = append(spec.Layers, imagegen.Layer{Entries: es})
	}
	return spec
}

// BenchmarkPull compares the merged, sequential pull.Image with the
// parallel per-layer pull.Layers over the in-process registry, reporting
// the process's CPU time per pull.
func BenchmarkPull(b *testing.B) {
	testutil.RequiresRoot(b)
	f := newFixture(b, benchSpec())
	ctx := context.Background()
	run := func(b *testing.B, pullOnce func(dir string) error) {
		var size int64
		for _, l := range f.img.Manifest.Layers {
			size += l.Size
		}
		b.SetBytes(size)
		var cpu time.Duration
		for b.Loop() {
			dir := b.TempDir()
			before := cpuTime()
			if err := pullOnce(dir); err != nil {
				b.Fatal(err)
			}
			cpu += cpuTime() - before
			b.StopTimer()
			os.RemoveAll(dir)
			b.StartTimer()
		}
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	}
	b.Run("image", func(b *testing.B) {
		run(b, func(dir string) error {
			os.Mkdir(filepath.Join(dir, "tmp"), 0o755)
			_, err := pull.Image(ctx, f.c, f.img, filepath.Join(dir, "rootfs"), filepath.Join(dir, "tmp"), 0)
			return err
		})
	})
	b.Run("layers", func(b *testing.B) {
		run(b, func(dir string) error {
			s, err := layerstore.Open(dir)
			if err != nil {
				return err
			}
			_, err = pull.Layers(ctx, f.c, f.img, s, 0)
			return err
		})
	})
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
