package ocilayer

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"a": "a", "./a/": "a", "/a": "a", "//a//b/./c/": "a/b/c", "/": ".", "./": ".", ".": ".",
	} {
		if got, err := CleanName(in); err != nil || got != want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "..", "a/../b", "/../etc", "a\x00b"} {
		if _, err := CleanName(in); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("CleanName(%q): %v, want ErrUnsafePath", in, err)
		}
	}
}

// FuzzCleanName checks CleanName's fast path for names already clean
// against the general rules: the same result, and the result is clean.
func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"a", "./a/", "/a", "//a//b/./c/", "/", ".", "", "..", "a/../b", "a\x00b", "a/b/c", "a/.", "a/..b", ".a/b.", "a//b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got, err := CleanName(name)
		if err != nil {
			if isClean(name) {
				t.Fatalf("isClean(%q) but CleanName refuses it: %v", name, err)
			}
			return
		}
		if isClean(name) && got != name {
			t.Fatalf("isClean(%q) but CleanName makes it %q", name, got)
		}
		if !isClean(got) {
			t.Fatalf("CleanName(%q) = %q, which is not clean", name, got)
		}
		if again, err := CleanName(got); err != nil || again != got {
			t.Fatalf("CleanName(CleanName(%q)) = %q, %v", name, again, err)
		}
	})
}

func TestClassify(t *testing.T) {
	for in, want := range map[string]Name{
		".":                 {Kind: Root, Dir: ".", Base: "."},
		"a/b":               {Kind: Plain, Dir: "a", Base: "b"},
		"a/.wh.b":           {Kind: Whiteout, Dir: "a", Base: ".wh.b", Victim: "b"},
		".wh.b":             {Kind: Whiteout, Dir: ".", Base: ".wh.b", Victim: "b"},
		"a/.wh..wh..opq":    {Kind: Opaque, Dir: "a", Base: ".wh..wh..opq"},
		".wh..wh..opq":      {Kind: Opaque, Dir: ".", Base: ".wh..wh..opq"},
		".wh..wh.plnk/1234": {Kind: Meta, Dir: ".wh..wh.plnk", Base: "1234"},
		"a/.wh..wh.x":       {Kind: Meta, Dir: "a", Base: ".wh..wh.x"},
	} {
		if got, err := Classify(in); err != nil || got != want {
			t.Errorf("Classify(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if _, err := Classify("a/.wh.."); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("whiteout of .: %v", err)
	}
}

// The decoder follows the bytes, not a label: each encoding of one tar
// decompresses to that tar.
func TestDecompressSniffs(t *testing.T) {
	plain := []byte("not really a tar, but bytes to round-trip")
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(plain)
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(plain)
	zw.Close()
	for name, blob := range map[string][]byte{"plain": plain, "gzip": gz.Bytes(), "zstd": zs.Bytes(), "empty": nil} {
		r, err := Decompress(bytes.NewReader(blob))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := plain
		if name == "empty" {
			want = nil
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: got %q", name, got)
		}
	}
}

func TestDedup(t *testing.T) {
	reg := func(n string) Entry { return Entry{Name: n, Type: tar.TypeReg} }
	dir := func(n string) Entry { return Entry{Name: n, Type: tar.TypeDir} }
	link := func(n, target string) Entry { return Entry{Name: n, Type: tar.TypeLink, Linkname: target} }
	sym := func(n string) Entry { return Entry{Name: n, Type: tar.TypeSymlink} }
	for _, tc := range []struct {
		name    string
		entries []Entry
		last    Action
		safe    bool
	}{
		{"no repeat", []Entry{reg("a"), reg("b")}, Append, true},
		{"file repeated", []Entry{reg("a"), reg("b"), reg("a")}, ReplaceEarlier, true},
		{"link to the first between", []Entry{reg("a"), link("b", "a"), reg("a")}, ReplaceEarlier, false},
		{"link through an alias between", []Entry{reg("d/a"), link("b", "s/a"), reg("d/a")}, ReplaceEarlier, false},
		{"unrelated link between", []Entry{reg("a"), reg("c"), link("b", "c"), reg("a")}, ReplaceEarlier, true},
		{"entry below a file between", []Entry{reg("a"), reg("a/x"), reg("a")}, ReplaceEarlier, false},
		{"directory restated", []Entry{dir("d"), reg("d/f"), dir("d")}, MergeIntoEarlier, true},
		{"directory restated after its parent", []Entry{dir("p/d"), dir("p"), dir("p/d")}, MergeIntoEarlier, false},
		{"directory restated after a whiteout", []Entry{dir("d"), reg(".wh.d"), dir("d")}, MergeIntoEarlier, false},
		{"file then directory", []Entry{reg("d"), dir("d")}, ReplaceEarlier, false},
		{"directory then file", []Entry{dir("d"), reg("d")}, ReplaceEarlier, false},
		{"symlink repeated", []Entry{sym("s"), reg("s")}, ReplaceEarlier, false},
		{"link repeated", []Entry{reg("t"), link("h", "t"), reg("h")}, ReplaceEarlier, false},
		{"whiteout twice in a row", []Entry{reg(".wh.a"), reg(".wh.a")}, ReplaceEarlier, true},
		{"whiteout twice apart", []Entry{reg(".wh.a"), reg("b"), reg(".wh.a")}, ReplaceEarlier, false},
	} {
		d := NewDedup()
		var act Action
		for _, e := range tc.entries {
			act = d.Add(e)
		}
		if act != tc.last || (d.NotSafe() == "") != tc.safe {
			t.Errorf("%s: last action %d, not safe %q; want %d, safe %v", tc.name, act, d.NotSafe(), tc.last, tc.safe)
		}
	}
}

func TestXattrApplies(t *testing.T) {
	for _, c := range []struct {
		name     string
		regOrDir bool
		want     bool
	}{
		{"user.a", true, true}, {"user.a", false, false},
		{"security.capability", false, true}, {"trusted.x", false, true},
		{"system.posix_acl_access", true, true}, {"foo.bar", true, false},
	} {
		if got := XattrApplies(c.name, c.regOrDir); got != c.want {
			t.Errorf("XattrApplies(%q, %v) = %v", c.name, c.regOrDir, got)
		}
	}
}
