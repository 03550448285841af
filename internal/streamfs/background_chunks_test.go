package streamfs_test

import (
	"testing"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// A layer streamed in chunks skips what readers already fetched: on a node
// whose cache holds most spans of the image, the streams copy those from
// the cache and fetch only the rest, each once, by range; nothing is
// fetched whole; the store ends up with the full pull's tree.
func TestChunkedStreamSkipsCachedSpans(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := bgImage(t, r)
	c := newCache(t)
	_, dir1 := mount(t, simg, streamfs.Options{Cache: c, NoPassthrough: true, NoPrefetch: true})
	for _, d := range fstree.Diff(want, scan(t, dir1)) {
		t.Error("first mount:", d)
	}
	cold := r.rangeBytes.Load()

	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: c, Layers: store})
	waitComplete(t, m)
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error("warm mount:", d)
	}
	st := m.Stats()
	if n := r.streamBytes.Load(); n != 0 {
		t.Errorf("%d bytes fetched by whole-blob GETs", n)
	}
	if st.BackgroundCachedBytes == 0 || st.BackgroundCachedBytes > st.BackgroundBytes {
		t.Errorf("background bytes %d, of which from the cache %d", st.BackgroundBytes, st.BackgroundCachedBytes)
	}
	// Only the spans no reader needed (tar headers, the empty layer) came
	// over the wire, and only once.
	warm := r.rangeBytes.Load() - cold
	if warm != st.WireBytes || warm >= cold/2 {
		t.Errorf("the warm mount fetched %d bytes (stats %d); the cold one %d", warm, st.WireBytes, cold)
	}
	for i, l := range st.Layers {
		if l.State != streamfs.LayerComplete || !store.Has(simg.DiffIDs[i]) {
			t.Errorf("layer %d: %+v, in the store: %v", i, l, store.Has(simg.DiffIDs[i]))
		}
	}
}

// Chunks that fail verification every time fail their layer's stream:
// no file becomes local from them, Complete stays open, and every file
// is still read correctly from verified spans once the registry serves
// good data again.
func TestChunkedStreamCorrupt(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := bgImage(t, r)
	r.corrupt.Store(1 << 30)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoPrefetch: true})
	waitStreamsEnd(t, m)
	st := m.Stats()
	for _, l := range st.Layers {
		if l.Size > 1024 && l.State != streamfs.LayerFailed {
			t.Errorf("layer %+v did not fail", l)
		}
	}
	if st.BackgroundChunks == 0 || st.BackgroundErrors == 0 || st.Corrupt == 0 {
		t.Errorf("stats %+v", st)
	}
	select {
	case <-m.Complete():
		t.Error("Complete closed after failed streams")
	default:
	}
	r.corrupt.Store(0)
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	if st := m.Stats(); st.FetchedSpans == 0 || st.LocalOpens != 0 {
		t.Errorf("reads not served from verified spans: %+v", st)
	}
}
