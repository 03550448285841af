package streamfs_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// A warm node whose cache holds an image's spans, but whose layer store
// does not hold its layers (the first mount's streams never ran or were
// cut short), extracts the layers from the cache: no layer is streamed
// from the registry again, the spans the first mount did not read are
// fetched by range, and the result is the full pull's tree.
func TestWarmLayersExtractFromCache(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := bgImage(t, r)
	c := newCache(t)
	_, dir1 := mount(t, simg, streamfs.Options{Cache: c, NoPassthrough: true, NoPrefetch: true})
	for _, d := range fstree.Diff(want, scan(t, dir1)) {
		t.Error("first mount:", d)
	}
	if n := r.streamBytes.Load(); n != 0 {
		t.Fatalf("the first mount streamed %d bytes without a layer store", n)
	}
	ranged := r.rangeBytes.Load()

	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: c, Layers: store, SingleStream: true})
	waitComplete(t, m)
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error("warm mount:", d)
	}
	st := m.Stats()
	// The image's empty layer (the tar's two end blocks) holds nothing a
	// reader reads, so the first mount cached none of it: it alone
	// streams from the registry, 1 KiB.
	var empty int64
	for i, l := range st.Layers {
		switch {
		case l.Size == 1024:
			empty += l.WireBytes
		case l.WireBytes != 0:
			t.Errorf("layer %d streamed %d bytes from the registry on a warm node", i, l.WireBytes)
		}
	}
	if n := r.streamBytes.Load(); n != empty || st.BackgroundWireBytes != empty {
		t.Errorf("a warm node streamed %d bytes of layers from the registry (stats %d); its empty layer is %d", n, st.BackgroundWireBytes, empty)
	}
	if st.BackgroundCachedBytes == 0 || st.BackgroundCachedBytes > st.BackgroundBytes {
		t.Errorf("background bytes %d, of which from the cache %d", st.BackgroundBytes, st.BackgroundCachedBytes)
	}
	// Only the spans the first mount's reads did not need (tar headers,
	// empty files) came over the wire, by range.
	if extra := r.rangeBytes.Load() - ranged; extra != st.SpanWireBytes || extra >= ranged {
		t.Errorf("the warm mount fetched %d bytes by range (stats %d); the cold one %d", extra, st.SpanWireBytes, ranged)
	}
	for i, l := range st.Layers {
		if l.State != streamfs.LayerComplete || !store.Has(simg.DiffIDs[i]) {
			t.Errorf("layer %d: %+v, in the store: %v", i, l, store.Has(simg.DiffIDs[i]))
		}
	}
	if st.PassthroughOpens == 0 || st.FallbackReads != 0 {
		t.Errorf("files of the settled layers are not read by passthrough: %+v", st)
	}
}

// A file whose spans are all in the cache is read from them at once, even
// while its layer's stream is about to reach it: on a warm node waiting
// for the stream would only delay the read. A file whose spans are not
// cached still waits for the stream, as before.
func TestCachedFileDoesNotWaitForStream(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	_, ref := r.push(t, warmSpec(), "test/warm")
	simg := r.open(t, ref, 64<<10)
	c := newCache(t)
	const warm, cold = "data/warm.bin", "data/cold.bin"
	_, dir1 := mount(t, simg, streamfs.Options{Cache: c, NoPassthrough: true, NoPrefetch: true})
	wantWarm := mustRead(t, filepath.Join(dir1, warm))

	// Hold every layer stream at its start, so that the stream stays
	// "about to reach" both files.
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	hold := func() { <-release }
	r.onStream.Store(&hold)
	// No read-ahead: reading the warm file must not fetch the cold
	// file's spans into the cache before the cold read looks. One stream
	// per layer, which onStream holds (chunks are range requests, and
	// would cache the cold file's spans whenever they got there first).
	m, dir := mount(t, simg, streamfs.Options{Cache: c, Layers: newStore(t), NoPrefetch: true, SingleStream: true})
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the unmount
	waitStreaming(t, m)

	if got := mustRead(t, filepath.Join(dir, warm)); string(got) != string(wantWarm) {
		t.Errorf("%s: got %d bytes, want %d", warm, len(got), len(wantWarm))
	}
	if n := m.Stats().StreamWaits; n != 0 {
		t.Errorf("reading a file whose spans are cached waited %d times for the stream", n)
	}
	mustRead(t, filepath.Join(dir, cold))
	if n := m.Stats().StreamWaits; n == 0 {
		t.Error("reading a file whose spans are not cached did not wait for the stream about to reach it")
	}
}

// warmSpec is one gzip layer whose two files share no span (64 KiB
// spans), the second much larger than the first: caching the first leaves
// most of the layer's spans uncached.
func warmSpec() imagegen.Spec {
	return imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.Dir, Name: "data"},
		{Type: imagegen.File, Name: "data/warm.bin", Size: 200 << 10, Seed: 1},
		{Type: imagegen.File, Name: "data/cold.bin", Size: 1 << 20, Seed: 2},
	}}}}
}

// waitStreaming waits until m's first layer is streaming.
func waitStreaming(t *testing.T, m *streamfs.MountPoint) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if l := m.Stats().Layers; len(l) > 0 && l[0].State == streamfs.LayerStreaming {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first layer does not stream: %+v", m.Stats().Layers)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The kernel's read-ahead on a mount is raised from its FUSE default of
// 128 KiB to Options.KernelReadAhead (default one request of the largest
// size, about 1 MiB), so a reader streaming a file gets large requests; a
// negative value leaves it.
func TestKernelReadAhead(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, _ := bgImage(t, r)
	m, _ := mount(t, simg, streamfs.Options{Cache: newCache(t)})
	if got := m.KernelReadAhead(); got != streamfs.DefaultKernelReadAhead {
		t.Errorf("read-ahead %d, want %d", got, streamfs.DefaultKernelReadAhead)
	}
	m2, _ := mount(t, simg, streamfs.Options{Cache: newCache(t), KernelReadAhead: 4 << 20})
	if got := m2.KernelReadAhead(); got != 4<<20 {
		t.Errorf("read-ahead %d, want 4 MiB", got)
	}
	m3, _ := mount(t, simg, streamfs.Options{Cache: newCache(t), KernelReadAhead: -1})
	if got := m3.KernelReadAhead(); got != 128<<10 {
		t.Errorf("read-ahead %d with the kernel's default, want 128 KiB", got)
	}
}

// Reads served from cached spans by this process are spliced from the
// span files: the data is the file's, reads within a span and across
// spans alike, and once the replies are written no span stays pinned in
// the cache (so settling can drop the spans and eviction can reclaim
// them).
func TestSplicedReadsUnpinSpans(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	img, ref := r.push(t, warmSpec(), "test/splice")
	simg := r.open(t, ref, 64<<10)
	want := unpacked(t, img)
	c := newCache(t)
	whole, err := os.ReadFile(filepath.Join(unpackedDir(t, img), "data/cold.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for pass := range 2 { // cold (fetching), then warm (cached spans)
		// A new mount each time: the kernel has none of its pages.
		_, dir := mount(t, simg, streamfs.Options{Cache: c, NoPassthrough: true})
		f, err := os.Open(filepath.Join(dir, "data/cold.bin"))
		if err != nil {
			t.Fatal(err)
		}
		// Odd sizes at odd offsets, before the kernel caches the file's
		// pages: within spans and across them.
		for _, rd := range [][2]int{{0, 1}, {65535, 2}, {70000, 200000}, {1<<20 - 10, 100}} {
			buf := make([]byte, rd[1])
			n, _ := f.ReadAt(buf, int64(rd[0]))
			if want := min(rd[1], len(whole)-rd[0]); n != want || string(buf[:n]) != string(whole[rd[0]:rd[0]+n]) {
				t.Errorf("pass %d: ReadAt(%d bytes at %d) = %d bytes, want %d (or wrong data)", pass, rd[1], rd[0], n, want)
			}
		}
		f.Close()
		for _, d := range fstree.Diff(want, scan(t, dir)) {
			t.Errorf("pass %d: %v", pass, d)
		}
		waitUnpinned(t, c)
	}
}

// unpackedDir extracts img with internal/unpack and returns the directory.
func unpackedDir(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	if err := unpack.Image(context.Background(), dir, img); err != nil {
		t.Fatal(err)
	}
	return dir
}

// waitUnpinned waits for every cache entry to be unpinned: go-fuse
// releases a reply's span right after writing it, which may be just after
// the reader has its data.
func waitUnpinned(t *testing.T, c *cache.Cache) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Pinned != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spans stay pinned after the reads: %+v", c.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}
