package streamfs

import (
	"archive/tar"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// Hostile file tables, fed to the tree builder directly: the index refuses
// most of these already, and the builder must not depend on it.
func TestHostileEntries(t *testing.T) {
	refused := [][]Entry{
		{{Name: "../x", Type: tar.TypeReg}},
		{{Name: "a/../../x", Type: tar.TypeDir}},
		{{Name: "x\x00y", Type: tar.TypeReg}},
		{{Name: "a", Type: tar.TypeLink, Linkname: "../../etc/passwd"}},
		{{Name: "d", Type: tar.TypeDir}, {Name: "d/.wh...", Type: tar.TypeReg}},
		{{Name: "f", Type: tar.TypeReg, Offset: 10, Size: 100}}, // data past the stream
	}
	for _, es := range refused {
		if _, _, err := buildTree([][]Entry{es}, []int64{50}); err == nil {
			t.Errorf("%+v was accepted", es[0])
		}
	}
	if _, _, err := buildTree([][]Entry{{{Name: "../x"}}}, []int64{0}); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("../x: %v, want ErrUnsafePath", err)
	}
	// Absolute names and hard-link targets are relative to the root, as
	// containerd and the full pull take them.
	root, _, err := buildTree([][]Entry{{
		{Name: "/etc/passwd", Type: tar.TypeReg},
		{Name: "a", Type: tar.TypeLink, Linkname: "/etc/passwd"},
	}}, []int64{0})
	if err != nil {
		t.Fatal(err)
	}
	if p := root.children["etc"].children["passwd"]; p == nil || root.children["a"] != p {
		t.Errorf("absolute names did not land below the root: %v", root.children)
	}

	// Symlinks climbing out of the root resolve inside it when used as
	// parents, for entries and hard-link targets alike.
	root, nodes, err := buildTree([][]Entry{{
		{Name: "up", Type: tar.TypeSymlink, Linkname: "../../../.."},
		{Name: "abs", Type: tar.TypeSymlink, Linkname: "/"},
		{Name: "up/etc/passwd", Type: tar.TypeReg},
		{Name: "abs/etc/shadow", Type: tar.TypeReg},
		{Name: "hl", Type: tar.TypeLink, Linkname: "up/etc/passwd"},
		{Name: "loop", Type: tar.TypeSymlink, Linkname: "loop"},
	}}, []int64{0})
	if err != nil {
		t.Fatal(err)
	}
	etc := root.children["etc"]
	if etc == nil || etc.children["passwd"] == nil || etc.children["shadow"] == nil {
		t.Fatalf("entries through escaping symlinks are not inside the root: %v", root.children)
	}
	if root.children["hl"] != etc.children["passwd"] || etc.children["passwd"].nlink != 2 {
		t.Error("hard link through a symlink did not resolve to the file inside the root")
	}
	if len(nodes) != 7 { // root, abs, etc, passwd(=hl), shadow, loop, up
		t.Errorf("%d nodes", len(nodes))
	}
	if _, _, err := buildTree([][]Entry{{
		{Name: "loop", Type: tar.TypeSymlink, Linkname: "loop"},
		{Name: "loop/x", Type: tar.TypeReg},
	}}, []int64{0}); !errors.Is(err, unix.ELOOP) {
		t.Errorf("entry below a symlink loop: %v, want ELOOP", err)
	}
}

func TestEncodeDev(t *testing.T) {
	for _, c := range []struct{ major, minor uint32 }{{1, 3}, {7, 7}, {259, 70000}, {4095, 1 << 19}} {
		got := encodeDev(c.major, c.minor)
		// The kernel's new_decode_dev.
		major := (got & 0xfff00) >> 8
		minor := (got & 0xff) | ((got >> 12) & 0xfff00)
		if major != c.major || minor != c.minor {
			t.Errorf("%d:%d encodes to %#x, decodes to %d:%d", c.major, c.minor, got, major, minor)
		}
	}
}

func TestIntervals(t *testing.T) {
	var iv intervals
	for _, r := range [][2]int64{{10, 20}, {30, 40}, {0, 5}, {20, 30}, {5, 10}} {
		if iv.covers(40) {
			t.Fatalf("covers before %v: %v", r, iv)
		}
		iv.add(r[0], r[1])
	}
	if !iv.covers(40) || len(iv) != 1 {
		t.Errorf("%v does not cover [0, 40)", iv)
	}
}
