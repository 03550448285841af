package streamfs_test

import (
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
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

// streamWaitImage pushes an image of two gzip layers, 64 KiB spans, each
// a small file, then size bytes of random data, then another small file.
func streamWaitImage(t *testing.T, r *testRegistry, size int64) streamfs.Image {
	t.Helper()
	layer := func(p string, seed uint64) imagegen.Layer {
		return imagegen.Layer{Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: p},
			{Type: imagegen.File, Name: p + "/head.txt", Data: []byte("head of " + p + "\n")},
			{Type: imagegen.File, Name: p + "/big.bin", Size: size, Seed: seed, Fill: imagegen.Random},
			{Type: imagegen.File, Name: p + "/tail.txt", Data: []byte("tail of " + p + "\n")},
		}}
	}
	spec := imagegen.Spec{Layers: []imagegen.Layer{layer("a", 1), layer("b", 2)}}.Docker()
	_, ref := r.push(t, spec, "test/streamwait")
	return r.open(t, ref, 64<<10)
}

// chunkRequest reports whether req is a layer stream's chunk (a range of
// many 64 KiB spans), not one span's fetch.
func chunkRequest(req *http.Request) bool {
	var from, to int64
	if _, err := fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
		return false
	}
	return to-from+1 > 512<<10
}

// A read waiting for its layer's stream does not wait for the streams'
// turns: while the task is busy, chunks of all layers take turns, and the
// chunk a read waits for must not queue behind another layer's (a shell
// waited 0.4 s for its first chunk that way). Here the first chunk
// requested is held at the registry, keeping its turn; a file at the
// start of the other layer is still read from that layer's stream, with
// no span fetched.
func TestStreamWaitSkipsTurns(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg := streamWaitImage(t, r, 2<<20)
	hold := make(chan struct{})
	held := make(chan string, 1)
	var once sync.Once
	onReq := func(req *http.Request) {
		if !chunkRequest(req) {
			return
		}
		first := false
		once.Do(func() { first = true })
		if first {
			held <- path.Base(req.URL.Path)
			select {
			case <-hold:
			case <-req.Context().Done():
			}
		}
	}
	r.onRangeReq.Store(&onReq)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoPrefetch: true})
	t.Cleanup(func() { close(hold) }) // before the unmount
	other, layer := "a", 0
	select {
	case d := <-held:
		if d == simg.Layers[0].Digest().String() {
			other, layer = "b", 1
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no chunk was requested")
	}
	// The other layer's stream has planned its first chunk, which waits
	// for its turn: reads of it wait for the stream.
	for i := 0; m.StreamPlanned(layer) == 0; i++ {
		if i == 3000 {
			t.Fatal("the other layer's stream planned nothing")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, err := os.ReadFile(filepath.Join(dir, other, "head.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "head of " + other + "\n"; string(got) != want {
		t.Fatalf("%s/head.txt = %q, want %q", other, got, want)
	}
	if st := m.Stats(); st.FetchedSpans != 0 {
		t.Errorf("%d spans fetched for a file the stream brings (stream waits %d)", st.FetchedSpans, st.StreamWaits)
	}
}

// A read of data past what a layer's stream has planned to fetch does not
// wait for the stream: fetching its span by range is quicker than the
// chunks up to it, and the stream skips the span later. Here every chunk
// is held at the registry; the file at the end of a layer is read at once.
func TestReadPastStreamPlanFetches(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	// 6 MiB of random data: more than the chunks a stream plans ahead
	// (3 of about 1 MiB), less than Options.StreamWait (8 MiB).
	simg := streamWaitImage(t, r, 6<<20)
	hold := make(chan struct{})
	requested := make(chan struct{}, 1)
	onReq := func(req *http.Request) {
		if chunkRequest(req) {
			select {
			case requested <- struct{}{}:
			default:
			}
			select {
			case <-hold:
			case <-req.Context().Done():
			}
		}
	}
	r.onRangeReq.Store(&onReq)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoPrefetch: true})
	t.Cleanup(func() { close(hold) })
	select { // the streams are running
	case <-requested:
	case <-time.After(30 * time.Second):
		t.Fatal("no chunk was requested")
	}
	got, err := os.ReadFile(filepath.Join(dir, "a/tail.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "tail of a\n" {
		t.Fatalf("a/tail.txt = %q", got)
	}
	if st := m.Stats(); st.StreamWaits != 0 || st.FetchedSpans == 0 {
		t.Errorf("stream waits %d, spans fetched %d: want 0 and at least 1", st.StreamWaits, st.FetchedSpans)
	}
}

// A task that opens many files (a copy, a scan, reading every file) walks
// the image: the streams then run at full speed even while it is busy,
// without taking turns. Here the first chunk requested is held at the
// registry, keeping its turn, and the task keeps opening files; another
// chunk starts once it has opened more than the walking threshold.
func TestWalkingTaskFreesStreams(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	const files = 3000 // more than streamfs's walkOpens, more than an eighth of the image's files
	a := imagegen.Layer{Entries: []imagegen.Entry{{Type: imagegen.Dir, Name: "a"}}}
	for i := range files {
		a.Entries = append(a.Entries, imagegen.Entry{Type: imagegen.File, Name: fmt.Sprintf("a/f%04d", i), Data: []byte("x\n")})
	}
	a.Entries = append(a.Entries, imagegen.Entry{Type: imagegen.File, Name: "a/big.bin", Size: 2 << 20, Seed: 1, Fill: imagegen.Random})
	b := imagegen.Layer{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "big.bin", Size: 2 << 20, Seed: 2, Fill: imagegen.Random}}}
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{a, b}}.Docker(), "test/walk")
	simg := r.open(t, ref, 64<<10)

	hold := make(chan struct{})
	var chunks atomic.Int64
	onReq := func(req *http.Request) {
		if chunkRequest(req) && chunks.Add(1) == 1 {
			select {
			case <-hold:
			case <-req.Context().Done():
			}
		}
	}
	r.onRangeReq.Store(&onReq)
	// NoPassthrough: opens fetch nothing; they only count.
	_, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoPrefetch: true, NoPassthrough: true})
	t.Cleanup(func() { close(hold) })
	for chunks.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	opens := 0
	for ; chunks.Load() < 2 && opens < 2*files; opens++ {
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("a/f%04d", opens%files)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if chunks.Load() < 2 {
		t.Fatalf("no other chunk started while the first held its turn, after %d opens", opens)
	}
	t.Logf("another chunk started after %d opens", opens)
}

// Readdir lists a directory's entries in the order their data lies in the
// layers, not by name or at random: a task walking the tree then reads
// each layer in order, just behind its stream. A subdirectory sits where
// its first file's data does, and entries without data come last, by
// name. The order is the same at every mount.
func TestReaddirFollowsLayerOrder(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	file := func(name string) imagegen.Entry {
		return imagegen.Entry{Type: imagegen.File, Name: name, Data: []byte(name + "\n")}
	}
	lower := imagegen.Layer{Entries: []imagegen.Entry{
		{Type: imagegen.Dir, Name: "d"},
		file("d/zeta"), file("d/alpha"),
		{Type: imagegen.Dir, Name: "d/sub"}, file("d/sub/x"),
		file("d/mu"),
		{Type: imagegen.Symlink, Name: "d/link", Linkname: "mu"},
		{Type: imagegen.File, Name: "d/empty", Data: []byte{}},
	}}
	upper := imagegen.Layer{Entries: []imagegen.Entry{
		{Type: imagegen.Dir, Name: "d"},
		file("d/beta"), file("d/alpha"), // alpha now lies in the upper layer
	}}
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{lower, upper}}.Docker(), "test/order")
	simg := r.open(t, ref, 64<<10)
	want := []string{"zeta", "sub", "mu", "beta", "alpha", "empty", "link"}
	for range 3 {
		_, dir := mount(t, simg, streamfs.Options{Cache: newCache(t)})
		f, err := os.Open(filepath.Join(dir, "d"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("readdir d = %q, want %q", got, want)
		}
	}
}

// TestTurnGap: while readers are busy, chunk turns start at least busyGap
// apart, and on a link slow enough that a chunk's fetch takes more than
// busyGap/busyShare, busyShare times its fetch time apart, so the streams
// keep to about 1/busyShare of the link.
func TestTurnGap(t *testing.T) {
	for _, tc := range []struct{ took, want time.Duration }{
		{0, streamfs.BusyGap},
		{streamfs.BusyGap / streamfs.BusyShare, streamfs.BusyGap},
		{140 * time.Millisecond, streamfs.BusyShare * 140 * time.Millisecond},
	} {
		if got := streamfs.TurnGap(tc.took); got != tc.want {
			t.Errorf("TurnGap(%v) = %v, want %v", tc.took, got, tc.want)
		}
	}
}

// runImage pushes an image of one gzip layer, 64 KiB spans: a small file
// and size bytes of random data (incompressible: about size/chunkBytes
// chunks).
func runImage(t *testing.T, r *testRegistry, size int64) (streamfs.Image, fstree.Tree) {
	t.Helper()
	spec := imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "head.txt", Data: []byte("head\n")},
		{Type: imagegen.File, Name: "big.bin", Size: size, Seed: 7, Fill: imagegen.Random},
	}}}}.Docker()
	simg, want, _ := bgImageSize(t, r, spec)
	return simg, want
}

// A layer's chunks are read from one request per run of spans, not one
// request each: a request per chunk left the link idle a round trip
// between chunks. Chunks fetched while the task is busy (the first second
// after mounting) still take turns with a request each.
func TestChunksReadFromRuns(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := runImage(t, r, 24<<20)
	before := r.rangeRequests.Load()
	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, NoPrefetch: true})
	waitComplete(t, m)
	st := m.Stats()
	requests := r.rangeRequests.Load() - before
	if st.BackgroundRuns == 0 || requests > st.BackgroundChunks/2 {
		t.Errorf("%d chunks took %d range requests (%d runs); want at most half as many", st.BackgroundChunks, requests, st.BackgroundRuns)
	}
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	if !store.Has(simg.DiffIDs[0]) {
		t.Error("the layer is not in the store")
	}
}

// A run whose body is cut midway costs nothing but its request: the chunk
// it was reading is fetched alone by range, the stream goes on, and the
// layer completes with the full pull's tree.
func TestRunCutFetchesChunkAlone(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want := runImage(t, r, 12<<20)
	r.cutRange.Store(3 << 20) // chunks (about 1 MiB) pass, runs do not
	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, NoPrefetch: true})
	waitComplete(t, m)
	if r.cuts.Load() == 0 {
		t.Fatal("no run was cut")
	}
	st := m.Stats()
	if st.BackgroundErrors != 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v", st)
	}
	// Every byte the registry sent counts, those of cut runs too.
	if got, sent := st.WireBytes, r.rangeBytes.Load(); got != sent {
		t.Errorf("the mount counts %d wire bytes; the registry sent %d", got, sent)
	}
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
}

// Runs follow each other without a round trip between them: the next run
// is asked for before the open one ends, and a chunk that a run's size
// limit cuts in two is read from both. Every byte the registry sent is
// read and counted, once, and the layer completes with the full pull's
// tree.
func TestRunsFollowEachOther(t *testing.T) {
	testutil.RequiresRoot(t)
	// Chunks are 16 spans of 64 KiB, runs 49 or so: most runs end
	// inside a chunk.
	streamfs.SetMaxRunBytes(t, 3<<20+32<<10)
	r := newTestRegistry(t)
	spec := imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "head.txt", Data: []byte("head\n")},
		{Type: imagegen.File, Name: "big.bin", Size: 24 << 20, Seed: 7, Fill: imagegen.Random},
	}}}}.Docker()
	simg, want, size := bgImageSize(t, r, spec)
	before := r.rangeBytes.Load()
	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, NoPrefetch: true})
	waitComplete(t, m)
	st := m.Stats()
	if st.BackgroundRuns < 3 || st.BackgroundErrors != 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v; want 3 runs or more, no errors", st)
	}
	// A run dropped or opened again would leave bytes the registry sent
	// unread, or fetch a chunk's start twice.
	sent := r.rangeBytes.Load() - before
	if st.WireBytes != sent {
		t.Errorf("the mount counts %d wire bytes; the registry sent %d", st.WireBytes, sent)
	}
	if sent > size+64<<10 {
		t.Errorf("the registry sent %d bytes of a %d-byte layer", sent, size)
	}
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
	if !store.Has(simg.DiffIDs[0]) {
		t.Error("the layer is not in the store")
	}
}

// A chunk fetched alone leaves out the spans a reader fetched after it was
// planned: with the first chunk's request held, a task reads a stretch of
// the layer further on (by range: the stream is not near), and once the
// stream goes on, no byte of that stretch is fetched again.
func TestChunkSkipsSpansReadSincePlanned(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	simg, want, size := bgImageSize(t, r, imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "head.txt", Data: []byte("head\n")},
		{Type: imagegen.File, Name: "big.bin", Size: 8 << 20, Seed: 7, Fill: imagegen.Random},
	}}}}.Docker())
	release := make(chan struct{})
	var held atomic.Value // the Range of the held request
	hold := func(req *http.Request) {
		if rg := req.Header.Get("Range"); strings.HasPrefix(rg, "bytes=0-") {
			held.Store(rg)
			<-release
		}
	}
	r.onRangeReq.Store(&hold)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	before := r.rangeBytes.Load()
	store := newStore(t)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: store, NoPrefetch: true, NoPassthrough: true, StreamWait: 1})
	// Chunks are about 1 MiB: this is the third chunk, planned at mount,
	// and parts of the second and fourth.
	f, err := os.Open(filepath.Join(dir, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	// No kernel read-ahead: it would go on reading after ReadAt returns.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2<<20)
	if _, err := f.ReadAt(got, 2<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	read := r.rangeBytes.Load() - before
	close(release)
	waitComplete(t, m)
	// The task counts as busy for a second after mounting: the first
	// chunk takes its turn with a request of its own, not a run over
	// the whole layer (which would bring the stretch read again).
	var first, last int64
	if rg, _ := held.Load().(string); rg == "" {
		t.Fatal("the layer's start was never asked for")
	} else if _, err := fmt.Sscanf(rg, "bytes=%d-%d", &first, &last); err != nil || last >= 2<<20 {
		t.Fatalf("the first chunk's request asked for %q: want a chunk of about 1 MiB", rg)
	}
	sent := r.rangeBytes.Load() - before
	t.Logf("layer %d bytes; read %d by range, %d in all", size, read, sent)
	// Consecutive spans may share a byte: one each.
	if sent > size+size/(64<<10) {
		t.Errorf("the registry sent %d bytes of a %d-byte layer: the stream fetched spans the reader had", sent, size)
	}
	if st := m.Stats(); st.BackgroundErrors != 0 || st.Corrupt != 0 {
		t.Errorf("stats %+v", st)
	}
	for _, d := range fstree.Diff(want, scan(t, dir)) {
		t.Error(d)
	}
}
