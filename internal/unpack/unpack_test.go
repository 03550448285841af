package unpack

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/testutil"
)

func unpackSpec(t *testing.T, spec imagegen.Spec) (string, fstree.Tree) {
	t.Helper()
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Image(context.Background(), dir, img); err != nil {
		t.Fatal(err)
	}
	tree, err := fstree.Scan(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, tree
}

func contentSHA(seed uint64, size int64, fill imagegen.Fill) string {
	h := sha256.New()
	io.Copy(h, imagegen.Content(seed, size, fill))
	return hex.EncodeToString(h.Sum(nil))
}

func TestAllFeatures(t *testing.T) {
	testutil.RequiresRoot(t)
	_, tree := unpackSpec(t, imagegen.AllFeatures())
	get := func(p string) fstree.Entry {
		t.Helper()
		e, ok := tree.Find(p)
		if !ok {
			t.Fatalf("%s is missing", p)
		}
		return e
	}
	absent := func(p string) {
		t.Helper()
		if _, ok := tree.Find(p); ok {
			t.Errorf("%s is present, want it deleted", p)
		}
	}
	t0 := imagegen.DefaultTime

	// Whiteouts and the opaque directory.
	absent("data/deleteme.txt")
	absent("deleteme-dir")
	absent("deleteme-dir/inner/f")
	absent("data/zeros.bin")
	absent("dup/a.txt")
	absent("opaque/lower-file")
	absent("opaque/lower-dir")
	if e := get("opaque/upper-file"); e.Type != fstree.Regular {
		t.Errorf("opaque/upper-file: %v", e)
	}
	get("dup/b.bin")
	get("data/late.txt")

	// Replacements.
	if e := get("etc/becomes-file"); e.Type != fstree.Regular {
		t.Errorf("etc/becomes-file: %v", e)
	}
	absent("etc/becomes-file/child")
	if e := get("data/becomes-dir"); e.Type != fstree.Dir {
		t.Errorf("data/becomes-dir: %v", e)
	}
	if e := get("links/to-be-file"); e.Type != fstree.Regular {
		t.Errorf("links/to-be-file: %v", e)
	}
	if e := get("etc/hostname"); e.SHA256 != sha("riffle-changed\n") {
		t.Errorf("etc/hostname has the lower layer's content")
	}

	// Hard links: one inode, right nlink, across directories and layers.
	small, hs := get("data/small.bin"), get("links/hard-small")
	if small.Nlink != 2 || hs.Ino != small.Ino || hs.HardlinkTo != "data/small.bin" {
		t.Errorf("data/small.bin and links/hard-small: %v / %v", small, hs)
	}
	if small.SHA256 != contentSHA(1, 1000, imagegen.Mixed) {
		t.Errorf("data/small.bin content")
	}
	multi := get("data/multi.bin")
	if multi.Nlink != 3 || get("etc/multi-hl2").Ino != multi.Ino || get("data/multi-hl1").Ino != multi.Ino {
		t.Errorf("data/multi.bin: %v", multi)
	}
	if multi.Mode != 0o640 || multi.UID != 1000 {
		t.Errorf("data/multi.bin metadata: %v", multi)
	}
	rnd, xl := get("data/random.bin"), get("links/hard-xlayer")
	if rnd.Nlink != 2 || xl.Ino != rnd.Ino || rnd.SHA256 != contentSHA(3, 600<<10, imagegen.Random) {
		t.Errorf("hard link across layers: %v / %v", rnd, xl)
	}
	lf := get(imagegen.LongFile)
	if lf.Nlink != 2 || get("long/hl-to-long").Ino != lf.Ino {
		t.Errorf("long file: %v", lf)
	}

	// Symlinks are stored as given.
	for p, target := range map[string]string{
		"links/rel": "../data/small.bin", "links/abs": "/data/small.bin",
		"links/dangling": "../does/not/exist", "links/escape": "../../../../etc/passwd",
		"links/long-target": imagegen.LongTarget,
	} {
		if e := get(p); e.Type != fstree.Symlink || e.Linkname != target {
			t.Errorf("%s: %v", p, e)
		}
	}
	if e := get("links/abs"); !e.Mtime.Equal(t0.Add(500 * time.Millisecond)) {
		t.Errorf("links/abs mtime %v (lutimes)", e.Mtime)
	}

	// Xattrs, devices, modes, owners, times.
	tool := get("bin/tool")
	if tool.Xattrs["security.capability"] != imagegen.CapNetBindService || tool.Xattrs["user.comment"] != "a tool" || tool.Mode != 0o755 {
		t.Errorf("bin/tool: %v %q", tool, tool.Xattrs)
	}
	if x := get("xattr-dir/file").Xattrs; x["user.binary"] != "\x00\x01\xfe\xff" || len(x["user.long"]) != 1000 {
		t.Errorf("xattr-dir/file xattrs %q", x)
	}
	if x := get("xattr-dir").Xattrs; x["user.dir"] != "1" {
		t.Errorf("xattr-dir xattrs %q", x)
	}
	if e := get("special/null"); e.Type != fstree.Char || e.Devmajor != 1 || e.Devminor != 3 || e.Mode != 0o666 {
		t.Errorf("special/null: %v", e)
	}
	if e := get("special/loop7"); e.Type != fstree.Block || e.Devmajor != 7 || e.Devminor != 7 || e.GID != 6 || e.Mode != 0o660 {
		t.Errorf("special/loop7: %v", e)
	}
	if e := get("special/fifo"); e.Type != fstree.Fifo {
		t.Errorf("special/fifo: %v", e)
	}
	for p, mode := range map[string]uint32{"bin/suid": 0o4755, "bin/sgid": 0o2755, "bin/suid-sgid": 0o6755, "tmp": 0o1777, "shared": 0o2775, "data/sub": 0o750, "etc/shadow": 0} {
		if e := get(p); e.Mode != mode {
			t.Errorf("%s mode %#o, want %#o", p, e.Mode, mode)
		}
	}
	if e := get("owners/big-uid"); e.UID != 100000 || e.GID != 100000 {
		t.Errorf("owners/big-uid: %v", e)
	}
	if e := get("owners/huge-uid"); e.UID != 3000000 || e.GID != 4000000 {
		t.Errorf("owners/huge-uid: %v", e)
	}
	if e := get("data/nanos"); e.Mtime.Nanosecond() != 123456789 {
		t.Errorf("data/nanos mtime %v", e.Mtime)
	}
	if e := get("data/future"); e.Mtime.Year() != 2040 {
		t.Errorf("data/future mtime %v", e.Mtime)
	}
	// Directory times are the layers' even though later layers changed
	// their content.
	if e := get("data"); !e.Mtime.Equal(t0.Add(500 * time.Millisecond)) {
		t.Errorf("data mtime %v", e.Mtime)
	}
	if e := get("opaque"); !e.Mtime.Equal(t0) {
		t.Errorf("opaque mtime %v", e.Mtime)
	}
	if e := get("data/big.bin"); e.Size != 3<<20 || e.SHA256 != contentSHA(2, 3<<20, imagegen.Mixed) {
		t.Errorf("data/big.bin: %v", e)
	}
	get("data/unicode ünïcödé ✓.txt")
	get("data/zstd-payload.bin")
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// The same image unpacked twice, and its Docker twin (gzip instead of
// zstd), give equal trees: every time in the result comes from the layers.
func TestReproducibleAcrossFormats(t *testing.T) {
	testutil.RequiresRoot(t)
	_, a := unpackSpec(t, imagegen.AllFeatures())
	_, b := unpackSpec(t, imagegen.AllFeatures().Docker())
	if d := fstree.Diff(a, b); d != nil {
		t.Errorf("OCI and Docker unpacks differ:\n%s", strings.Join(d, "\n"))
	}
}

func TestImplicitParentsAndUntouchedDirTimes(t *testing.T) {
	testutil.RequiresRoot(t)
	t1 := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
	_, tree := unpackSpec(t, imagegen.Spec{Layers: []imagegen.Layer{
		{Entries: []imagegen.Entry{{Type: imagegen.Dir, Name: "d", ModTime: t1}}},
		{Entries: []imagegen.Entry{
			{Type: imagegen.File, Name: "d/new", Data: []byte("x")},
			{Type: imagegen.File, Name: "a/b/c", Data: []byte("y")},
		}},
	}})
	if e, _ := tree.Find("d"); !e.Mtime.Equal(t1) {
		t.Errorf("d mtime %v, want %v (kept from the layer that defines it)", e.Mtime, t1)
	}
	for _, p := range []string{"a", "a/b"} {
		e, ok := tree.Find(p)
		if !ok || e.Type != fstree.Dir || e.Mode != 0o755 || e.UID != 0 || e.Mtime.Unix() != 0 {
			t.Errorf("implicit parent %s: %v", p, e)
		}
	}
}

func TestUnsafeNamesAreRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, tc := range []struct {
		name    string
		entries []imagegen.Entry
	}{
		{"dotdot", []imagegen.Entry{{Type: imagegen.File, Name: "../escape", Data: []byte("x")}}},
		{"nested dotdot", []imagegen.Entry{{Type: imagegen.File, Name: "a/../../escape", Data: []byte("x")}}},
		{"hardlink dotdot", []imagegen.Entry{{Type: imagegen.Hardlink, Name: "hl", Linkname: "../outside/secret"}}},
		{"whiteout dotdot", []imagegen.Entry{{Type: imagegen.File, Name: "../.wh.outside", Data: []byte{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			root, outside := setupRoot(t, base)
			err := applyEntries(root, tc.entries)
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("err = %v, want ErrUnsafePath", err)
			}
			checkOutside(t, base, outside)
		})
	}
}

// TestAbsoluteNamesAreRelative: as containerd's archive.Apply and Docker
// do (and as the streaming tree does), an absolute name or hard-link target
// is taken relative to the root; nothing outside it is touched.
func TestAbsoluteNamesAreRelative(t *testing.T) {
	testutil.RequiresRoot(t)
	base := t.TempDir()
	root, outside := setupRoot(t, base)
	err := applyEntries(root, []imagegen.Entry{
		{Type: imagegen.File, Name: "/outside/secret", Data: []byte("inside")},
		{Type: imagegen.Hardlink, Name: "/hl", Linkname: "/outside/secret"},
	})
	if err != nil {
		t.Fatal(err)
	}
	checkOutside(t, base, outside)
	for _, p := range []string{"outside/secret", "hl"} {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != "inside" {
			t.Errorf("%s: %q, %v", p, b, err)
		}
	}
}

// Symlinks in the image resolve inside the root while unpacking, however
// they climb: entries below them either land inside or fail.
func TestSymlinksAreContained(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, tc := range []struct {
		name    string
		entries []imagegen.Entry
		inside  string // path below root that must hold the file, if any
	}{
		{"relative climb", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "up", Linkname: "../../../../.."},
			{Type: imagegen.File, Name: "up/pwned", Data: []byte("x")},
		}, "pwned"},
		{"absolute", []imagegen.Entry{
			{Type: imagegen.Dir, Name: "outside"},
			{Type: imagegen.Symlink, Name: "abs", Linkname: "/outside"},
			{Type: imagegen.File, Name: "abs/pwned", Data: []byte("x")},
		}, "outside/pwned"},
		{"absolute to missing dir", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "abs", Linkname: "/outside"},
			{Type: imagegen.File, Name: "abs/pwned", Data: []byte("x")},
		}, ""},
		{"hard link through a symlink", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "up", Linkname: "../.."},
			{Type: imagegen.Hardlink, Name: "hl", Linkname: "up/outside/secret"},
		}, ""},
		{"replace a symlink to outside", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "f", Linkname: "../outside/secret"},
			{Type: imagegen.File, Name: "f", Data: []byte("x")},
		}, "f"},
		{"whiteout through a symlink", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "up", Linkname: "../.."},
			{Type: imagegen.Whiteout, Name: "up/outside"},
		}, ""},
		{"opaque through a symlink", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "up", Linkname: "../../outside"},
			{Type: imagegen.Opaque, Name: "up"},
		}, ""},
		{"chmod a symlink to outside", []imagegen.Entry{
			{Type: imagegen.Symlink, Name: "s", Linkname: "../outside/secret"},
			{Type: imagegen.Hardlink, Name: "s2", Linkname: "s", Mode: 0o777},
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			root, outside := setupRoot(t, base)
			err := applyEntries(root, tc.entries)
			t.Logf("Apply: %v", err)
			if tc.inside != "" {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if b, err := os.ReadFile(filepath.Join(root, tc.inside)); err != nil || string(b) != "x" {
					t.Errorf("%s inside the root: %q, %v", tc.inside, b, err)
				}
			}
			checkOutside(t, base, outside)
		})
	}
}

// setupRoot makes base/root and a secret file next to it.
func setupRoot(t *testing.T, base string) (root, secret string) {
	root = filepath.Join(base, "root")
	os.MkdirAll(root, 0o755)
	os.MkdirAll(filepath.Join(base, "outside"), 0o755)
	secret = filepath.Join(base, "outside", "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return root, secret
}

// checkOutside asserts that nothing beside base/root changed.
func checkOutside(t *testing.T, base, secret string) {
	t.Helper()
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		if e.Name() != "root" && e.Name() != "outside" {
			t.Errorf("%s appeared outside the root", e.Name())
		}
	}
	entries, _ = os.ReadDir(filepath.Join(base, "outside"))
	if len(entries) != 1 {
		t.Errorf("outside/ holds %d entries, want only secret", len(entries))
	}
	st, err := os.Stat(secret)
	if err != nil {
		t.Fatalf("secret: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("secret mode changed to %v", st.Mode())
	}
	if b, _ := os.ReadFile(secret); string(b) != "secret" {
		t.Errorf("secret content changed")
	}
	for _, p := range []string{"/pwned", "/escape", "/outside"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists", p)
		}
	}
}

func applyEntries(root string, entries []imagegen.Entry) error {
	var b bytes.Buffer
	if err := imagegen.LayerTar(&b, imagegen.Layer{Entries: entries}); err != nil {
		return err
	}
	return Apply(context.Background(), root, &b)
}

func TestDiffIDMismatch(t *testing.T) {
	testutil.RequiresRoot(t)
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "f", Data: []byte("x")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	wrong := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	if err := Layer(context.Background(), t.TempDir(), layers[0], wrong); !errors.Is(err, ErrDiffIDMismatch) {
		t.Errorf("err = %v, want ErrDiffIDMismatch", err)
	}
}

// TestDecompressSniffs: the decoder follows the blob's first bytes, as the
// streaming index does, so a mislabelled or unknown media type unpacks the
// same as it streams.
func TestDecompressSniffs(t *testing.T) {
	want := []byte("tar bytes")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(want)
	zw.Close()
	for _, c := range []struct {
		mt   types.MediaType
		blob []byte
	}{
		{types.OCIUncompressedLayer, gz.Bytes()},
		{"application/vnd.example.thing", gz.Bytes()},
		{types.OCILayer, want},
	} {
		r, err := Decompress(c.mt, bytes.NewReader(c.blob))
		if err != nil {
			t.Fatalf("%s: %v", c.mt, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %q, %v; want %q", c.mt, got, err, want)
		}
	}
}

func TestDebianImage(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "debootstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	img, err := imagegen.DebianImage(ctx, "/var/cache/riffle-test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	start := time.Now()
	if err := Image(ctx, dir, img); err != nil {
		t.Fatal(err)
	}
	t.Logf("unpacked in %v", time.Since(start))
	tree, err := fstree.Scan(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries", len(tree))
	if e, ok := tree.Find("usr/bin/bash"); !ok || e.Type != fstree.Regular || e.Mode != 0o755 {
		t.Errorf("usr/bin/bash: %v", e)
	}
	if e, ok := tree.Find("bin"); !ok || e.Type != fstree.Symlink || e.Linkname != "usr/bin" {
		t.Errorf("bin: %v", e)
	}
	if e, ok := tree.Find("dev/null"); !ok || e.Type != fstree.Char || e.Devmajor != 1 || e.Devminor != 3 {
		t.Errorf("dev/null: %v", e)
	}
	if _, ok := tree.Find("etc/issue.net"); ok {
		t.Error("etc/issue.net survived its whiteout")
	}
	if e, ok := tree.Find("usr/bin/perl5.36.0"); !ok || e.Nlink != 2 {
		t.Errorf("usr/bin/perl5.36.0 (hard link): %v", e)
	}
	if e, ok := tree.Find("tmp"); !ok || e.Mode != 0o1777 {
		t.Errorf("tmp: %v", e)
	}
}

// An independent check on real data: the Debian image unpacked here equals
// GNU tar's extraction of the rootfs it was layered from, minus what the
// layering leaves out (apt's lists and debs) and the file its last layer
// deletes.
func TestDebianMatchesGNUTar(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "debootstrap")
	testutil.RequiresBinary(t, "tar")
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	opts := imagegen.DebianOptions{CacheDir: "/var/cache/riffle-test"}
	img, err := imagegen.Debian(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	rootfsTar, err := imagegen.DebianRootfs(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	a, b := t.TempDir(), t.TempDir()
	if err := Image(ctx, a, img); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", rootfsTar, "-C", b).CombinedOutput()
	if err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	st, err := os.Stat(filepath.Join(b, "etc"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(b, "etc/issue.net")); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(filepath.Join(b, "etc"), st.ModTime(), st.ModTime())
	ta, err := fstree.Scan(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := fstree.Scan(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	var diffs []string
	for _, l := range fstree.Diff(ta, tb) {
		if strings.HasPrefix(l, "var/lib/apt/lists") || strings.HasPrefix(l, "var/cache/apt/") {
			continue
		}
		diffs = append(diffs, l)
	}
	if diffs != nil {
		t.Errorf("unpack and GNU tar differ:\n%s", strings.Join(diffs, "\n"))
	}
}

func TestApplyStopsOnCancel(t *testing.T) {
	var b bytes.Buffer
	imagegen.LayerTar(&b, imagegen.Layer{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "f", Size: 1 << 20}}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Apply(ctx, t.TempDir(), &b); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}
