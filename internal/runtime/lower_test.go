package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestRunLayeredLower stacks two lower directories: the top one wins.
func TestRunLayeredLower(t *testing.T) {
	f := newFixture(t)
	top := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(top, "data"), 0o755))
	must(t, os.WriteFile(filepath.Join(top, "data/image-file"), []byte("from the top layer\n"), 0o644))
	s := f.spec("cat /data/image-file; ls /bin/sh")
	s.Lower = []string{top, f.lower}
	if code, out := f.run(t, s); code != 0 || out != "from the top layer\n/bin/sh\n" {
		t.Errorf("got %d %q", code, out)
	}
}

// TestRunFUSELower runs a container whose image root is a FUSE mount, as a
// streamed image is: the overlay must stack on FUSE.
func TestRunFUSELower(t *testing.T) {
	f := newFixture(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if testutil.InCI() {
			t.Fatal("/dev/fuse is missing")
		}
		t.Skip("no /dev/fuse")
	}
	loop, err := fs.NewLoopbackRoot(f.lower)
	must(t, err)
	mnt := t.TempDir()
	srv, err := fs.Mount(mnt, loop, &fs.Options{})
	must(t, err)
	t.Cleanup(func() { _ = srv.Unmount() })
	s := f.spec("cat /data/image-file; echo w > /data/new && cat /data/new")
	s.Lower = []string{mnt}
	if code, out := f.run(t, s); code != 0 || out != "from the image\nw\n" {
		t.Errorf("got %d %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(f.lower, "data/new")); err == nil {
		t.Error("write reached the FUSE lower dir")
	}
}
