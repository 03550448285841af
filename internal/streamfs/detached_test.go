package streamfs_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

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
