package streamfs_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

func newStore(t *testing.T) *layerstore.Store {
	t.Helper()
	s, err := layerstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitComplete waits for every layer of m to be complete in the store.
func waitComplete(t *testing.T, m *streamfs.MountPoint) {
	t.Helper()
	select {
	case <-m.Complete():
	case <-time.After(60 * time.Second):
		t.Fatalf("the image did not complete: %+v", m.Stats().Layers)
	}
}

// bgImage pushes AllFeatures (gzip, 64 KiB spans; it holds one layer
// twice) and returns the reference, its full pull and its streamfs image.
func bgImage(t *testing.T, r *testRegistry) (streamfs.Image, fstree.Tree) {
	simg, want, _ := bgImageSize(t, r, storableFeatures())
	return simg, want
}

// storableFeatures is AllFeatures without its hard link to a lower layer's
// file, which the layer store refuses (layerstore.ErrCrossLayerLink).
func storableFeatures() imagegen.Spec {
	spec := imagegen.AllFeatures().Docker()
	for i := range spec.Layers {
		var keep []imagegen.Entry
		for _, e := range spec.Layers[i].Entries {
			if e.Name != "links/hard-xlayer" {
				keep = append(keep, e)
			}
		}
		spec.Layers[i].Entries = keep
	}
	return spec
}

// waitStreamsEnd waits until every layer of m is complete or failed.
func waitStreamsEnd(t *testing.T, m *streamfs.MountPoint) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := 0
		for _, l := range m.Stats().Layers {
			if l.State == streamfs.LayerFailed || l.State == streamfs.LayerComplete {
				done++
			}
		}
		if done == len(m.Stats().Layers) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("layer streams did not end: %+v", m.Stats().Layers)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// bgImageSize is bgImage that also returns the size of the image's
// distinct layer blobs.
func bgImageSize(t *testing.T, r *testRegistry, spec imagegen.Spec) (streamfs.Image, fstree.Tree, int64) {
	t.Helper()
	img, ref := r.push(t, spec, "test/bg")
	simg := r.open(t, ref, 64<<10)
	r.streamBytes.Store(0) // building the indexes read every blob
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	seen := map[v1.Hash]bool{}
	for _, l := range layers {
		d, _ := l.Digest()
		n, _ := l.Size()
		if !seen[d] {
			seen[d] = true
			size += n
		}
	}
	return simg, unpacked(t, img), size
}

// With a layer store, every layer streams in the background; once it is
// complete every file is served from the store by passthrough, identical
// to the full pull, and nothing else is fetched. Layers stream in chunks
// of ranged GETs by default, with one whole GET with SingleStream.
func TestBackgroundCompletes(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) { testBackgroundCompletes(t, single) })
	}
}

func testBackgroundCompletes(t *testing.T, single bool) {
	r := newTestRegistry(t)
	simg, want, blobs := bgImageSize(t, r, storableFeatures())
	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, SingleStream: single})
	waitComplete(t, m)
	got := scan(t, dir)
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}
	st := m.Stats()
	if st.FetchedSpans != 0 || st.SpanWireBytes != 0 {
		t.Errorf("spans fetched although every file was local: %+v", st)
	}
	if st.PassthroughOpens == 0 || st.LocalOpens == 0 || st.BackgroundWireBytes == 0 || st.BackgroundBytes == 0 {
		t.Errorf("stats %+v", st)
	}
	// What the layers took: whole GETs, or ranged GETs of chunks.
	sent, other := &r.streamBytes, &r.rangeBytes
	if !single {
		sent, other = other, sent
	}
	if st.WireBytes != st.BackgroundWireBytes || st.WireBytes != sent.Load() || other.Load() != 0 {
		t.Errorf("wire bytes %d (background %d), the registry sent %d (and %d the other way)", st.WireBytes, st.BackgroundWireBytes, sent.Load(), other.Load())
	}
	for _, l := range st.Layers {
		if l.State != streamfs.LayerComplete || l.Bytes != l.Size {
			t.Errorf("layer %+v", l)
		}
	}
	if n := m.FallbackReads(); n != 0 {
		t.Errorf("%d reads of local files reached the daemon; passthrough is not in effect", n)
	}
	// Each distinct layer streamed once (the image holds one twice). A
	// gzip checkpoint may share its byte with the span before it, which
	// chunks then fetch twice.
	if n := sent.Load(); n < blobs || n > blobs+int64(st.BackgroundChunks) {
		t.Errorf("the registry sent %d bytes in %d chunks; the distinct layers are %d", n, st.BackgroundChunks, blobs)
	}

	// A second mount of the image finds every layer in the store: it
	// fetches nothing and is complete at once.
	streamed := sent.Load()
	m2, dir2 := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, SingleStream: single})
	select {
	case <-m2.Complete():
	default:
		t.Fatal("a mount of stored layers is not complete at once")
	}
	for _, d := range fstree.Diff(want, scan(t, dir2)) {
		t.Error("second mount:", d)
	}
	if st := m2.Stats(); st.WireBytes != 0 || sent.Load() != streamed {
		t.Errorf("second mount fetched: %+v", st)
	}
}

// Reads while the layers stream get correct data, whichever way each is
// served (spans, waiting for the stream, the store). A layer the store
// refuses (a hard link to a lower layer) stays on demand.
func TestBackgroundReadDuringStream(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want, _ := bgImageSize(t, r, imagegen.AllFeatures().Docker())
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t)})
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	waitStreamsEnd(t, m)
	for i, l := range m.Stats().Layers {
		if want := streamfs.LayerComplete; (i == 1) != (l.State != want) {
			t.Errorf("layer %d: %+v", i, l)
		}
	}
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error("after the streams:", d)
	}
}

// A layer stream whose bytes differ from the blob makes no file local:
// every read is served from verified spans.
func TestBackgroundCorruptStream(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := bgImage(t, r)
	r.corruptStream.Store(true)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoPrefetch: true, SingleStream: true})
	waitStreamsEnd(t, m)
	st := m.Stats()
	for _, l := range st.Layers {
		if l.State != streamfs.LayerFailed {
			t.Errorf("layer %+v did not fail", l)
		}
	}
	if st.BackgroundFiles != 0 {
		t.Errorf("%d files made local from a corrupt stream", st.BackgroundFiles)
	}
	select {
	case <-m.Complete():
		t.Error("Complete closed after failed streams")
	default:
	}
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	if st := m.Stats(); st.FetchedSpans == 0 || st.LocalOpens != 0 {
		t.Errorf("reads not served from spans: %+v", st)
	}
}

// A layer stream stops reading while a blocked read's span fetch is in
// flight: the registry holds the streams until a ranged GET arrives, and
// holds that GET until the mount counts a pause.
func TestBackgroundPausesForBlockedReads(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, _ := bgImage(t, r)
	release := make(chan struct{})
	var once sync.Once
	hold := func() { <-release }
	r.onStream.Store(&hold)
	var m *streamfs.MountPoint
	var mu sync.Mutex
	paused := make(chan bool, 1)
	onRange := func() {
		once.Do(func() {
			close(release)
			mu.Lock()
			mm := m
			mu.Unlock()
			ok := false
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if mm.Stats().BackgroundPauses > 0 {
					ok = true
					break
				}
			}
			paused <- ok
		})
	}
	r.onRange.Store(&onRange)
	// StreamWait 1: the read never waits for a stream, it fetches.
	mm, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), StreamWait: 1, NoPrefetch: true, SingleStream: true})
	mu.Lock()
	m = mm
	mu.Unlock()
	got, err := os.ReadFile(filepath.Join(dir, "data/big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !<-paused {
		t.Error("no stream paused while the read's span fetch was in flight")
	}
	if len(got) == 0 {
		t.Error("read returned nothing")
	}
	waitComplete(t, m)
	if st := m.Stats(); st.BackgroundPauses == 0 || st.FetchedSpans == 0 {
		t.Errorf("stats %+v", st)
	}
}

// NoBackground streams nothing: reads come from spans as without a store.
func TestNoBackground(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := bgImage(t, r)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoBackground: true})
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	st := m.Stats()
	if st.BackgroundWireBytes != 0 || r.streamBytes.Load() != 0 || st.FetchedSpans == 0 {
		t.Errorf("stats %+v, %d bytes streamed", st, r.streamBytes.Load())
	}
	for _, l := range st.Layers {
		if l.State != streamfs.LayerOff {
			t.Errorf("layer %+v", l)
		}
	}
	select {
	case <-m.Complete():
		t.Error("Complete closed without streams")
	default:
	}
}

// An image larger than MaxBackgroundBytes (uncompressed) gets no
// background stream: reads come from spans, and it never completes.
func TestMaxBackgroundBytes(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := bgImage(t, r)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), MaxBackgroundBytes: 1})
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	st := m.Stats()
	if st.BackgroundWireBytes != 0 || r.streamBytes.Load() != 0 {
		t.Errorf("an image over MaxBackgroundBytes streamed: stats %+v, %d bytes streamed", st, r.streamBytes.Load())
	}
	for _, l := range st.Layers {
		if l.State != streamfs.LayerOff {
			t.Errorf("layer %+v, want %q", l, streamfs.LayerOff)
		}
	}
}

// The startup profile records only what its budgets allow: spans first
// read within ProfileTime of the mount and within ProfileBytes of span
// data.
func TestProfileBudgets(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, _ := bgImage(t, r)
	for _, tc := range []struct {
		name string
		opts streamfs.Options
	}{
		{"bytes", streamfs.Options{ProfileBytes: 1}},
		{"time", streamfs.Options{ProfileTime: time.Nanosecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Cache, o.NoPrefetch = newCache(t), true
			m, dir := mount(t, simg, o)
			if _, err := os.ReadFile(filepath.Join(dir, "data/big.bin")); err != nil {
				t.Fatal(err)
			}
			if m.Stats().FetchedSpans == 0 {
				t.Fatal("the read fetched no span")
			}
			if p := m.Profile(); len(p.Layers) != 0 {
				t.Errorf("profile past its budget: %+v", p)
			}
		})
	}
}

// Without a stream a layer never settles, so a file read whole is stored
// whole in the cache, as on a mount without a layer store: also when the
// mount is unmounted as soon as the read ends (riffle run, its container
// exiting). The next mount opens it by passthrough and fetches nothing.
func TestNoBackgroundStoresReadFilesWhole(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, _ := bgImage(t, r)
	var dgst string
	for _, l := range simg.Layers {
		for _, e := range l.Entries() {
			if e.Name == "data/big.bin" {
				dgst = e.Digest.String()
			}
		}
	}
	if dgst == "" {
		t.Fatal("no data/big.bin in the image")
	}
	c := newCache(t)
	opts := streamfs.Options{Cache: c, Layers: newStore(t), NoBackground: true}
	dir := mountDir(t)
	m1, err := streamfs.Mount(context.Background(), dir, simg, opts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(dir, "data/big.bin"))
	if err != nil {
		m1.Unmount()
		t.Fatal(err)
	}
	if err := m1.Unmount(); err != nil {
		t.Fatal(err)
	}
	e, err := c.Get(context.Background(), dgst)
	if err != nil {
		t.Fatalf("data/big.bin is not whole in the cache after unmounting: %v", err)
	}
	e.Close()
	fetched := r.rangeRequests.Load()
	m2, dir2 := mount(t, simg, opts)
	got, err := os.ReadFile(filepath.Join(dir2, "data/big.bin"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("second mount read %d bytes (want %d): %v", len(got), len(want), err)
	}
	if n := m2.Stats().PassthroughOpens; n != 1 {
		t.Errorf("%d passthrough opens, want 1", n)
	}
	if n := m2.FallbackReads(); n != 0 {
		t.Errorf("%d reads reached the daemon instead of passthrough", n)
	}
	if n := r.rangeRequests.Load() - fetched; n != 0 {
		t.Errorf("the second mount made %d range requests", n)
	}
}

// A profile recorded by one mount makes the next mount (cold cache)
// prefetch those spans, and its reads hit them.
func TestProfileReplay(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, _ := bgImage(t, r)
	files := []string{"data/big.bin", "data/small.bin", "etc/multi-hl2"}
	readAll := func(dir string) {
		t.Helper()
		for _, f := range files {
			if _, err := os.ReadFile(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
	}
	m1, dir1 := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true})
	readAll(dir1)
	prof := m1.Profile()
	total := 0
	for _, l := range prof.Layers {
		total += len(l.Spans)
	}
	if total == 0 {
		t.Fatalf("empty profile: %+v", prof)
	}
	if st := m1.Stats(); int64(total) != st.FetchedSpans {
		t.Errorf("profile has %d spans, the reads fetched %d", total, st.FetchedSpans)
	}

	m2, dir2 := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true, Profile: &prof})
	deadline := time.Now().Add(30 * time.Second)
	for m2.Stats().ProfileSpans < int64(total) {
		if time.Now().After(deadline) {
			t.Fatalf("profile not prefetched: %+v", m2.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	readAll(dir2)
	st := m2.Stats()
	if st.ProfileHits != int64(total) || st.FetchedSpans != int64(total) {
		t.Errorf("%d profile hits and %d spans fetched, want %d: %+v", st.ProfileHits, st.FetchedSpans, total, st)
	}
}
