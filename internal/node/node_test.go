package node_test

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// testRegistry serves the real registry in-process, counting requests
// for layer indexes' inputs (blob GETs) so tests can see what a node
// fetched.
type testRegistry struct {
	url       string
	blobGets  atomic.Int64
	manifests atomic.Int64
	// beforeBlob, when set, runs before the registry serves a blob GET.
	beforeBlob atomic.Pointer[func(*http.Request)]
}

func newRegistry(t *testing.T) *testRegistry {
	t.Helper()
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	tr := &testRegistry{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			tr.blobGets.Add(1)
			if f := tr.beforeBlob.Load(); f != nil {
				(*f)(r)
			}
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			tr.manifests.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tr.url = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

// push pushes a generated image with every tar feature and returns its
// reference.
func (tr *testRegistry) push(t *testing.T, repo string, spec imagegen.Spec) string {
	t.Helper()
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	ref := tr.url + "/" + repo + ":v1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// newIndexService starts an index service with small spans, closed when
// the test ends.
func newIndexService(t *testing.T) *indexsvc.Service {
	t.Helper()
	svc, err := indexsvc.New(t.TempDir(), remote.New(remote.Options{}), indexsvc.Options{SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

func newNode(t *testing.T, root string, tune func(*node.Options)) *node.Node {
	t.Helper()
	o := node.Options{Layout: node.Layout{Root: root}}
	if tune != nil {
		tune(&o)
	}
	n, err := node.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNewNeedsAbsoluteRoot(t *testing.T) {
	for _, root := range []string{"", "relative/dir"} {
		if _, err := node.New(node.Options{Layout: node.Layout{Root: root}}); err == nil || !strings.Contains(err.Error(), "absolute") {
			t.Errorf("root %q: err = %v, want one saying it must be absolute", root, err)
		}
	}
}

// A data directory given through a symbolic link is used by its real
// path: runc refuses a container root under a link ("invalid rootfs: not
// an absolute path, or a symlink"), which is what riffle run printed.
func TestRootBehindSymlink(t *testing.T) {
	real, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "data")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Options{Layout: node.Layout{Root: link}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if got, want := n.Layout().Root, real; got != want {
		t.Errorf("Layout().Root = %s, want the real directory %s", got, want)
	}
}

// TestRootNotADirectory checks that a data directory that is a link to
// nothing, or a file, is refused saying so, and nothing is created.
func TestRootNotADirectory(t *testing.T) {
	dir := t.TempDir()
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink(filepath.Join(dir, "gone", "data"), dangling); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ root, want string }{
		{dangling, "is a symbolic link to " + filepath.Join(dir, "gone", "data") + ", which does not exist"},
		{file, file + " is not a directory"},
	} {
		_, err := node.New(node.Options{Layout: node.Layout{Root: tc.root}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("node.New(%s) = %v, want an error saying %q", tc.root, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the link's target directory was created: %v", err)
	}
}

func TestLayoutPaths(t *testing.T) {
	l := node.Layout{Root: "/data"}
	seen := map[string]string{}
	for what, p := range map[string]string{
		"cache": l.Cache(), "layers": l.Layers(), "flat": l.Flat(), "mounts": l.Mounts(),
		"profiles": l.Profiles(), "registry": l.Registry(), "indexes": l.Indexes(), "runtime": l.Runtime(),
	} {
		if !strings.HasPrefix(p, "/data/") {
			t.Errorf("%s: %s is outside the root", what, p)
		}
		if other, dup := seen[p]; dup {
			t.Errorf("%s and %s share %s", what, other, p)
		}
		seen[p] = what
	}
}

// TestWarmNodeFetchesNoIndex checks the node-side index and config cache:
// a second node process on the same data directory mounts the image
// fetching only the manifest, no blob (indexes are built from blobs, and
// the config is a blob).
func TestWarmNodeFetchesNoIndex(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	root := t.TempDir()
	ctx := context.Background()

	// No background layer streams: only index fetches are counted.
	quiet := func(o *node.Options) { o.Mount.NoBackground = true }
	n := newNode(t, root, quiet)
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if rfs.Method != node.MethodStreamed || rfs.Reused {
		t.Fatalf("first stream: method %q reused %v", rfs.Method, rfs.Reused)
	}
	if tr.blobGets.Load() == 0 {
		t.Fatal("the cold node built its indexes without reading any blob")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	before := tr.blobGets.Load()
	n = newNode(t, root, quiet)
	defer n.Close()
	rfs, err = n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	// The config is in the node cache too: the manifest is all it asks for.
	if got := tr.blobGets.Load() - before; got != 0 {
		t.Errorf("warm node made %d blob GETs to mount; want none (indexes and config are in its cache)", got)
	}
	if _, err := os.ReadDir(rfs.Lower[0]); err != nil {
		t.Fatal(err)
	}
}

// TestCloseEndsStreams checks the node's lifetime: Close unmounts what
// Stream mounted, and nothing can be pulled or mounted after it.
func TestCloseEndsStreams(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	root := t.TempDir()
	ctx := context.Background()
	n := newNode(t, root, nil)
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || again.Lower[0] != rfs.Lower[0] {
		t.Errorf("second stream of one image: reused %v at %v, want the first mount %v", again.Reused, again.Lower, rfs.Lower)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(rfs.Lower[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point %s after Close: %v, want it removed", rfs.Lower[0], err)
	}
	if _, err := n.Stream(ctx, ref, node.Auth{}); !errors.Is(err, node.ErrClosed) {
		t.Errorf("Stream after Close: %v, want ErrClosed", err)
	}
	if _, err := n.Pull(ctx, ref, node.Auth{}); !errors.Is(err, node.ErrClosed) {
		t.Errorf("Pull after Close: %v, want ErrClosed", err)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "images", "mounts"))
	if len(ents) != 0 {
		t.Errorf("mount points left: %v", ents)
	}
}

// TestCallerGivingUpDoesNotFailOthers: a pull shared by two callers goes
// on when the caller that started it gives up.
func TestCallerGivingUpDoesNotFailOthers(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	n := newNode(t, t.TempDir(), nil)
	defer n.Close()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Pull(gone, ref, node.Auth{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("pull with a cancelled context: %v", err)
	}
	rfs, err := n.Pull(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rfs.Lower[len(rfs.Lower)-1], "bin")); err != nil {
		t.Errorf("pulled tree: %v", err)
	}
}

// smallSpec is a two-layer gzip image: streamable, quick to pull.
func smallSpec() imagegen.Spec {
	return imagegen.Spec{Layers: []imagegen.Layer{
		{Compression: imagegen.Gzip, Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "bin"},
			{Type: imagegen.File, Name: "bin/tool", Mode: 0o755, Size: 300 << 10, Seed: 1},
		}},
		{Compression: imagegen.Gzip, Entries: []imagegen.Entry{
			{Type: imagegen.Dir, Name: "data"},
			{Type: imagegen.File, Name: "data/a.bin", Size: 2 << 20, Seed: 2},
		}},
	}}
}

// TestPulledImageStreamsSettled: once every layer of an image is in the
// layer store, Stream serves it as overlayfs over the layer directories,
// with no FUSE mount, and a second Pull fetches nothing.
func TestPulledImageStreamsSettled(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	root := t.TempDir()
	reg := prometheus.NewRegistry()
	n := newNode(t, root, func(o *node.Options) { o.Metrics = reg })
	defer n.Close()
	ctx := context.Background()
	pulled, err := n.Pull(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if pulled.Method != node.MethodPulled || pulled.Reused || pulled.Fetched == 0 || len(pulled.Lower) != 2 {
		t.Fatalf("pull: %+v", pulled)
	}
	// The two files' data and their tar headers, uncompressed.
	if min := int64(2<<20 + 300<<10); pulled.Extracted < min {
		t.Errorf("pull extracted %d bytes, want at least %d", pulled.Extracted, min)
	}
	if v := counter(t, reg, "riffle_node_pulled_wire_bytes_total"); v != float64(pulled.Fetched) {
		t.Errorf("riffle_node_pulled_wire_bytes_total = %v, want %d", v, pulled.Fetched)
	}
	if v := counter(t, reg, "riffle_node_pulled_uncompressed_bytes_total"); v != float64(pulled.Extracted) {
		t.Errorf("riffle_node_pulled_uncompressed_bytes_total = %v, want %d", v, pulled.Extracted)
	}
	again, err := n.Pull(ctx, ref, node.Auth{})
	if err != nil || !again.Reused {
		t.Fatalf("second pull: %+v, %v", again, err)
	}
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if rfs.Method != node.MethodSettled || strings.Join(rfs.Lower, ":") != strings.Join(pulled.Lower, ":") {
		t.Fatalf("stream of a pulled image: method %q lower %v, want settled on %v", rfs.Method, rfs.Lower, pulled.Lower)
	}
	for _, d := range rfs.Lower {
		if !strings.HasPrefix(d, filepath.Join(root, "layers")+"/") {
			t.Errorf("lower dir %s is not in the layer store", d)
		}
	}
	if _, err := os.Stat(filepath.Join(rfs.Lower[0], "data", "a.bin")); err != nil {
		t.Errorf("top layer: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "images", "mounts")); len(ents) != 0 {
		t.Errorf("a settled image was mounted: %v", ents)
	}
}

// TestStreamSettlesAndLearns follows an image through the node's life:
// the first stream mounts it and its layers stream into the layer store in
// the background; once they are there the image is settled (overlayfs
// over the layers, the FUSE mount gone with its last user, spans dropped
// from the cache); the first task's startup profile was reported, and a
// new node streaming the image prefetches it.
func TestStreamSettlesAndLearns(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	ctx := context.Background()
	svc := newIndexService(t)
	tune := func(o *node.Options) { o.Indexes, o.Profiles = svc, svc }

	n := newNode(t, t.TempDir(), tune)
	defer n.Close()
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if rfs.Method != node.MethodStreamed {
		t.Fatalf("first stream: %q", rfs.Method)
	}
	// The task reads one file, then ends.
	if _, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin")); err != nil {
		t.Fatal(err)
	}
	rfs.Release()

	// The layers settle in the background; wait for it (bounded).
	var settled *node.RootFS
	for range 600 {
		s, err := n.Stream(ctx, ref, node.Auth{})
		if err != nil {
			t.Fatal(err)
		}
		s.Release()
		if s.Method == node.MethodSettled {
			settled = s
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if settled == nil {
		t.Fatal("the image did not settle within 30 s")
	}
	b, err := os.ReadFile(filepath.Join(settled.Lower[0], "data", "a.bin"))
	if err != nil || len(b) != 2<<20 {
		t.Fatalf("settled layer: %d bytes, %v", len(b), err)
	}
	// The FUSE mount went with its last user.
	for range 100 {
		if ents, _ := os.ReadDir(filepath.Join(n.Layout().Mounts())); len(ents) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ents, _ := os.ReadDir(n.Layout().Mounts()); len(ents) != 0 {
		t.Errorf("mount points left after settling: %v", ents)
	}

	// The profile of the first task was reported for the data layer.
	img, err := remote.New(remote.Options{}).Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	var profiled int
	for range 100 {
		profiled = 0
		for _, l := range img.Manifest.Layers {
			if lp, err := svc.Profile(ctx, l.Digest); err == nil && len(lp.Spans) > 0 {
				profiled++
			}
		}
		if profiled > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if profiled == 0 {
		t.Fatal("no startup profile was reported")
	}

	// A new node (cold cache and store) prefetches the profile.
	n2 := newNode(t, t.TempDir(), func(o *node.Options) {
		tune(o)
		o.Mount.NoBackground = true // only the profile and reads fetch
	})
	defer n2.Close()
	rfs, err = n2.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer rfs.Release()
	// Nothing reads: whatever the mount fetches is the profile.
	var st streamfs.Stats
	for range 200 {
		if st = rfs.Stats(); st.ProfileSpans > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.ProfileSpans == 0 {
		t.Errorf("the second node prefetched no profile span: %+v", st)
	}
}

// TestStreamWithoutBackground checks the per-job switch: a mount made
// WithoutBackground fetches only what is read, its layers say so, and it
// never settles; the same image mounted by default on another node does.
func TestStreamWithoutBackground(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	ctx := context.Background()

	n := newNode(t, t.TempDir(), nil)
	defer n.Close()
	rfs, err := n.Stream(ctx, ref, node.Auth{}, node.WithoutBackground())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin")); err != nil {
		t.Fatal(err)
	}
	st := rfs.Stats()
	if st.BackgroundWireBytes != 0 {
		t.Errorf("background streams fetched %d bytes", st.BackgroundWireBytes)
	}
	for _, l := range st.Layers {
		if l.State != streamfs.LayerOff {
			t.Errorf("layer %s: background state %q, want %q", l.Digest, l.State, streamfs.LayerOff)
		}
	}
	if err := rfs.WaitSettled(ctx); !errors.Is(err, node.ErrNotSettling) {
		t.Errorf("WaitSettled: %v, want ErrNotSettling", err)
	}
	cc, err := n.Cache()
	if err != nil {
		t.Fatal(err)
	}
	read := cache.SpanKey(st.Layers[1].Digest, 0) // a.bin's first span
	if !cc.Has(read) {
		t.Fatalf("the span of a.bin read is not in the node cache")
	}

	// A task that shares the mount while it is in use gets it as it is.
	shared, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if !shared.Reused {
		t.Errorf("a mount in use was not shared")
	}
	shared.Release()
	rfs.Release()

	// Once nobody uses it, a task that wants the background stream (the
	// default) gets a new mount, which settles, and the spans read
	// before are dropped from the cache: their data is in the layer
	// store now.
	rfs2, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer rfs2.Release()
	if rfs2.Reused {
		t.Errorf("the idle mount without a background stream was reused by a task that wants one")
	}
	if err := rfs2.WaitSettled(ctx); err != nil {
		t.Fatalf("new mount: WaitSettled: %v", err)
	}
	if cc.Has(read) {
		t.Errorf("a.bin's span is still in the node cache after the image settled")
	}
	if b, err := os.ReadFile(filepath.Join(rfs2.Lower[0], "data", "a.bin")); err != nil || len(b) != 2<<20 {
		t.Errorf("read through the new mount: %d bytes, %v", len(b), err)
	}
}

// TestNodeTakesIndexesFromReferrers: a node told to look for index
// artifacts beside images (Options.Referrers) streams an image whose
// indexes only its registry has, as a referrer artifact, without building
// them; the same node without Referrers finds none.
func TestNodeTakesIndexesFromReferrers(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	ctx := context.Background()
	if _, err := newIndexService(t).PushReferrer(ctx, ref); err != nil {
		t.Fatal(err)
	}

	without := newNode(t, t.TempDir(), func(o *node.Options) { o.NoBuildIndexes = true })
	defer without.Close()
	if _, err := without.Stream(ctx, ref, node.Auth{}); !errors.Is(err, streamfs.ErrNotEligible) {
		t.Fatalf("a node with no index source: %v, want the image not eligible", err)
	}

	n := newNode(t, t.TempDir(), func(o *node.Options) { o.NoBuildIndexes, o.Referrers = true, true })
	defer n.Close()
	rfs, err := n.Stream(ctx, ref, node.Auth{}, node.WithoutBackground())
	if err != nil {
		t.Fatal(err)
	}
	defer rfs.Release()
	if rfs.Method != node.MethodStreamed {
		t.Fatalf("method %q, want streamed", rfs.Method)
	}
	b, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin"))
	if err != nil || len(b) != 2<<20 {
		t.Fatalf("read a.bin: %d bytes, %v", len(b), err)
	}
}
