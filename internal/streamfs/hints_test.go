package streamfs_test

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// hintSpec has a program and a library reached through directory
// symlinks (relative and absolute), a symlink loop, and a data file in
// another layer.
func hintSpec() imagegen.Spec {
	return imagegen.Spec{Layers: []imagegen.Layer{
		{Compression: imagegen.Gzip, Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "usr"},
			{Type: imagegen.Dir, Name: "usr/bin"},
			{Type: imagegen.Dir, Name: "usr/lib"},
			{Type: imagegen.File, Name: "usr/bin/prog", Mode: 0o755, Size: 300 << 10, Seed: 1},
			{Type: imagegen.File, Name: "usr/lib/libx.so", Size: 150 << 10, Seed: 2},
			{Type: imagegen.File, Name: "usr/lib/other.so", Size: 400 << 10, Seed: 3},
			{Type: imagegen.Symlink, Name: "bin", Linkname: "usr/bin"},
			{Type: imagegen.Symlink, Name: "lib64", Linkname: "/usr/lib"},
			{Type: imagegen.Symlink, Name: "usr/bin/loop1", Linkname: "loop2"},
			{Type: imagegen.Symlink, Name: "usr/bin/loop2", Linkname: "./loop1"},
		}},
		{Compression: imagegen.Gzip, Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "data"},
			{Type: imagegen.File, Name: "data/a.bin", Size: 1 << 20, Seed: 4},
		}},
	}}
}

// TestHintsFetchedAtMount: a mount without a startup profile fetches the
// spans of the files Options.Hints name (symlinks followed; missing paths
// and loops skipped) before anything reads, so the task's first reads of
// them fetch nothing.
func TestHintsFetchedAtMount(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	_, ref := r.push(t, hintSpec(), "hints/img")
	simg := r.open(t, ref, 64<<10)
	read := func(dir string, files ...string) {
		t.Helper()
		for _, f := range files {
			if _, err := os.ReadFile(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
	}
	hinted := []string{"usr/bin/prog", "usr/lib/libx.so"}

	// How many spans reading the two files fetches, with nothing ahead.
	m1, dir1 := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true})
	read(dir1, hinted...)
	want := m1.Stats().FetchedSpans

	hints := []string{"/bin/prog", "/lib64/libx.so", "/usr/bin/../lib/libx.so", "/missing/prog", "/usr/bin/loop1", "/bin"}
	m2, dir2 := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true, Hints: hints})
	deadline := time.Now().Add(30 * time.Second)
	for m2.Stats().HintSpans < want {
		if time.Now().After(deadline) {
			t.Fatalf("hinted spans not fetched: %d of %d (%+v)", m2.Stats().HintSpans, want, m2.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	read(dir2, hinted...)
	if st := m2.Stats(); st.HintSpans != want || st.FetchedSpans != want {
		t.Errorf("hints fetched %d spans and %d were fetched in all; want %d and %d (reads of hinted files fetch nothing)", st.HintSpans, st.FetchedSpans, want, want)
	}

	// A learned profile takes the place of hints.
	prof := m1.Profile()
	m3, _ := mount(t, simg, streamfs.Options{Cache: newCache(t), NoPrefetch: true, Hints: []string{"/usr/lib/other.so"}, Profile: &prof})
	<-m3.PacksDone()
	for m3.Stats().ProfileSpans < want {
		if time.Now().After(deadline) {
			t.Fatalf("profile not prefetched: %+v", m3.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := m3.Stats(); st.HintSpans != 0 {
		t.Errorf("with a profile, %d hinted spans were fetched; want none", st.HintSpans)
	}
}

// TestNoXattrsImage: in an image without extended attributes, getxattr
// fails with EOPNOTSUPP, as on a filesystem without them (the kernel
// answers it, not the daemon: see fsNode.Getxattr), listxattr lists
// none, and the files read as usual.
func TestNoXattrsImage(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	_, ref := r.push(t, hintSpec(), "noxattrs/img")
	_, dir := mount(t, r.open(t, ref, 64<<10), streamfs.Options{Cache: newCache(t), NoPrefetch: true})
	p := filepath.Join(dir, "usr/bin/prog")
	for range 2 {
		if _, err := unix.Lgetxattr(p, "security.capability", make([]byte, 64)); !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("getxattr: %v, want EOPNOTSUPP", err)
		}
	}
	if n, err := unix.Llistxattr(p, make([]byte, 64)); err != nil || n != 0 {
		t.Errorf("listxattr: %d bytes, %v; want none", n, err)
	}
	if b, err := os.ReadFile(p); err != nil || len(b) != 300<<10 {
		t.Errorf("read: %d bytes, %v", len(b), err)
	}
}

// TestHintedFileNotWaitedForFromStream: a file whose spans are queued as
// hints is read from them, not waited for from its layer's stream (which
// then would fetch its way to the file beside the hints). Range requests
// are held, so the hinted span is still on its way when the file is read.
func TestHintedFileNotWaitedForFromStream(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	_, ref := r.push(t, hintSpec(), "hints/img")
	simg := r.open(t, ref, 64<<10)
	hold := make(chan struct{})
	var release sync.Once
	open := func() { release.Do(func() { close(hold) }) }
	onReq := func(req *http.Request) {
		select {
		case <-hold:
		case <-req.Context().Done():
		}
	}
	r.onRangeReq.Store(&onReq)
	m, dir := mount(t, simg, streamfs.Options{Cache: newCache(t), Layers: newStore(t), NoPrefetch: true,
		Hints: []string{"/usr/bin/prog"}, StreamWait: 8 << 20,
		ProfileParallel: 1}) // one hint miss at a time: the read's is the second
	t.Cleanup(open) // before the unmount
	deadline := time.Now().Add(30 * time.Second)
	for m.Stats().Layers[0].State != streamfs.LayerStreaming {
		if time.Now().After(deadline) {
			t.Fatalf("layer 0 is not streaming: %+v", m.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan error, 1)
	var got []byte
	go func() {
		var err error
		got, err = os.ReadFile(filepath.Join(dir, "usr/bin/prog"))
		done <- err
	}()
	// The read either joins the hint's fetch (a second miss) or waits
	// for the stream.
	st := m.Stats()
	for st.CacheMisses < 2 && st.StreamWaits == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the read neither missed nor waited: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
		st = m.Stats()
	}
	if st.StreamWaits != 0 {
		t.Errorf("the read of a hinted file waited for its layer's stream (stats %+v)", st)
	}
	open()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != 300<<10 {
		t.Errorf("read %d bytes, want %d", len(got), 300<<10)
	}
}
