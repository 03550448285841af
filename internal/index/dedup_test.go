package index

import (
	"archive/tar"
	"bytes"
	"strings"
	"testing"
	"time"
)

func tarLayer(t *testing.T, hs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hs {
		data := []byte(h.Linkname)
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
			h.Linkname = ""
		} else {
			data = nil
		}
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	return buf.Bytes()
}

// TestRepeatedNames: the table keeps one entry per name only where that
// is the same as applying every entry (ocilayer.Dedup); elsewhere the
// layer is not streamable. Regular files carry their content in Linkname
// here, for brevity.
func TestRepeatedNames(t *testing.T) {
	reg := func(n, data string) *tar.Header {
		return &tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Linkname: data}
	}
	dir := func(n string, mode int64, x map[string]string) *tar.Header {
		return &tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: mode, PAXRecords: x}
	}
	link := func(n, target string) *tar.Header {
		return &tar.Header{Name: n, Typeflag: tar.TypeLink, Linkname: target}
	}

	// Issue 9 item 18: b shares the first a's inode, which the table
	// cannot hold.
	x, err := Build(bytes.NewReader(tarLayer(t, reg("a", "old"), link("b", "a"), reg("/a", "new"))), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if x.Streamable() || !strings.Contains(x.NotStreamable, `"a" appears twice`) {
		t.Errorf("NotStreamable = %q", x.NotStreamable)
	}

	// A directory restated merges forward: first place, last metadata,
	// xattrs of both.
	x, err = Build(bytes.NewReader(tarLayer(t,
		dir("d/", 0o755, map[string]string{"SCHILY.xattr.user.a": "1", "SCHILY.xattr.user.b": "1"}),
		reg("d/f", "x"),
		dir("./d", 0o700, map[string]string{"SCHILY.xattr.user.b": "2"}),
		reg("a", "1"), reg("a", "2"),
	)), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !x.Streamable() {
		t.Fatal(x.NotStreamable)
	}
	var names []string
	for _, f := range x.Files {
		names = append(names, f.Name)
	}
	if got := strings.Join(names, " "); got != "d d/f a" {
		t.Fatalf("files %q, want \"d d/f a\"", got)
	}
	d := x.Files[0]
	if xa := d.Xattrs(); d.Mode != 0o700 || xa["user.a"] != "1" || xa["user.b"] != "2" {
		t.Errorf("merged directory: mode %#o xattrs %v", d.Mode, xa)
	}
	if x.Files[2].Digest != sha256Sum([]byte("2")) {
		t.Errorf("repeated file: %+v", x.Files[2])
	}
}
