package streamfs

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/testutil"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// The streaming path (index.Build, then the tree Mount serves) and the
// full pull (unpack.Apply) must give the same tree for every layer, or the
// index must say the layer is not streamable, or both must refuse it.
// These tests feed both the same tar layers and compare the trees with
// fstree, without FUSE: the tree is what a mount shows.

// outcome is how the two paths treated a set of layers.
type outcome string

const (
	same          outcome = "same tree"
	notStreamable outcome = "not streamable"
	bothRefused   outcome = "both refused"
)

// differential applies layers (tar streams) both ways and fails t when the
// two paths disagree.
func differential(t *testing.T, layers [][]byte) outcome {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("layers:\n%s", describe(layers))
		}
	}()
	pulled, pullErr := fullPull(t, layers)
	tables := make([][]Entry, len(layers))
	ends := make([]int64, len(layers))
	for i, l := range layers {
		x, err := index.Build(bytes.NewReader(l), "", index.Options{})
		if err != nil {
			if pullErr == nil {
				t.Fatalf("layer %d: the index refuses it (%v) but the full pull applies it", i, err)
			}
			return bothRefused
		}
		if !x.Streamable() {
			return notStreamable // the full pull is then the only path
		}
		il, err := IndexLayer(x, "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		tables[i] = il.Entries()
		for _, s := range il.Spans() {
			ends[i] += s.Size
		}
	}
	root, _, treeErr := buildTree(tables, ends)
	switch {
	case treeErr != nil && pullErr != nil:
		return bothRefused
	case treeErr != nil:
		t.Fatalf("the stream refuses the image (%v) but the full pull applies it", treeErr)
	case pullErr != nil:
		t.Fatalf("the stream serves the image but the full pull refuses it: %v", pullErr)
	}
	if d := fstree.Diff(treeOf(root), pulled); d != nil {
		t.Fatalf("stream (a) and full pull (b) differ:\n%s", strings.Join(d, "\n"))
	}
	return same
}

// describe lists the layers' tar headers, for failure messages.
func describe(layers [][]byte) string {
	var b strings.Builder
	for i, l := range layers {
		fmt.Fprintf(&b, "layer %d:\n", i)
		tr := tar.NewReader(bytes.NewReader(l))
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			fmt.Fprintf(&b, "  %q type %q mode %#o %d:%d link %q xattrs %v\n", h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname, h.PAXRecords)
		}
	}
	return b.String()
}

// fullPull applies layers with unpack.Apply into a new directory and scans
// the result.
func fullPull(t *testing.T, layers [][]byte) (fstree.Tree, error) {
	t.Helper()
	dir, err := os.MkdirTemp("", "riffle-diff-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for i, l := range layers {
		if err := unpack.Apply(context.Background(), dir, bytes.NewReader(l)); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	tree, err := fstree.Scan(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return tree, nil
}

// treeOf describes the streamed tree as fstree.Scan describes a directory.
func treeOf(root *node) fstree.Tree {
	var tree fstree.Tree
	var walk func(dir *node, prefix string)
	walk = func(dir *node, prefix string) {
		for name, n := range dir.children {
			p := prefix + name
			tree = append(tree, entryOf(p, n))
			if n.typ == unix.S_IFDIR {
				walk(n, p+"/")
			}
		}
	}
	walk(root, "")
	sort.Slice(tree, func(i, j int) bool { return tree[i].Path < tree[j].Path })
	first := map[*node]string{}
	byPath := map[string]*node{}
	var index func(dir *node, prefix string)
	index = func(dir *node, prefix string) {
		for name, n := range dir.children {
			byPath[prefix+name] = n
			if n.typ == unix.S_IFDIR {
				index(n, prefix+name+"/")
			}
		}
	}
	index(root, "")
	for i := range tree {
		n := byPath[tree[i].Path]
		if n.typ == unix.S_IFDIR || n.nlink < 2 {
			continue
		}
		if _, ok := first[n]; !ok {
			first[n] = tree[i].Path // tree is sorted: the smallest path
		}
		tree[i].HardlinkTo = first[n]
	}
	return tree
}

func entryOf(p string, n *node) fstree.Entry {
	e := fstree.Entry{Path: p, Mode: n.perm, UID: n.uid, GID: n.gid, Mtime: n.mtime.UTC(), Nlink: uint64(n.nlink), Xattrs: n.xattrs}
	switch n.typ {
	case unix.S_IFREG:
		e.Type, e.Size = fstree.Regular, n.size
		e.SHA256 = n.digest.Encoded()
		if n.size == 0 {
			e.SHA256 = hex.EncodeToString(sha256Empty[:])
		}
	case unix.S_IFDIR:
		e.Type = fstree.Dir
	case unix.S_IFLNK:
		e.Type, e.Linkname, e.Size = fstree.Symlink, n.link, int64(len(n.link))
	case unix.S_IFCHR, unix.S_IFBLK:
		e.Type = fstree.Char
		if n.typ == unix.S_IFBLK {
			e.Type = fstree.Block
		}
		// The kernel's new_decode_dev.
		e.Devmajor = (n.rdev & 0xfff00) >> 8
		e.Devminor = (n.rdev & 0xff) | ((n.rdev >> 12) & 0xfff00)
	case unix.S_IFIFO:
		e.Type = fstree.Fifo
	}
	return e
}

var sha256Empty = [32]byte{0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55}

// tarOf writes headers (with their data for regular files) as a tar.
func tarOf(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.h
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type tarEntry struct {
	h    tar.Header
	data string
}

func dirE(name string) tarEntry {
	return tarEntry{h: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}
func fileE(name, data string) tarEntry {
	return tarEntry{h: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, data: data}
}
func linkE(name, target string) tarEntry {
	return tarEntry{h: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}
func symE(name, target string) tarEntry {
	return tarEntry{h: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}

// TestStreamMatchesPull holds the disagreements found so far between the
// two paths, each with what both must now do.
func TestStreamMatchesPull(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, tc := range []struct {
		name   string
		layers [][]tarEntry
		want   outcome
	}{
		// Issue 9 item 6: containerd and Docker take "/x" as "x".
		{"absolute names", [][]tarEntry{{dirE("/etc/"), fileE("/etc/passwd", "root"), linkE("/etc/shadow", "/etc/passwd"), symE("/abs", "/etc")}}, same},
		{"absolute whiteout", [][]tarEntry{{fileE("a", "1"), fileE("b", "2")}, {fileE("/.wh.a", ""), dirE("/d/"), fileE("/d/.wh..wh..opq", "")}}, same},
		// Issue 9 item 18: the index kept only the second "a", so the
		// mount could not resolve the link the pull had made to the first.
		{"link to a replaced file", [][]tarEntry{{fileE("a", "old"), linkE("b", "a"), fileE("a", "new")}}, notStreamable},
		{"replaced file, no link between", [][]tarEntry{{fileE("a", "old"), fileE("c", "x"), linkE("d", "c"), fileE("a", "new")}}, same},
		{"directory restated", [][]tarEntry{{dirE("d/"), fileE("d/f", "x"), {h: tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 7}}}}, same},
		{"directory restated after a lower symlink was replaced", [][]tarEntry{
			{dirE("real/"), symE("d", "real")},
			{dirE("d/"), fileE("d/f", "x"), dirE("d/")},
		}, same},
		{"entry below a dangling symlink", [][]tarEntry{{symE("s", "x"), fileE("s/f", "1")}}, bothRefused},
		{"opaque marker through a symlink", [][]tarEntry{
			{dirE("d/"), fileE("d/old", "o")},
			{symE("s", "d"), fileE("d/new", "n"), fileE("s/.wh..wh..opq", "")},
		}, same},
		{"directory removed, then an implicit parent", [][]tarEntry{{dirE("d/"), fileE(".wh.d", ""), fileE("d/f", "x")}}, same},
		{"dotdot", [][]tarEntry{{fileE("a/../../x", "x")}}, bothRefused},
		{"whiteout of dot", [][]tarEntry{{dirE("d/"), fileE("d/.wh..", "")}}, bothRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layers := make([][]byte, len(tc.layers))
			for i, l := range tc.layers {
				layers[i] = tarOf(t, l...)
			}
			if got := differential(t, layers); got != tc.want {
				t.Errorf("outcome %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzStreamMatchesPull feeds generated hostile layers (see genLayers)
// through both paths. The seeds in testdata/fuzz run as a normal test;
// `go test -fuzz FuzzStreamMatchesPull ./internal/streamfs/` searches for
// more.
func FuzzStreamMatchesPull(f *testing.F) {
	testutil.RequiresRoot(f)
	f.Add([]byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Add([]byte("layered\xff\x10\x21\x32\x43\x54\x65\x76\x87\x98\xa9\xba\xcb\xdc\xed\xfe"))
	f.Fuzz(func(t *testing.T, data []byte) {
		layers, err := genLayers(data)
		if err != nil {
			t.Skip(err) // archive/tar refused the generated header
		}
		differential(t, layers)
	})
}

// genLayers turns fuzz input into one to three tar layers over a small set
// of names, so that entries meet: repeated names, whiteouts and opaque
// markers, hard links and symlinks (relative, absolute, climbing) used as
// parents, absolute and "./" names, devices, xattrs.
func genLayers(data []byte) ([][]byte, error) {
	g := &gen{data: data}
	var layers [][]byte
	for len(layers) < 3 && (len(layers) == 0 || g.more()) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for n := 0; n < 24 && g.more(); n++ {
			op := g.next()
			if op == 0xff {
				break // next layer
			}
			h, body := g.entry(op)
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			if _, err := tw.Write(body); err != nil {
				return nil, err
			}
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		layers = append(layers, buf.Bytes())
	}
	return layers, nil
}

type gen struct {
	data []byte
	i    int
}

func (g *gen) more() bool { return g.i < len(g.data) }

func (g *gen) next() byte {
	if g.i >= len(g.data) {
		return 0
	}
	b := g.data[g.i]
	g.i++
	return b
}

var genComps = []string{"a", "b", "c", "a", "b", ".wh.a", ".wh.b", ".wh..wh..opq", ".wh..wh.plnk", "d"}

// name returns a path of one to three components, sometimes absolute or
// with "./", rarely with "..".
func (g *gen) name() string {
	b := g.next()
	var comps []string
	for range 1 + int(b%3) {
		comps = append(comps, genComps[int(g.next())%len(genComps)])
	}
	// Only the last component may be a whiteout name.
	for i := range len(comps) - 1 {
		if strings.HasPrefix(comps[i], ".wh.") {
			comps[i] = "c"
		}
	}
	p := strings.Join(comps, "/")
	switch b >> 5 {
	case 1:
		p = "/" + p
	case 2:
		p = "./" + p
	case 3:
		if b&0x10 != 0 {
			p = "a/../" + p
		}
	}
	return p
}

var genLinkTargets = []string{"a", "b", "a/b", "/a", "..", "../../a", ".", "/", "b/a", "c"}

func (g *gen) entry(op byte) (*tar.Header, []byte) {
	h := &tar.Header{Name: g.name(), Mode: int64([]int{0o755, 0o644, 0o700, 0o4755, 0}[int(op>>3)%5]),
		Uid: int(op >> 6), Gid: int(op>>5) & 1, ModTime: time.Unix(1700000000+int64(op>>4), int64(op)*1000)}
	var body []byte
	switch op % 8 {
	case 0, 1:
		h.Typeflag = tar.TypeDir
	case 2, 3:
		h.Typeflag = tar.TypeReg
		body = []byte(fmt.Sprintf("content %d", g.next()%4))
		h.Size = int64(len(body))
	case 4:
		h.Typeflag = tar.TypeSymlink
		h.Linkname = genLinkTargets[int(g.next())%len(genLinkTargets)]
	case 5:
		h.Typeflag = tar.TypeLink
		h.Linkname = g.name()
		h.Mode = 0o600
	case 6:
		h.Typeflag = tar.TypeFifo
	case 7:
		h.Typeflag = tar.TypeChar
		h.Devmajor, h.Devminor = 1, int64(g.next()%8)
	}
	if op&0x40 != 0 && op%8 != 4 {
		h.PAXRecords = map[string]string{"SCHILY.xattr.user.k" + fmt.Sprint(op%2): fmt.Sprint(op % 3)}
		h.Format = tar.FormatPAX
	}
	return h, body
}
