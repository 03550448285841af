package layerstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/testutil"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// StandaloneFeatures is imagegen.AllFeatures without its one hard link to a
// file of a lower layer, which no per-layer store can hold (see
// TestCrossLayerHardLinkIsRefused).
func StandaloneFeatures() imagegen.Spec {
	spec := imagegen.AllFeatures()
	layers := slicesClone(spec.Layers)
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

func slicesClone[T any](s []T) []T { return append([]T(nil), s...) }

// built caches build's images by name (string -> v1.Image): building is
// slow under -race and -count=20.
var built sync.Map

func build(t testing.TB, name string, spec func() imagegen.Spec) v1.Image {
	t.Helper()
	if img, ok := built.Load(name); ok {
		return img.(v1.Image)
	}
	img, err := imagegen.Build(spec())
	if err != nil {
		t.Fatal(err)
	}
	built.Store(name, img)
	return img
}

func features(t testing.TB) v1.Image { return build(t, "features", StandaloneFeatures) }

type tarKey struct {
	img v1.Image
	i   int
}

// tars caches tarOf's results (tarKey -> []byte).
var tars sync.Map

// tarOf returns layer i's uncompressed tar and diffID.
func tarOf(t testing.TB, img v1.Image, i int) ([]byte, digest.Digest) {
	t.Helper()
	if b, ok := tars.Load(tarKey{img, i}); ok {
		return b.([]byte), digest.FromBytes(b.([]byte))
	}
	b := readTar(t, img, i)
	tars.Store(tarKey{img, i}, b)
	return b, digest.FromBytes(b)
}

func readTar(t testing.TB, img v1.Image, i int) []byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[i].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func open(t testing.TB, dir string) *layerstore.Store {
	t.Helper()
	s, err := layerstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mountOverlay mounts a read-only overlay of lowers (top-most first) and
// unmounts it when the test ends.
func mountOverlay(t testing.TB, lowers []string) string {
	t.Helper()
	target := t.TempDir()
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Fatalf("mount overlay over %d layers: %v", len(lowers), err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	return target
}

func scan(t testing.TB, dir string) fstree.Tree {
	t.Helper()
	tree, err := fstree.Scan(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// The proof that the store is right: overlayfs over the layers extracted
// one by one shows the same tree as applying them in order onto one
// directory.
func TestOverlayMatchesMergedApply(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, tc := range []struct {
		name string
		spec func() imagegen.Spec
	}{
		{"features", StandaloneFeatures},
		{"features docker", func() imagegen.Spec { return StandaloneFeatures().Docker() }},
		{"large", func() imagegen.Spec { return imagegen.Large(2 << 20) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			img := build(t, tc.name, tc.spec)
			merged := t.TempDir()
			if err := unpack.Image(ctx, merged, img); err != nil {
				t.Fatal(err)
			}
			s := open(t, t.TempDir())
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			for i := range cf.RootFS.DiffIDs {
				b, d := tarOf(t, img, i)
				if err := s.Extract(ctx, d, bytes.NewReader(b), nil); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				if !s.Has(d) {
					t.Fatalf("layer %d is not complete after Extract", i)
				}
			}
			// AllFeatures repeats a layer: only its top-most place is
			// mounted.
			over := mountOverlay(t, topMostOrder(s, cf.RootFS.DiffIDs))
			if d := fstree.Diff(scan(t, merged), scan(t, over), fstree.IgnoreDirNlink()); d != nil {
				t.Errorf("overlay of the store differs from the merged apply:\n%s", strings.Join(d, "\n"))
			}
		})
	}
}

// topMostOrder is pull.LowerDirs for a list of v1 hashes.
func topMostOrder(s *layerstore.Store, diffIDs []v1.Hash) []string {
	var dirs []string
	seen := map[string]bool{}
	for i := len(diffIDs) - 1; i >= 0; i-- {
		if !seen[diffIDs[i].String()] {
			dirs = append(dirs, s.Path(digest.Digest(diffIDs[i].String())))
		}
		seen[diffIDs[i].String()] = true
	}
	return dirs
}

// Whiteouts and opaque directories are stored as overlayfs reads them.
func TestOverlayFormat(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	s := open(t, t.TempDir())
	b, d := tarOf(t, img, 1)
	if err := s.Extract(context.Background(), d, bytes.NewReader(b), nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"deleteme-dir", "data/deleteme.txt"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(s.Path(d), p), &st); err != nil {
			t.Fatalf("whiteout %s: %v", p, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("whiteout %s: mode %#o rdev %d, want a 0:0 character device", p, st.Mode, st.Rdev)
		}
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(s.Path(d), "opaque"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque: trusted.overlay.opaque = %q, %v", buf[:n], err)
	}
	if _, err := os.Lstat(filepath.Join(s.Path(d), ".wh..wh..opq")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the opaque marker was written as a file: %v", err)
	}
}

func TestCrossLayerHardLinkIsRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	img := build(t, "all features", imagegen.AllFeatures)
	s := open(t, t.TempDir())
	b, d := tarOf(t, img, 1)
	err := s.Extract(context.Background(), d, bytes.NewReader(b), nil)
	if !errors.Is(err, layerstore.ErrCrossLayerLink) || !strings.Contains(err.Error(), "links/hard-xlayer") {
		t.Fatalf("Extract: %v, want ErrCrossLayerLink naming links/hard-xlayer", err)
	}
	assertNothingLeft(t, s, d)
}

// onFile reports each regular file with the offset, size and digest the
// streaming index has for it, after its content is on disk.
func TestOnFileMatchesIndex(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, t.TempDir())
	for i, l := range layers {
		b, d := tarOf(t, img, i)
		if s.Has(d) {
			continue // the duplicate layer
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		mt, _ := l.MediaType()
		x, err := index.Build(rc, string(mt), index.Options{})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]index.File{}
		for _, f := range x.Files {
			// Whiteouts are tar files too, but no files in the store.
			if f.IsRegular() && !strings.HasPrefix(filepath.Base(f.Name), ".wh.") {
				want[f.Name] = f
			}
		}
		got := map[string]layerstore.File{}
		err = s.Extract(context.Background(), d, bytes.NewReader(b), func(f layerstore.File) {
			content, err := os.ReadFile(f.Path)
			if err != nil || digest.FromBytes(content) != f.Digest || int64(len(content)) != f.Size {
				t.Errorf("layer %d: %s at %s: content on disk does not match the report (%v)", i, f.Name, f.Path, err)
			}
			if !strings.HasPrefix(f.Path, s.Path(d)+"/") {
				t.Errorf("layer %d: %s: path %s is not under %s", i, f.Name, f.Path, s.Path(d))
			}
			got[f.Name] = f
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("layer %d: %d files reported, the index has %d", i, len(got), len(want))
		}
		for name, w := range want {
			g, ok := got[name]
			if !ok {
				t.Errorf("layer %d: %s not reported", i, name)
				continue
			}
			if g.Offset != w.Offset || g.Size != w.Size || g.Digest != digest.NewDigestFromBytes(digest.SHA256, w.Digest[:]) {
				t.Errorf("layer %d: %s: reported offset %d size %d %s, index says %d %d %x", i, name, g.Offset, g.Size, g.Digest, w.Offset, w.Size, w.Digest)
			}
		}
	}
}

// TestVerifiedStreamReportsNoDigests: a stream marked Verified reports
// its files with offsets and sizes but no digest (nothing is hashed per
// file), and is still checked against the diffID.
func TestVerifiedStreamReportsNoDigests(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, d := tarOf(t, img, 0)
	s := open(t, t.TempDir())
	wrong := digest.FromString("not this layer")
	if err := s.Extract(context.Background(), wrong, layerstore.Verified(bytes.NewReader(b)), nil); !errors.Is(err, unpack.ErrDiffIDMismatch) {
		t.Fatalf("verified stream under the wrong diffID: %v, want ErrDiffIDMismatch", err)
	}
	files := 0
	err := s.Extract(context.Background(), d, layerstore.Verified(bytes.NewReader(b)), func(f layerstore.File) {
		files++
		content, err := os.ReadFile(f.Path)
		if err != nil || int64(len(content)) != f.Size || f.Digest != "" {
			t.Errorf("%s: size %d, digest %q on disk %d bytes (%v); want the size and no digest", f.Name, f.Size, f.Digest, len(content), err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 || !s.Has(d) {
		t.Errorf("%d files reported, layer complete: %v", files, s.Has(d))
	}
}

// gatedReader passes the first n bytes of r, then blocks until gate is
// closed; reached is closed when it blocks.
type gatedReader struct {
	r       io.Reader
	n       int64
	gate    chan struct{}
	reached chan struct{}
	once    sync.Once
}

func newGated(b []byte, n int64) *gatedReader {
	return &gatedReader{r: bytes.NewReader(b), n: n, gate: make(chan struct{}), reached: make(chan struct{})}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.n <= 0 {
		g.once.Do(func() { close(g.reached) })
		<-g.gate
		return g.r.Read(p)
	}
	if int64(len(p)) > g.n {
		p = p[:g.n]
	}
	n, err := g.r.Read(p)
	g.n -= int64(n)
	return n, err
}

// Four callers extracting one layer at once: one extraction, all succeed,
// the waiters see no onFile calls.
func TestConcurrentExtractOfOneLayer(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, d := tarOf(t, img, 0)
	s := open(t, t.TempDir())
	ctx := context.Background()
	var mu sync.Mutex
	calls := map[int]int{}
	onFile := func(g int) func(layerstore.File) {
		return func(layerstore.File) { mu.Lock(); calls[g]++; mu.Unlock() }
	}
	leader := newGated(b, int64(len(b)/2))
	errs := make(chan error, 4)
	go func() { errs <- s.Extract(ctx, d, leader, onFile(0)) }()
	<-leader.reached
	for g := 1; g < 4; g++ {
		go func() { errs <- s.Extract(ctx, d, bytes.NewReader(b), onFile(g)) }()
	}
	close(leader.gate)
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("Extract: %v", err)
		}
	}
	if len(calls) != 1 || calls[0] == 0 {
		t.Errorf("onFile calls per caller: %v, want all from the first", calls)
	}
	if !s.Has(d) {
		t.Error("layer not complete")
	}
}

// Two stores on one directory exclude each other as two processes do
// (flock is per open file): the second waits and reports the first's
// success without extracting.
func TestExtractWaitsForAnotherStore(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, d := tarOf(t, img, 0)
	dir := t.TempDir()
	s1, s2 := open(t, dir), open(t, dir)
	ctx := context.Background()
	leader := newGated(b, int64(len(b)/2))
	errs := make(chan error, 1)
	go func() { errs <- s1.Extract(ctx, d, leader, nil) }()
	<-leader.reached
	// A third Open meanwhile must leave the running extraction alone.
	open(t, dir)
	done := make(chan error, 1)
	called := false
	go func() {
		done <- s2.Extract(ctx, d, bytes.NewReader(b), func(layerstore.File) { called = true })
	}()
	close(leader.gate)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if called {
		t.Error("the waiting store extracted the layer again")
	}
}

// A caller whose context ends gives up alone: a waiter extracts the layer
// from its own stream.
func TestWaiterTakesOverFromCancelledLeader(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, d := tarOf(t, img, 0)
	s := open(t, t.TempDir())
	lctx, cancel := context.WithCancel(context.Background())
	leader := newGated(b, int64(len(b)/2))
	lerr := make(chan error, 1)
	go func() { lerr <- s.Extract(lctx, d, leader, nil) }()
	<-leader.reached
	werr := make(chan error, 1)
	var files int
	go func() {
		werr <- s.Extract(context.Background(), d, bytes.NewReader(b), func(layerstore.File) { files++ })
	}()
	cancel()
	close(leader.gate)
	if err := <-lerr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v, want context.Canceled", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if !s.Has(d) {
		t.Error("layer not complete")
	}
	// Whether the waiter took over or started after the leader ended, it
	// extracted the layer itself.
	if files == 0 {
		t.Error("the waiter reported no files")
	}
}

func assertNothingLeft(t *testing.T, s *layerstore.Store, d digest.Digest) {
	t.Helper()
	if s.Has(d) {
		t.Error("layer is complete")
	}
	entries, err := os.ReadDir(filepath.Join(s.Dir(), "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind: %s", e.Name())
	}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Errorf("List: %v, %v", l, err)
	}
}

func TestDiffIDMismatchLeavesNothing(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, _ := tarOf(t, img, 0)
	s := open(t, t.TempDir())
	wrong := digest.FromString("not this layer")
	err := s.Extract(context.Background(), wrong, bytes.NewReader(b), nil)
	if err == nil || !errors.Is(err, unpack.ErrDiffIDMismatch) || !strings.Contains(err.Error(), wrong.String()) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Extract: %v, want an error naming %s and \"does not match\"", err, wrong)
	}
	assertNothingLeft(t, s, wrong)
}

// cancelAfter cancels its context once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
	}
	n, err := c.r.Read(p[:min(int64(len(p)), max(c.n, 1))])
	c.n -= int64(n)
	return n, err
}

func TestCancelledExtractLeavesNothing(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, d := tarOf(t, img, 0)
	s := open(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := s.Extract(ctx, d, &cancelAfter{r: bytes.NewReader(b), n: int64(len(b) / 2), cancel: cancel}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract: %v, want context.Canceled", err)
	}
	assertNothingLeft(t, s, d)
	waitTrashEmpty(t, s)
	// And the layer extracts fine afterwards.
	if err := s.Extract(context.Background(), d, bytes.NewReader(b), nil); err != nil || !s.Has(d) {
		t.Fatalf("Extract after a cancelled one: %v", err)
	}
}

// waitTrashEmpty waits until the goroutine removing discarded trees has
// emptied the trash (it renames them there and returns at once).
func waitTrashEmpty(t *testing.T, s *layerstore.Store) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		entries, err := os.ReadDir(filepath.Join(s.Dir(), "trash"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the trash still holds %d entries after a minute", len(entries))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestListAndRemove(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	s := open(t, t.TempDir())
	var ds []digest.Digest
	for i := range 2 {
		b, d := tarOf(t, img, i)
		if err := s.Extract(context.Background(), d, bytes.NewReader(b), nil); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	l, err := s.List()
	if err != nil || len(l) != 2 {
		t.Fatalf("List: %v, %v", l, err)
	}
	for _, x := range l {
		// Layer 0 holds ~6 MB of files, layer 1 ~300 KiB.
		if x.Bytes < 100<<10 {
			t.Errorf("%s: %d bytes on disk", x.DiffID, x.Bytes)
		}
	}
	if l[0].DiffID > l[1].DiffID {
		t.Errorf("List is not sorted: %v", l)
	}
	if err := s.Remove(ds[0]); err != nil {
		t.Fatal(err)
	}
	if s.Has(ds[0]) || !s.Has(ds[1]) {
		t.Error("Remove removed the wrong layer")
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "sha256", ds[0].Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removed layer's directory: %v", err)
	}
	if l, _ := s.List(); len(l) != 1 || l[0].DiffID != ds[1] {
		t.Errorf("List after Remove: %v", l)
	}
}

// Open removes incomplete layers (a tree without marker, a marker still
// being written) unless a live process holds the layer's lock.
func TestOpenRemovesIncompleteLayers(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	s := open(t, dir)
	img := features(t)
	b, done := tarOf(t, img, 0)
	if err := s.Extract(context.Background(), done, bytes.NewReader(b), nil); err != nil {
		t.Fatal(err)
	}
	leftover := func(name string) digest.Digest {
		d := digest.FromString(name)
		top := filepath.Join(dir, "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Join(top, "fs", "usr", "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(top, "fs", "usr", "bin", "half"), []byte("half"), 0o644)
		os.WriteFile(filepath.Join(top, "complete.tmp"), []byte(`{"diffID":`), 0o644)
		return d
	}
	crashed, crashedLocked, live := leftover("crashed"), leftover("crashed with lock file"), leftover("live")
	if err := os.WriteFile(filepath.Join(dir, "sha256", crashedLocked.Encoded()+".lock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A live process's lock: flock on its own open file.
	lf, err := os.OpenFile(filepath.Join(dir, "sha256", live.Encoded()+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir)
	for _, d := range []digest.Digest{crashed, crashedLocked} {
		if _, err := os.Stat(filepath.Join(dir, "sha256", d.Encoded())); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("incomplete layer %s was not removed: %v", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(s2.Path(live), "usr", "bin", "half")); err != nil {
		t.Errorf("the layer a live process holds was removed: %v", err)
	}
	if !s2.Has(done) {
		t.Error("Open removed a complete layer")
	}
	if s2.Has(crashed) || s2.Has(live) {
		t.Error("an incomplete layer counts as complete")
	}
}

// A process killed while extracting leaves a layer that is not complete
// and that the next Open removes; one killed after Extract returned
// leaves a complete layer.
func TestCrashedProcess(t *testing.T) {
	testutil.RequiresRoot(t)
	img := features(t)
	b, d := tarOf(t, img, 0)
	dir := t.TempDir()
	p := startChild(t, dir, b, d, "hang")
	if _, err := os.Stat(filepath.Join(dir, "sha256", d.Encoded(), "fs", "bin", "tool")); err != nil {
		t.Fatalf("the child wrote nothing yet: %v", err)
	}
	s := open(t, dir) // the child is alive: its layer stays
	if s.Has(d) {
		t.Fatal("a layer being extracted counts as complete")
	}
	if _, err := os.Stat(s.Path(d)); err != nil {
		t.Fatalf("Open removed the layer a live process extracts: %v", err)
	}
	p.Process.Kill()
	p.Wait()
	s = open(t, dir)
	if _, err := os.Stat(filepath.Join(dir, "sha256", d.Encoded())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open kept the killed process's incomplete layer: %v", err)
	}
	p = startChild(t, dir, b, d, "complete")
	p.Process.Kill()
	p.Wait()
	s = open(t, dir)
	if !s.Has(d) {
		t.Fatal("the layer completed before the kill is gone")
	}
	got := scan(t, s.Path(d))
	if e, ok := got.Find("data/big.bin"); !ok || e.Size != 3<<20 {
		t.Errorf("data/big.bin after the crash: %v", e)
	}
}

// childEnv makes the test binary a child that extracts a layer (from
// stdin) into a store and reports on stdout.
const childEnv = "LAYERSTORE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

func startChild(t *testing.T, dir string, layer []byte, d digest.Digest, mode string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "LAYERSTORE_DIR="+dir, "LAYERSTORE_DIFFID="+d.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// In hang mode the child reads half the layer and waits for the rest.
	n := len(layer)
	if mode == "hang" {
		n /= 2
	}
	go func() {
		stdin.Write(layer[:n])
		if mode != "hang" {
			stdin.Close()
		}
	}()
	line := make([]byte, 6)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	return cmd
}

// child extracts stdin into the store and says "ready" when the first
// file is written (hang) or when Extract has returned (complete).
func child(mode string) int {
	s, err := layerstore.Open(os.Getenv("LAYERSTORE_DIR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var once sync.Once
	onFile := func(layerstore.File) {
		if mode == "hang" {
			once.Do(func() { os.Stdout.WriteString("ready\n") })
		}
	}
	if err := s.Extract(context.Background(), digest.Digest(os.Getenv("LAYERSTORE_DIFFID")), os.Stdin, onFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Stdout.WriteString("ready\n")
	time.Sleep(time.Hour) // wait to be killed
	return 0
}
