package node

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestProfileFiles: a profile's spans name the files whose content they
// hold, in the spans' order, each once, with the ranges of it they hold;
// entries without content, a file overlapping an earlier one, repeated
// spans and spans the index has not are left out.
func TestProfileFiles(t *testing.T) {
	x := &index.Index{
		Spans: []index.Span{{UOffset: 0, USize: 100}, {UOffset: 100, USize: 100}, {UOffset: 200, USize: 100}},
		Files: []index.File{
			{Name: "d", Type: '5'},
			{Name: "d/f1", Type: '0', Offset: 10, Size: 50},
			{Name: "d/f2", Type: '0', Offset: 80, Size: 150},
			{Name: "d/over", Type: '0', Offset: 90, Size: 10},
			{Name: "d/empty", Type: '0', Offset: 230, Size: 0},
			{Name: "d/link", Type: '1', Linkname: "d/f1"},
			{Name: "d/f3", Type: '0', Offset: 250, Size: 10},
		},
	}
	got := profileFiles(context.Background(), x, []int{2, 0, 2, 7, -1})
	want := []warmFile{
		{name: "d/f2", ranges: []warmRange{{120, 150}, {0, 20}}},
		{name: "d/f3", ranges: []warmRange{{0, 10}}},
		{name: "d/f1", ranges: []warmRange{{0, 50}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("profileFiles = %+v, want %+v", got, want)
	}
	// The span between joins f2's two ranges.
	got = profileFiles(context.Background(), x, []int{2, 0, 1})
	if want := []warmRange{{0, 150}}; !reflect.DeepEqual(got[0].ranges, want) {
		t.Errorf("f2 after spans 2, 0, 1: %v, want %v", got[0].ranges, want)
	}
}

// TestWarmStaysBeneathLayer: a warm-up reads regular files of the layer's
// tree only. A name through a symbolic link (to the host), climbing out of
// the tree, or naming a FIFO or a device is skipped, without reading the
// host's file, blocking, or opening the device.
func TestWarmStaysBeneathLayer(t *testing.T) {
	testutil.RequiresRoot(t) // mknod
	dir := t.TempDir()
	layer, outside := filepath.Join(dir, "layer"), filepath.Join(dir, "outside")
	for _, d := range []string{layer, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := make([]byte, 1<<20)
	for _, p := range []string{filepath.Join(outside, "secret"), filepath.Join(layer, "ok")} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		testutil.Evict(t, p)
	}
	if err := os.Symlink(outside, filepath.Join(layer, "lib")); err != nil {
		t.Fatal(err)
	}
	// A FIFO opened for reading blocks until a writer comes: a warm-up
	// that opened it would never end.
	if err := unix.Mkfifo(filepath.Join(layer, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(layer, "null"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	root, err := unix.Open(layer, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	var files []warmFile
	for _, name := range []string{"lib/secret", "../outside/secret", "fifo", "null", "ok"} {
		files = append(files, warmFile{root: root, name: name, ranges: []warmRange{{0, 1 << 20}}})
	}
	st := warmFiles(context.Background(), files, 2)
	if st.files != 1 || st.bytes != 1<<20 {
		t.Errorf("warmed %d files, %d bytes; want only ok, 1 MiB", st.files, st.bytes)
	}
	if in, _ := testutil.Resident(t, filepath.Join(outside, "secret")); in != 0 {
		t.Errorf("the host's file has %d pages cached after the warm-up", in)
	}
}
