package streamfs_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// openDetached opens the pack environment's image as a node that is not
// the server does: indexes detached from the index service over HTTP,
// windows fetched from it when a span is read by range.
func (e *packEnv) openDetached(t *testing.T) streamfs.Image {
	t.Helper()
	simg, _, err := streamfs.Open(context.Background(), e.r.client(), e.ref, streamfs.OpenOptions{Indexes: e.src, Windows: e.src})
	if err != nil {
		t.Fatal(err)
	}
	e.winGets.Store(0)
	return simg
}

// A cold read through a detached index fetches each missing span's window
// with its range request (one window per request, never more) and reads
// the right bytes.
func TestDetachedIndexWindowsByRange(t *testing.T) {
	testutil.RequiresRoot(t)
	e := newPackEnv(t)
	simg := e.openDetached(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true})
	e.checkFiles(t, dir)
	st := m.Stats()
	wins, ranges := e.winGets.Load(), e.r.rangeRequests.Load()
	t.Logf("%d range requests, %d windows, %d spans fetched", ranges, wins, st.FetchedSpans)
	if wins == 0 || wins > ranges || st.Corrupt != 0 {
		t.Errorf("%d window requests for %d range requests (corrupt %d): want one per request that starts past a checkpoint", wins, ranges, st.Corrupt)
	}
}

// With a profile, the packs carry the spans recompressed, which need no
// windows: nothing is fetched by range and no window is asked for.
func TestDetachedIndexPackNeedsNoWindows(t *testing.T) {
	testutil.RequiresRoot(t)
	e := newPackEnv(t)
	simg := e.openDetached(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true, Profile: &e.prof, Packs: e.src})
	st := e.waitProfile(t, m)
	e.checkFiles(t, dir)
	if n, w := e.r.rangeRequests.Load(), e.winGets.Load(); n != 0 || w != 0 {
		t.Errorf("%d range requests and %d window requests; the packs hold the spans, which need no windows", n, w)
	}
	if st.PackSpans != int64(e.spans) || st.Corrupt != 0 {
		t.Errorf("stats %+v, want %d spans from packs", st, e.spans)
	}
}

// A damaged window is caught by its digest and fetched again; the data
// read is right. An index that comes detached with nowhere to fetch
// windows from makes the image not eligible.
func TestDetachedIndexBadWindow(t *testing.T) {
	testutil.RequiresRoot(t)
	e := newPackEnv(t)
	simg := e.openDetached(t)
	var done atomic.Bool
	wrap := func(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
		if done.Swap(true) {
			return w
		}
		return &flipWriter{ResponseWriter: w, at: 3}
	}
	e.wrap.Store(&wrap)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true})
	e.checkFiles(t, dir)
	if st := m.Stats(); st.Corrupt != 1 {
		t.Errorf("%d corrupt fetches, want the one damaged window", st.Corrupt)
	}

	_, _, err := streamfs.Open(context.Background(), e.r.client(), e.ref, streamfs.OpenOptions{Indexes: e.src})
	var ne *streamfs.NotEligibleError
	if !errors.As(err, &ne) {
		t.Fatalf("detached index without a window source: %v, want not eligible", err)
	}
}

// A layer streamed in chunks through a detached index fetches a window
// only where a request starts (a run, or a chunk fetched alone), not for
// every chunk: a chunk read from the same run as the one before decodes
// after that one's output. The layer completes with the full pull's tree
// (its content refers back across chunk boundaries: a wrong history would
// fail the layer's diffID).
func TestDetachedStreamDecodesChunksAfterEachOther(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	r := newTestRegistry(t)
	spec := imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "head.txt", Data: []byte("head\n")},
		{Type: imagegen.File, Name: "big.bin", Size: 48 << 20, Seed: 7, Fill: imagegen.Mixed},
	}}}}.Docker()
	img, ref := r.push(t, spec, "test/detached-stream")
	svc, err := indexsvc.New(t.TempDir(), r.client(), indexsvc.Options{SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	if _, err := svc.IndexImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/windows/") {
			wins.Add(1)
		}
		svc.Handler().ServeHTTP(w, req)
	}))
	t.Cleanup(hs.Close)
	src := indexsvc.HTTPSource{BaseURL: hs.URL}
	simg, _, err := streamfs.Open(ctx, r.client(), ref, streamfs.OpenOptions{Indexes: src, Windows: src})
	if err != nil {
		t.Fatal(err)
	}
	before := r.rangeRequests.Load()
	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, NoPrefetch: true})
	waitComplete(t, m)
	st := m.Stats()
	requests := r.rangeRequests.Load() - before
	t.Logf("%d chunks, %d range requests (%d runs), %d windows", st.BackgroundChunks, requests, st.BackgroundRuns, wins.Load())
	if st.BackgroundRuns == 0 || requests >= st.BackgroundChunks {
		t.Fatalf("%d chunks took %d requests (%d runs): the test needs chunks read from runs", st.BackgroundChunks, requests, st.BackgroundRuns)
	}
	if w := wins.Load(); w > requests {
		t.Errorf("%d windows fetched for %d range requests; want at most one per request", w, requests)
	}
	if st.Corrupt != 0 || st.BackgroundErrors != 0 {
		t.Errorf("stats %+v", st)
	}
	for _, d := range fstree.Diff(unpacked(t, img), scan(t, dir)) {
		t.Error(d)
	}
}
