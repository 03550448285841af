package unpack

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// The overlay-mode corner cases, checked the only way that counts: an
// overlay mount of the layers extracted one by one shows what applying
// them in order shows. (The whole feature image is checked in package
// layerstore.)
func TestOverlayModeCornerCases(t *testing.T) {
	testutil.RequiresRoot(t)
	spec := imagegen.Spec{Layers: []imagegen.Layer{
		{Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "d"},
			{Type: imagegen.File, Name: "d/old", Data: []byte("old")},
			{Type: imagegen.Dir, Name: "e"},
			{Type: imagegen.File, Name: "e/lower", Data: []byte("lower")},
			{Type: imagegen.File, Name: "f", Data: []byte("f")},
		}},
		{Entries: []imagegen.Entry{
			// Deleted, then made again in the same layer: nothing of
			// the lower d may show.
			{Type: imagegen.Whiteout, Name: "d"},
			{Type: imagegen.Dir, Name: "d"},
			{Type: imagegen.File, Name: "d/new", Data: []byte("new")},
			// A layer cannot make a directory opaque by carrying the
			// xattr overlayfs reads: only the marker does that.
			{Type: imagegen.Dir, Name: "e", Xattrs: map[string]string{"trusted.overlay.opaque": "y"}},
			{Type: imagegen.File, Name: "e/upper", Data: []byte("upper")},
			// A whiteout of a file replaced in the same layer.
			{Type: imagegen.Whiteout, Name: "f"},
			{Type: imagegen.File, Name: "f", Data: []byte("f2")},
		}},
	}}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	merged := t.TempDir()
	if err := Image(ctx, merged, img); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var lowers []string
	for i, l := range layers {
		dir := filepath.Join(t.TempDir(), "layer")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		err = ApplyWith(ctx, dir, rc, ApplyOptions{Overlay: true})
		rc.Close()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		lowers = append([]string{dir}, lowers...)
	}
	target := t.TempDir()
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(target, 0)
	a, err := fstree.Scan(ctx, merged)
	if err != nil {
		t.Fatal(err)
	}
	b, err := fstree.Scan(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	// The merged apply writes the xattr as given; overlayfs hides its own.
	if d := fstree.Diff(a, b, fstree.IgnoreDirNlink(), fstree.IgnoreXattrs("trusted.overlay.opaque")); d != nil {
		t.Errorf("overlay differs from the merged apply:\n%s", strings.Join(d, "\n"))
	}
	if _, ok := b.Find("e/lower"); !ok {
		t.Error("e/lower is hidden: the layer's trusted.overlay.opaque xattr was applied")
	}
	if _, ok := b.Find("d/old"); ok {
		t.Error("d/old shows through the directory made after its whiteout")
	}
}
