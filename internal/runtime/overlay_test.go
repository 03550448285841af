package runtime

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// manyLayers is the number of layers of the image in TestRunManyLayers:
// with layer-store paths, far more than mount(2)'s one page of options holds.
const manyLayers = 80

// manyLayerSpec is a busybox image of manyLayers layers: the bottom one
// holds busybox and files that higher layers delete (a whiteout in layer
// 40 for a file and a directory, an opaque directory there too), each
// middle layer adds /layers/NN.txt, and the top layer adds /data/top.txt.
func manyLayerSpec(t *testing.T) imagegen.Spec {
	t.Helper()
	spec, err := imagegen.Busybox(testutil.RequiresBinary(t, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	base := spec.Layers[0]
	base.Entries = append(base.Entries,
		imagegen.Entry{Type: imagegen.File, Name: "data/bottom.txt", Data: []byte("bottom\n")},
		imagegen.Entry{Type: imagegen.File, Name: "data/gone.txt", Data: []byte("deleted above\n")},
		imagegen.Entry{Type: imagegen.Dir, Name: "gonedir"},
		imagegen.Entry{Type: imagegen.File, Name: "gonedir/f", Data: []byte("deleted above\n")},
		imagegen.Entry{Type: imagegen.Dir, Name: "opq"},
		imagegen.Entry{Type: imagegen.File, Name: "opq/old.txt", Data: []byte("hidden above\n")},
	)
	layers := []imagegen.Layer{base}
	for i := 1; i < manyLayers-1; i++ {
		l := imagegen.Layer{Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "layers"},
			{Type: imagegen.File, Name: fmt.Sprintf("layers/%02d.txt", i), Data: []byte(fmt.Sprintf("layer %d\n", i))},
		}}
		if i == 40 {
			l.Entries = append(l.Entries,
				imagegen.Entry{Type: imagegen.Whiteout, Name: "data/gone.txt"},
				imagegen.Entry{Type: imagegen.Whiteout, Name: "gonedir"},
				imagegen.Entry{Type: imagegen.Dir, Name: "opq"},
				imagegen.Entry{Type: imagegen.Opaque, Name: "opq"},
				imagegen.Entry{Type: imagegen.File, Name: "opq/new.txt", Data: []byte("new\n")},
			)
		}
		layers = append(layers, l)
	}
	layers = append(layers, imagegen.Layer{Entries: []imagegen.Entry{
		{Type: imagegen.Dir, Name: "data"},
		{Type: imagegen.File, Name: "data/top.txt", Data: []byte("top\n")},
	}})
	spec.Layers = layers
	return spec
}

// pullLayers pushes spec to an in-process registry, pulls it into a layer
// store as a node does for a settled or pulled image, and returns its
// lower directories, top-most first.
func pullLayers(t *testing.T, spec imagegen.Spec) []string {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.New(ctx, registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(reg)
	t.Cleanup(func() { srv.Close(); reg.Close() })
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	c := remote.New(remote.Options{Timeout: time.Minute})
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/many:v1"
	if err := c.Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	rimg, err := c.Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := layerstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pull.Layers(ctx, c, rimg, s, 0); err != nil {
		t.Fatal(err)
	}
	return pull.LowerDirs(s, rimg)
}

// TestRunManyLayers runs a container on an image of 80 layers, whose
// lowerdir option would not fit mount(2)'s page: files of the bottom, a
// middle and the top layer are visible, and whiteouts and an opaque
// directory in a middle layer hide what lies below them.
func TestRunManyLayers(t *testing.T) {
	f := newFixture(t)
	if !hasLowerdirAdd() {
		t.Fatal("this kernel's overlayfs has no lowerdir+ (Linux 6.8): an image of 80 layers cannot start")
	}
	lower := pullLayers(t, manyLayerSpec(t))
	if len(lower) != manyLayers {
		t.Fatalf("%d lower directories, want %d", len(lower), manyLayers)
	}
	if n := len(legacyOverlayOptions(lower, f.root, f.root)); n < os.Getpagesize() {
		t.Fatalf("the options take %d bytes: the test does not exceed a page", n)
	}
	s := f.spec(`cat /data/bottom.txt /layers/01.txt /layers/40.txt /layers/78.txt /data/top.txt
ls /opq; ls /layers | wc -l
for p in /data/gone.txt /gonedir /opq/old.txt; do test -e $p && echo $p is visible; done
/bin/busybox true && echo ran`)
	s.Lower = lower
	want := fmt.Sprintf("bottom\nlayer 1\nlayer 40\nlayer 78\ntop\nnew.txt\n%d\nran\n", manyLayers-2)
	if code, out := f.run(t, s); code != 0 || out != want {
		t.Errorf("got %d %q, want 0 %q", code, out, want)
	}
}

// TestOverlayLongLowerPath mounts a lower directory whose path is longer
// than fsconfig takes as a string: it goes as a file descriptor.
func TestOverlayLongLowerPath(t *testing.T) {
	testutil.RequiresRoot(t)
	base := t.TempDir()
	long := filepath.Join(base, strings.Repeat("d", 200), strings.Repeat("e", 200))
	must(t, os.MkdirAll(long, 0o755))
	must(t, os.WriteFile(filepath.Join(long, "f"), []byte("deep\n"), 0o644))
	upper, work, target := filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{upper, work, target} {
		must(t, os.Mkdir(d, 0o755))
	}
	must(t, mountOverlay([]string{long}, upper, work, target))
	t.Cleanup(func() { must(t, unmount(target)) })
	if data, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(data) != "deep\n" {
		t.Errorf("read through the overlay: %q, %v", data, err)
	}
}

// TestOverlayVolatile: a task's overlay is mounted volatile, so that its
// unmount does not sync the filesystem holding the upper directory (and
// the node's layer store and cache beside it).
func TestOverlayVolatile(t *testing.T) {
	testutil.RequiresRoot(t)
	if !hasLowerdirAdd() {
		t.Skip("the mount(2) fallback of kernels before 6.8 mounts without volatile")
	}
	base := t.TempDir()
	lower, upper, work, target := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{lower, upper, work, target} {
		must(t, os.Mkdir(d, 0o755))
	}
	must(t, mountOverlay([]string{lower}, upper, work, target))
	t.Cleanup(func() { must(t, unmount(target)) })
	info, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for _, line := range strings.Split(string(info), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[4] != target {
			continue
		}
		// Linux 6.x shows it as fsync=volatile.
		if super := strings.Split(fields[len(fields)-1], ","); !slices.Contains(super, "volatile") && !slices.Contains(super, "fsync=volatile") {
			t.Errorf("overlay options %q, want volatile", super)
		}
		return
	}
	t.Fatalf("%s is not in mountinfo", target)
}

// TestLegacyOverlay checks the mount(2) fallback of kernels without
// lowerdir+: it stacks a few layers, and refuses more than a page of
// options with an error that says so instead of mounting something else.
func TestLegacyOverlay(t *testing.T) {
	testutil.RequiresRoot(t)
	base := t.TempDir()
	var lower []string
	for i := 0; i < 2; i++ {
		d := filepath.Join(base, fmt.Sprint("l", i))
		must(t, os.Mkdir(d, 0o755))
		must(t, os.WriteFile(filepath.Join(d, fmt.Sprint("f", i)), []byte("x"), 0o644))
		lower = append(lower, d)
	}
	upper, work, target := filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	for _, d := range []string{upper, work, target} {
		must(t, os.Mkdir(d, 0o755))
	}
	must(t, legacyMountOverlay(lower, upper, work, target))
	for _, name := range []string{"f0", "f1"} {
		if _, err := os.Stat(filepath.Join(target, name)); err != nil {
			t.Error(err)
		}
	}
	must(t, unmount(target))

	long := make([]string, manyLayers)
	for i := range long {
		long[i] = filepath.Join(base, "sha256", strings.Repeat(fmt.Sprintf("%x", i%16), 64), "fs")
	}
	err := legacyMountOverlay(long, upper, work, target)
	if err == nil || !strings.Contains(err.Error(), "more than a page") {
		t.Errorf("legacy mount of %d long lower directories: %v, want the page error", len(long), err)
	}
	if m, _ := mountsUnder(target); len(m) > 0 {
		t.Errorf("something was mounted: %q", m)
	}
}
