package streamfs_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestLaziness mounts imagegen.Large (1 GiB of file data; 64 MiB with
// -short or -race) and reads 1 MiB of its big file: the registry must serve
// the spans of that read and the kernel's read-ahead (plus one span for a
// small file of another layer), not the layer.
func TestLaziness(t *testing.T) {
	testutil.RequiresRoot(t)
	size := int64(1 << 30)
	if testing.Short() || raceEnabled {
		size = 64 << 20
	}
	r := newTestRegistry(t)
	start := time.Now()
	_, ref := r.push(t, imagegen.Large(size), "test/large")
	t.Logf("built and pushed a %d MiB image in %v", size>>20, time.Since(start))
	start = time.Now()
	img := r.open(t, ref, 0) // default span size
	t.Logf("indexed in %v", time.Since(start))
	m, dir := mount(t, img, streamfs.Options{Cache: newCache(t)})

	big := img.Layers[1]
	var maxSpan int64
	for _, s := range big.Spans() {
		maxSpan = max(maxSpan, s.Size)
	}
	t.Logf("big layer: %d spans, largest %d bytes uncompressed", len(big.Spans()), maxSpan)

	// 1 MiB from the middle of big/blob.bin, inside one span.
	var dataOff int64
	for _, e := range big.Entries() {
		if e.Name == "big/blob.bin" {
			dataOff = e.Offset
		}
	}
	spans := big.Spans()
	mid := spans[len(spans)/2]
	off := mid.Offset - dataOff + 64<<10
	t.Logf("reading [%d, +1 MiB) of the file, in span [%d, +%d) of the stream", off, mid.Offset, mid.Size)
	f, err := os.Open(filepath.Join(dir, "big/blob.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 1<<20)
	if _, err := f.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	c := imagegen.Content(42, size, imagegen.Mixed)
	io.CopyN(io.Discard, c, off)
	io.ReadFull(c, want)
	if !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hostname")); err != nil || string(b) != "riffle-large\n" {
		t.Fatalf("etc/hostname: %q %v", b, err)
	}
	// A miss run counts its spans once stored, after its bytes came.
	for deadline := time.Now().Add(10 * time.Second); m.MissRunsBusy() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	served := r.rangeBytes.Load()
	st := m.Stats()
	t.Logf("registry served %d bytes in %d range requests for %d spans (%d uncompressed bytes); stats %+v",
		served, r.rangeRequests.Load(), st.FetchedSpans, st.FetchedBytes, st)
	// The read's spans, the kernel's read-ahead and ours past them (a
	// span or two each), and the small file's span: a few MiB of the
	// 1 GiB layer. (A read-ahead may still be in flight, its request
	// made and its span not yet counted: requests are bounded like spans.)
	var near int64 // the largest span around the read
	for _, s := range spans[max(len(spans)/2-8, 0):min(len(spans)/2+8, len(spans))] {
		near = max(near, s.Size)
	}
	maxSpans := int64(2 + streamfs.DefaultKernelReadAhead/int(mid.Size) + 1 + streamfs.DefaultReadAhead + 1)
	if st.FetchedSpans > maxSpans || st.FetchedBytes > maxSpans*near || r.rangeRequests.Load() > maxSpans || served > st.FetchedBytes {
		t.Errorf("not lazy: %d spans (at most %d wanted) of %d bytes, %d requests, %d bytes served", st.FetchedSpans, maxSpans, st.FetchedBytes, r.rangeRequests.Load(), served)
	}
}

// smallFiles are 600 files of 16 KiB of random data in f/, in name
// order; f/500 is named as a versioned shared library (f/500.so.1).
func smallFiles() []imagegen.Entry {
	entries := []imagegen.Entry{{Type: imagegen.Dir, Name: "f"}}
	for i := range 600 {
		name := fmt.Sprintf("f/%03d", i)
		if i == 500 {
			name += ".so.1"
		}
		entries = append(entries, imagegen.Entry{Type: imagegen.File, Name: name,
			Size: 16 << 10, Seed: uint64(i + 1), Fill: imagegen.Random})
	}
	return entries
}

// filesBySpan returns, by span of img's first layer, the first file that
// lies wholly inside it.
func filesBySpan(img streamfs.Image) map[int]string {
	spans := img.Layers[0].Spans()
	inSpan := map[int]string{}
	for _, e := range img.Layers[0].Entries() {
		for i, s := range spans {
			if e.Size > 0 && e.Offset >= s.Offset && e.Offset+e.Size <= s.Offset+s.Size && inSpan[i] == "" {
				inSpan[i] = e.Name
			}
		}
	}
	return inSpan
}

// Once a mount's readers have missed a few times, each miss also fetches
// the next spans of its layer (files read together sit together); before
// that, a miss fetches its own span alone, and so does a miss in a
// versioned shared library at any time.
func TestMissAhead(t *testing.T) {
	testutil.RequiresRoot(t)
	const spanSize = 64 << 10
	r := newTestRegistry(t)
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: smallFiles()}}}, "test/missahead")
	img := r.open(t, ref, spanSize)
	m, dir := mount(t, img, streamfs.Options{Cache: newCache(t)})
	inSpan := filesBySpan(img)
	read := func(span int) {
		t.Helper()
		name, ok := inSpan[span]
		if !ok {
			t.Fatalf("no file lies wholly in span %d", span)
		}
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || len(b) != 16<<10 {
			t.Fatalf("read %s: %d bytes, %v", name, len(b), err)
		}
	}
	// Misses far apart: neither a layer walk nor a file read on.
	const gap = 6
	for k := range streamfs.MissAheadAfter {
		read(k * gap)
	}
	last := streamfs.MissAheadAfter * gap
	read(last) // the miss after MissAheadAfter: its span and the next ones
	want := int64(streamfs.MissAheadAfter + 1 + streamfs.DefaultMissAhead)
	deadline := time.Now().Add(20 * time.Second)
	for m.Stats().FetchedSpans < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d spans fetched, want %d: the spans after the last miss were not fetched", m.Stats().FetchedSpans, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	requests := r.rangeRequests.Load()
	for i := 1; i <= streamfs.DefaultMissAhead; i++ {
		read(last + i)
	}
	if n := r.rangeRequests.Load() - requests; n != 0 {
		t.Errorf("reading the spans after the miss made %d range requests", n)
	}
	if n := m.Stats().FetchedSpans; n != want {
		t.Errorf("%d spans fetched, want %d (the first %d misses fetched their own span alone)", n, want, streamfs.MissAheadAfter)
	}

	// A miss in a versioned shared library fetches nothing after it: the
	// files next to it are other libraries, loaded by name.
	var lib streamfs.Entry
	for _, e := range img.Layers[0].Entries() {
		if e.Name == "f/500.so.1" {
			lib = e
		}
	}
	before, runs := m.Stats().FetchedSpans, m.Stats().MissRuns
	if b, err := os.ReadFile(filepath.Join(dir, lib.Name)); err != nil || len(b) != 16<<10 {
		t.Fatalf("read %s: %d bytes, %v", lib.Name, len(b), err)
	}
	if n := m.Stats().FetchedSpans - before; n < 1 || n > 2 || m.Stats().MissRuns != runs {
		t.Errorf("reading %s fetched %d spans in %d miss runs, want its own span(s) alone", lib.Name, n, m.Stats().MissRuns-runs)
	}
}

// TestFileTailFetchedBesideBlockedRead: a read that blocks on the first
// span of a file whose rest lies in the next span has that span fetched
// by the same request, not one round trip later. (data.bin is no library:
// opening one fetches its end by itself, TestOpenFetchesLibraryTail.)
func TestFileTailFetchedBesideBlockedRead(t *testing.T) {
	testutil.RequiresRoot(t)
	const spanSize = 1 << 20
	r := newTestRegistry(t)
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "data.bin", Size: spanSize + spanSize/2, Seed: 7, Fill: imagegen.Random},
	}}}}, "test/filetail")
	img := r.open(t, ref, spanSize)
	var lib streamfs.Entry
	for _, e := range img.Layers[0].Entries() {
		if e.Name == "data.bin" {
			lib = e
		}
	}
	spans := img.Layers[0].Spans()
	if len(spans) < 2 || lib.Offset >= spans[1].Offset || lib.Offset+lib.Size <= spans[1].Offset {
		t.Fatalf("data.bin [%d, +%d) does not cross from span 0 into span 1: %+v", lib.Offset, lib.Size, spans)
	}

	// Every range request waits until released; count those waiting.
	var waiting atomic.Int32
	open := holdRanges(r, func(*http.Request) { waiting.Add(1) })
	m, dir := mount(t, img, streamfs.Options{Cache: newCache(t)})
	t.Cleanup(open) // before the unmount

	done := make(chan error, 1)
	go func() {
		f, err := os.Open(filepath.Join(dir, "data.bin"))
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		_, err = f.ReadAt(make([]byte, 1), 0) // span 0 only, with the kernel's read-ahead
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for waiting.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no range request while the read blocks on span 0")
		}
		time.Sleep(5 * time.Millisecond)
	}
	open()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "data.bin"))
	if err != nil || int64(len(b)) != lib.Size {
		t.Fatalf("read data.bin: %d bytes, %v", len(b), err)
	}
	if n := r.rangeRequests.Load(); n != 1 {
		t.Errorf("%d range requests for data.bin, want 1 (span 1 with span 0)", n)
	}
	// The run counts a span once it is stored, which may be just after
	// the read that took it from the run.
	for deadline := time.Now().Add(10 * time.Second); m.Stats().FetchedSpans < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if st := m.Stats(); st.MissRuns != 1 || st.FetchedSpans != 2 {
		t.Errorf("%d miss runs fetched %d spans, want 1 run of 2", st.MissRuns, st.FetchedSpans)
	}
}

// holdRanges makes every range request of r call seen and then wait
// until the returned function (safe to call more than once) is called.
func holdRanges(r *testRegistry, seen func(*http.Request)) (release func()) {
	hold := make(chan struct{})
	var once sync.Once
	onReq := func(req *http.Request) {
		seen(req)
		select {
		case <-hold:
		case <-req.Context().Done():
		}
	}
	r.onRangeReq.Store(&onReq)
	return func() { once.Do(func() { close(hold) }) }
}

// TestOpenFetchesLibraryTail: opening a shared library of more than one
// span fetches its last spans (where a loader goes right after the
// header: the data segment) before anything is read, all of them, not
// only as many as there are prefetchers; opening another file fetches
// nothing. With passthrough or without: the library is served from spans.
func TestOpenFetchesLibraryTail(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, noPassthrough := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoPassthrough=%v", noPassthrough), func(t *testing.T) {
			openFetchesLibraryTail(t, noPassthrough)
		})
	}
}

func openFetchesLibraryTail(t *testing.T, noPassthrough bool) {
	const spanSize = 256 << 10
	r := newTestRegistry(t)
	file := func(name string, seed uint64) imagegen.Layer {
		return imagegen.Layer{Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "usr/lib", Mode: 0o755},
			{Type: imagegen.File, Name: name, Size: 4 * spanSize, Seed: seed, Fill: imagegen.Random},
		}}
	}
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{
		file("usr/lib/data.bin", 1), file("usr/lib/libbig.so.1", 2),
	}}, "test/opentail")
	img := r.open(t, ref, spanSize)
	lib := img.Layers[1]

	// Every range request waits until released; record the layers asked.
	var mu sync.Mutex
	asked := map[string]int{}
	open := holdRanges(r, func(req *http.Request) {
		mu.Lock()
		asked[path.Base(req.URL.Path)]++
		mu.Unlock()
	})
	_, dir := mount(t, img, streamfs.Options{Cache: newCache(t), Prefetchers: 1, NoPassthrough: noPassthrough})
	t.Cleanup(open) // before the unmount

	for _, name := range []string{"usr/lib/data.bin", "usr/lib/libbig.so.1"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	// The library spans 4 or 5 spans of its layer (after the tar header):
	// all but the first are within the last 2 MiB.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := asked[lib.Digest().String()]
		mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d range requests for the library's layer after opening it; want its last spans", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	if n := asked[img.Layers[0].Digest().String()]; n != 0 {
		t.Errorf("opening data.bin made %d range requests", n)
	}
	mu.Unlock()
	open()
	b, err := os.ReadFile(filepath.Join(dir, "usr/lib/libbig.so.1"))
	if err != nil || len(b) != 4*spanSize {
		t.Fatalf("read the library: %d bytes, %v", len(b), err)
	}
}

// TestWholeLibraryFetchesNoTail checks that opening a library the cache
// holds whole (read through another image, where it sits in another
// layer) fetches nothing: it is served by passthrough, so its tail spans
// would only be wasted link.
func TestWholeLibraryFetchesNoTail(t *testing.T) {
	testutil.RequiresRoot(t)
	const spanSize = 256 << 10
	r := newTestRegistry(t)
	lib := imagegen.Entry{Type: imagegen.File, Name: "usr/lib/libbig.so.1", Size: 4 * spanSize, Seed: 2, Fill: imagegen.Random}
	dirs := imagegen.Entry{Type: imagegen.Dir, Name: "usr/lib", Mode: 0o755}
	_, refA := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{dirs, lib}}}}, "test/wholelib-a")
	_, refB := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{dirs,
		{Type: imagegen.File, Name: "usr/lib/aaa", Size: 100, Seed: 3, Fill: imagegen.Random}, lib}}}}, "test/wholelib-b")
	imgA, imgB := r.open(t, refA, spanSize), r.open(t, refB, spanSize)
	c := newCache(t)

	// Image A: read the library whole; the mount keeps it whole.
	_, dirA := mount(t, imgA, streamfs.Options{Cache: c, NoPrefetch: true})
	b, err := os.ReadFile(filepath.Join(dirA, lib.Name))
	if err != nil {
		t.Fatal(err)
	}
	key := "sha256:" + fmt.Sprintf("%x", sha256.Sum256(b))
	for deadline := time.Now().Add(30 * time.Second); !c.Has(key); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the library was not cached whole")
		}
	}

	// Image B: opening it fetches none of B's layer.
	var asked atomic.Int64
	layerB := imgB.Layers[0].Digest().String()
	onReq := func(req *http.Request) {
		if path.Base(req.URL.Path) == layerB {
			asked.Add(1)
		}
	}
	r.onRangeReq.Store(&onReq)
	m, dirB := mount(t, imgB, streamfs.Options{Cache: c, Prefetchers: 1})
	got, err := os.ReadFile(filepath.Join(dirB, lib.Name))
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read the library through B: %d bytes, %v", len(got), err)
	}
	if st := m.Stats(); st.PassthroughOpens != 1 {
		t.Errorf("%d passthrough opens, want 1", st.PassthroughOpens)
	}
	// A tail fetch would have started at the open; give it time to ask.
	time.Sleep(300 * time.Millisecond)
	if n := asked.Load(); n != 0 {
		t.Errorf("opening a library held whole made %d range requests for its layer", n)
	}
}

// TestOpenTailsBounded: a task opening many executable files of several
// spans (an image whose data files are all mode 0755) starts tail fetches
// for at most maxOpenTails spans at once, not for every file.
func TestOpenTailsBounded(t *testing.T) {
	testutil.RequiresRoot(t)
	const spanSize = 256 << 10
	const files = 12 // 3 tail spans each: 36 without the bound
	r := newTestRegistry(t)
	entries := []imagegen.Entry{{Type: imagegen.Dir, Name: "data", Mode: 0o755}}
	for i := range files {
		entries = append(entries, imagegen.Entry{Type: imagegen.File, Name: fmt.Sprintf("data/shard%02d", i), Mode: 0o755,
			Size: 4 * spanSize, Seed: uint64(i + 1), Fill: imagegen.Random})
	}
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: entries}}}, "test/shards")
	img := r.open(t, ref, spanSize)

	var asked atomic.Int64
	open := holdRanges(r, func(*http.Request) { asked.Add(1) })
	_, dir := mount(t, img, streamfs.Options{Cache: newCache(t), Prefetchers: 1})
	t.Cleanup(open) // before the unmount
	for i := range files {
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("data/shard%02d", i)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	for deadline := time.Now().Add(30 * time.Second); asked.Load() < 12; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d range requests after opening %d files; want their tails fetched", asked.Load(), files)
		}
	}
	// Every tail fetch starts at its open; give any beyond the bound
	// time to ask.
	time.Sleep(200 * time.Millisecond)
	if n := asked.Load(); n > 16 {
		t.Errorf("%d range requests at once after opening %d executable files; want at most 16", n, files)
	}
	open()
}

// TestMissRunCutShort: when the request that fetches a missed span with
// the spans after it ends early, the blocked read still gets its span
// (decoded as soon as its bytes were in), and reads of the spans the
// request did not bring fetch them on their own, with the right data.
func TestMissRunCutShort(t *testing.T) {
	testutil.RequiresRoot(t)
	const spanSize = 64 << 10
	r := newTestRegistry(t)
	pushed, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: smallFiles()}}}, "test/missruncut")
	want := unpacked(t, pushed)
	img := r.open(t, ref, spanSize)
	m, dir := mount(t, img, streamfs.Options{Cache: newCache(t)})
	inSpan := filesBySpan(img)
	read := func(span int) {
		t.Helper()
		name := inSpan[span]
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("read %s (span %d): %v", name, span, err)
		}
		if w, ok := want.Find(name); !ok || w.SHA256 != fmt.Sprintf("%x", sha256.Sum256(b)) {
			t.Fatalf("%s (span %d) reads differently from the image", name, span)
		}
	}
	var (
		mu     sync.Mutex
		ranges [][2]int64 // first and last byte of each range request
	)
	seen := func(req *http.Request) {
		var lo, hi int64
		if _, err := fmt.Sscanf(req.Header.Get("Range"), "bytes=%d-%d", &lo, &hi); err == nil {
			mu.Lock()
			ranges = append(ranges, [2]int64{lo, hi})
			mu.Unlock()
		}
	}
	r.onRangeReq.Store(&seen)
	const gap = 6
	for k := range streamfs.MissAheadAfter {
		read(k * gap)
	}
	if m.Stats().MissRuns != 0 {
		t.Fatalf("%d miss runs before the mount missed %d times", m.Stats().MissRuns, streamfs.MissAheadAfter)
	}
	mu.Lock()
	wireSpan := ranges[0][1] + 1 - ranges[0][0] // the first miss fetched one span
	before := len(ranges)
	mu.Unlock()
	// Cut every response after one span and a bit: the run's, its
	// resumption by the client, and none of one span.
	r.cutRange.Store(wireSpan + wireSpan/4)
	last := streamfs.MissAheadAfter * gap
	read(last)
	for i := 1; i <= streamfs.DefaultMissAhead; i++ {
		read(last + i)
	}
	if st := m.Stats(); st.MissRuns == 0 || r.cuts.Load() == 0 {
		t.Fatalf("%d miss runs, %d responses cut; want a run, cut", st.MissRuns, r.cuts.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	run := ranges[before]
	if run[1]+1-run[0] < 2*wireSpan {
		t.Fatalf("the miss after %d misses fetched [%d, %d], not a run of spans", streamfs.MissAheadAfter, run[0], run[1])
	}
	for _, rg := range ranges[before+1:] {
		if rg[0] == run[0] {
			t.Errorf("the missed span was fetched again ([%d, %d]) after its run was cut later", rg[0], rg[1])
		}
	}
}
