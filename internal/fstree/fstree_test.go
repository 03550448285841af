package fstree

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func makeTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a/b"), 0o755))
	must(os.WriteFile(filepath.Join(root, "a/file"), []byte("hello"), 0o640))
	must(os.Link(filepath.Join(root, "a/file"), filepath.Join(root, "z-link")))
	must(os.Symlink("../nowhere", filepath.Join(root, "a/b/sym")))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o600))
	must(unix.Chmod(filepath.Join(root, "a/b"), 0o1755))
	must(unix.Lsetxattr(filepath.Join(root, "a/file"), "user.k", []byte("v\x00w"), 0))
	mt := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, p := range []string{"a/file", "a/b", "a", "fifo"} {
		must(os.Chtimes(filepath.Join(root, p), mt, mt))
	}
	must(unix.Lutimes(filepath.Join(root, "a/b/sym"), []unix.Timeval{{Sec: mt.Unix()}, {Sec: mt.Unix()}}))
	return root
}

func TestScan(t *testing.T) {
	root := makeTree(t)
	tree, err := Scan(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range tree {
		paths = append(paths, e.Path)
	}
	if got := strings.Join(paths, " "); got != "a a/b a/b/sym a/file fifo z-link" {
		t.Fatalf("paths %q", got)
	}
	f, _ := tree.Find("a/file")
	if f.Type != Regular || f.Mode != 0o640 || f.Size != 5 || f.Nlink != 2 || f.HardlinkTo != "a/file" ||
		f.SHA256 != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" ||
		f.Xattrs["user.k"] != "v\x00w" || f.Mtime.Nanosecond() != 6 {
		t.Errorf("a/file: %+v", f)
	}
	if l, _ := tree.Find("z-link"); l.HardlinkTo != "a/file" || l.Ino != f.Ino {
		t.Errorf("z-link: %+v", l)
	}
	if d, _ := tree.Find("a/b"); d.Type != Dir || d.Mode != 0o1755 || d.Size != 0 {
		t.Errorf("a/b: %+v", d)
	}
	if s, _ := tree.Find("a/b/sym"); s.Type != Symlink || s.Linkname != "../nowhere" || s.Size != 10 || s.Mtime.Year() != 2020 {
		t.Errorf("a/b/sym: %+v", s)
	}
	if p, _ := tree.Find("fifo"); p.Type != Fifo {
		t.Errorf("fifo: %+v", p)
	}
	if _, ok := tree.Find("missing"); ok {
		t.Error("Find(missing) found something")
	}
}

func TestDiff(t *testing.T) {
	ctx := context.Background()
	a, b := makeTree(t), makeTree(t)
	ta, _ := Scan(ctx, a)
	tb, _ := Scan(ctx, b)
	if d := Diff(ta, tb); d != nil {
		t.Fatalf("equal trees differ: %q", d)
	}
	os.WriteFile(filepath.Join(b, "a/file"), []byte("HELLO"), 0o640)
	os.Chmod(filepath.Join(b, "fifo"), 0o644)
	os.Remove(filepath.Join(b, "z-link"))
	os.WriteFile(filepath.Join(b, "new"), nil, 0o644)
	unix.Lsetxattr(filepath.Join(b, "a/b"), "user.x", []byte("1"), 0)
	tb, _ = Scan(ctx, b)
	d := strings.Join(Diff(ta, tb, Ignore(FieldMtime)), "\n")
	for _, want := range []string{
		"a/file: sha256: 2cf24",
		"a/file: nlink: 2 != 1",
		`a/file: hardlink: "a/file" != ""`,
		"fifo: mode: 0600 != 0644",
		"z-link: only in a (file)",
		"new: only in b (file)",
		`a/b: xattrs: {} != {user.x="1"}`,
	} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "mtime") {
		t.Errorf("Ignore(FieldMtime) did not ignore mtimes:\n%s", d)
	}
	if d := Diff(ta, tb, IgnoreXattrs("user.x"), Ignore(FieldMtime)); strings.Contains(strings.Join(d, "\n"), "a/b: xattrs") {
		t.Errorf("IgnoreXattrs: %q", d)
	}
}
