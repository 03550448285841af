package streamfs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// featureMount mounts the gzip form of AllFeatures with 64 KiB spans.
func featureMount(t *testing.T, opts streamfs.Options) (*testRegistry, *streamfs.MountPoint, string) {
	r, m, dir, _ := featureMountImage(t, opts)
	return r, m, dir
}

func featureMountImage(t *testing.T, opts streamfs.Options) (*testRegistry, *streamfs.MountPoint, string, streamfs.Image) {
	t.Helper()
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	_, ref := r.push(t, imagegen.AllFeatures().Docker(), "test/features")
	if opts.Cache == nil {
		opts.Cache = newCache(t)
	}
	img := r.open(t, ref, 64<<10)
	m, dir := mount(t, img, opts)
	return r, m, dir, img
}

// spansOf returns how many spans of layer l hold the data of file name.
func spansOf(t *testing.T, l streamfs.Layer, name string) int64 {
	for _, e := range l.Entries() {
		if e.Name != name {
			continue
		}
		n := int64(0)
		for _, s := range l.Spans() {
			if s.Offset < e.Offset+e.Size && s.Offset+s.Size > e.Offset {
				n++
			}
		}
		return n
	}
	t.Fatalf("%s is not in the layer", name)
	return 0
}

func contentOf(seed uint64, size int64) []byte {
	b, _ := io.ReadAll(imagegen.Content(seed, size, imagegen.Mixed))
	return b
}

func TestOverlayOnTop(t *testing.T) {
	_, _, lower := featureMount(t, streamfs.Options{})
	base := t.TempDir()
	upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount overlay: %v", err)
		}
	})
	big := contentOf(2, 3<<20)
	got, err := os.ReadFile(filepath.Join(merged, "data/big.bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read data/big.bin through overlay: %v (equal %v)", err, bytes.Equal(got, big))
	}
	// Copy-up of a lower file, a new file, a deletion.
	f, err := os.OpenFile(filepath.Join(merged, "data/small.bin"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("appended")
	f.Close()
	if err := os.WriteFile(filepath.Join(merged, "new.txt"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(merged, "etc/hostname")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(merged, "data/small.bin")); !bytes.Equal(b, append(contentOf(1, 1000), "appended"...)) {
		t.Error("copied-up data/small.bin has the wrong content")
	}
	if b, _ := os.ReadFile(filepath.Join(merged, "links/hard-small")); len(b) != 1000 && len(b) != 1008 {
		t.Errorf("links/hard-small has %d bytes", len(b))
	}
	if _, err := os.Stat(filepath.Join(merged, "etc/hostname")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("etc/hostname after rm: %v", err)
	}
	// The lower mount is unchanged and read-only.
	if b, _ := os.ReadFile(filepath.Join(lower, "data/small.bin")); !bytes.Equal(b, contentOf(1, 1000)) {
		t.Error("the lower data/small.bin changed")
	}
	if _, err := os.Stat(filepath.Join(lower, "etc/hostname")); err != nil {
		t.Errorf("lower etc/hostname: %v", err)
	}
	if err := os.WriteFile(filepath.Join(lower, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("creating a file in the mount: %v, want EROFS", err)
	}
	// The capability survives into the overlay.
	buf := make([]byte, 64)
	n, err := unix.Getxattr(filepath.Join(merged, "bin/tool"), "security.capability", buf)
	if err != nil || string(buf[:n]) != imagegen.CapNetBindService {
		t.Errorf("security.capability through overlay: %v", err)
	}
}

func TestConcurrentReadsFetchOnce(t *testing.T) {
	r, m, dir, img := featureMountImage(t, streamfs.Options{})
	want := sha256.Sum256(contentOf(2, 3<<20))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := os.ReadFile(filepath.Join(dir, "data/big.bin"))
			if err != nil || sha256.Sum256(b) != want {
				t.Errorf("read: %v", err)
			}
		}()
	}
	wg.Wait()
	st := m.Stats()
	n := spansOf(t, img.Layers[0], "data/big.bin")
	if st.FetchedSpans != n || r.rangeRequests.Load() != n {
		t.Errorf("fetched %d spans in %d requests; the file lies in %d", st.FetchedSpans, r.rangeRequests.Load(), n)
	}
	t.Logf("%d spans: %+v", n, st)
}

func TestCorruptSpanIsRetried(t *testing.T) {
	r, m, dir := featureMount(t, streamfs.Options{NoPrefetch: true})
	r.corrupt.Store(1)
	b, err := os.ReadFile(filepath.Join(dir, "data/random.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := io.ReadAll(imagegen.Content(3, 600<<10, imagegen.Random)); !bytes.Equal(b, want) {
		t.Fatal("wrong bytes after a corrupted span")
	}
	if st := m.Stats(); st.Corrupt != 1 {
		t.Errorf("Corrupt = %d, want 1", st.Corrupt)
	}
}

func TestCorruptRegistryGivesEIO(t *testing.T) {
	r, m, dir := featureMount(t, streamfs.Options{NoPrefetch: true, ReadTimeout: 5 * time.Second})
	r.corrupt.Store(1 << 30)
	p := filepath.Join(dir, "data/big.bin")
	_, err := os.ReadFile(p)
	if !errors.Is(err, unix.EIO) {
		t.Fatalf("read from a corrupting registry: %v, want EIO", err)
	}
	if st := m.Stats(); st.Corrupt < 3 || st.FetchedSpans != 0 {
		t.Errorf("stats %+v: want >= 3 corrupt fetches and none accepted", st)
	}
	// Nothing wrong was cached: a healthy registry serves the right bytes.
	r.corrupt.Store(0)
	b, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(b, contentOf(2, 3<<20)) {
		t.Fatalf("read after the registry healed: %v", err)
	}
}

// TestRegistryDeathAndRecovery reads while the registry stalls and while
// it is dead (EIO within the bound, cached data still served), then again
// once it is back.
//
// The files it reads lie in small spans (at most 256 KiB): recovery
// must fetch them within the same short ReadTimeout that bounds the
// failures. data/big.bin and data/random.bin start in a 3.2 MB span
// (1.6 MB of gzip), whose fetch, inflation and check took 0.6 to 2.4 s
// under -race on a loaded machine, so their recovery read failed now
// and then.
func TestRegistryDeathAndRecovery(t *testing.T) {
	const timeout = 2 * time.Second
	r, _, dir := featureMount(t, streamfs.Options{NoPrefetch: true, ReadTimeout: timeout})
	// Warm one file: it must keep working while the registry is away.
	if _, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err != nil {
		t.Fatal(err)
	}
	readTimed := func(name string) (time.Duration, []byte, error) {
		start := time.Now()
		b, err := os.ReadFile(filepath.Join(dir, name))
		return time.Since(start), b, err
	}
	// A read(2) may take two ReadTimeouts: the kernel retries a failed
	// readahead page once (see Options.ReadTimeout).
	const bound = 2*timeout + 3*time.Second
	check := func(what, name string) {
		t.Helper()
		d, _, err := readTimed(name)
		if !errors.Is(err, unix.EIO) {
			t.Errorf("%s: read %s: %v, want EIO", what, name, err)
		}
		if d > bound {
			t.Errorf("%s: read took %v, bound is %v", what, d, bound)
		}
		t.Logf("%s: EIO after %v", what, d)
	}

	r.stall.Store(true) // accepts, never answers
	check("stalled registry", "data/zstd-payload.bin")
	r.stall.Store(false)

	r.kill() // connection refused
	check("dead registry", "dup/b.bin")
	if b, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err != nil || string(b) != "ID=riffle-test\n" {
		t.Errorf("cached file while the registry is dead: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data/multi.bin")); err != nil {
		t.Errorf("stat while the registry is dead: %v", err)
	}

	r.revive()
	for _, name := range []string{"data/zstd-payload.bin", "dup/b.bin"} {
		if d, _, err := readTimed(name); err != nil {
			t.Errorf("after the registry returned: read %s: %v (after %v)", name, err, d)
		}
	}
	if _, b, err := readTimed("data/zstd-payload.bin"); err != nil || !bytes.Equal(b, contentOf(6, 300<<10)) {
		t.Errorf("data/zstd-payload.bin after the registry returned: %v (content equal %v)", err, bytes.Equal(b, contentOf(6, 300<<10)))
	}
}

func TestMetadataNeedsNoNetwork(t *testing.T) {
	r, m, dir := featureMount(t, streamfs.Options{})
	r.kill()
	tree := scanNoContent(t, dir)
	if len(tree) < 50 {
		t.Errorf("only %d entries", len(tree))
	}
	if st := m.Stats(); st.FetchErrors != 0 || st.FetchedSpans != 0 {
		t.Errorf("metadata walk touched the registry: %+v", st)
	}
}

// scanNoContent does stat, readdir, readlink and listxattr/getxattr on
// every path, reading no file content.
func scanNoContent(t *testing.T, root string) []string {
	var paths []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, p)
		if fi.Mode()&os.ModeSymlink != 0 {
			if _, err := os.Readlink(p); err != nil {
				return err
			}
		}
		sz, err := unix.Llistxattr(p, nil)
		if err != nil {
			return err
		}
		buf := make([]byte, sz)
		n, _ := unix.Llistxattr(p, buf)
		for _, name := range strings.Split(string(buf[:n]), "\x00") {
			if name != "" {
				if _, err := unix.Lgetxattr(p, name, nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

func TestNotEligible(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	_, ref := r.push(t, imagegen.AllFeatures().Docker(), "test/noindex")
	_, _, err := streamfs.Open(context.Background(), r.client(), ref, streamfs.OpenOptions{})
	var ne *streamfs.NotEligibleError
	if !errors.Is(err, streamfs.ErrNotEligible) || !errors.As(err, &ne) || ne.Layer == "" || !strings.Contains(ne.Reason, "no index") {
		t.Errorf("Open without indexes: %v", err)
	}
	// A layer without an index never yields a half-mounted image.
	img := r.open(t, ref, 0)
	img.Layers[2] = nil
	dir := t.TempDir()
	if _, err := streamfs.Mount(context.Background(), dir, img, streamfs.Options{Cache: newCache(t)}); !errors.Is(err, streamfs.ErrNotEligible) {
		t.Errorf("Mount with a missing layer index: %v", err)
	}
	if isMountPoint(t, dir) {
		t.Error("something is mounted")
	}
}

func TestSingleZstdFrameNotEligible(t *testing.T) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	spec := imagegen.AllFeatures()
	spec.Layers = append(spec.Layers, imagegen.Layer{Compression: imagegen.Zstd, Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "one-frame.bin", Size: 8 << 20, Seed: 9},
	}})
	_, ref := r.push(t, spec, "test/oneframe")
	_, _, err := streamfs.Open(context.Background(), r.client(), ref, streamfs.OpenOptions{Build: true})
	var ne *streamfs.NotEligibleError
	if !errors.As(err, &ne) || !errors.Is(err, streamfs.ErrNotEligible) || !strings.Contains(ne.Reason, "single") {
		t.Fatalf("Open: %v, want a NotEligibleError about the single frame", err)
	}
	t.Log(err)
}

func isMountPoint(t *testing.T, dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " "+dir+" ")
}

func TestMetrics(t *testing.T) {
	_, m, dir := featureMount(t, streamfs.Options{})
	if _, err := os.ReadFile(filepath.Join(dir, "data/big.bin")); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["mount"] != dir || !strings.Contains(labels["image"], "test/features") {
				t.Errorf("%s labels %v", mf.GetName(), labels)
			}
		}
	}
	for _, n := range []string{"riffle_streamfs_fetched_bytes_total", "riffle_streamfs_fetched_spans_total", "riffle_streamfs_cache_hits_total", "riffle_streamfs_cache_misses_total", "riffle_streamfs_fetch_seconds"} {
		if !got[n] {
			t.Errorf("%s missing", n)
		}
	}
}

func TestStatfsAndReadOnly(t *testing.T) {
	_, _, dir := featureMount(t, streamfs.Options{})
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&unix.ST_RDONLY == 0 || st.Blocks == 0 || st.Files == 0 {
		t.Errorf("statfs %+v", st)
	}
	if err := os.Chmod(filepath.Join(dir, "data/small.bin"), 0o777); !errors.Is(err, unix.EROFS) {
		t.Errorf("chmod: %v", err)
	}
	out, err := exec.Command("sh", "-c", "echo x > "+filepath.Join(dir, "data/small.bin")).CombinedOutput()
	if err == nil {
		t.Errorf("writing succeeded: %s", out)
	}
}

// A file open the cached way keeps later opens cached until it is closed
// (the kernel refuses to mix them); then opens switch to passthrough, for
// every name of a hard-linked inode.
func TestPassthroughSwitchesWhenIdle(t *testing.T) {
	c := newCache(t)
	_, m, dir, img := featureMountImage(t, streamfs.Options{Cache: c})
	var dgst string
	for _, e := range img.Layers[0].Entries() {
		if e.Name == "data/multi.bin" {
			dgst = e.Digest.String()
		}
	}
	want := contentOf(4, 5000)
	read := func(f *os.File) {
		t.Helper()
		b := make([]byte, 6000)
		n, err := f.ReadAt(b, 0)
		if (err != nil && err != io.EOF) || !bytes.Equal(b[:n], want) {
			t.Fatalf("read %s: %v (%d bytes)", f.Name(), err, n)
		}
	}
	f1, err := os.Open(filepath.Join(dir, "data/multi.bin"))
	if err != nil {
		t.Fatal(err)
	}
	read(f1) // promotes the file
	deadline := time.Now().Add(20 * time.Second)
	for {
		if e, err := c.Get(context.Background(), dgst); err == nil {
			e.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the file was not stored whole")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f2, err := os.Open(filepath.Join(dir, "data/multi-hl1"))
	if err != nil {
		t.Fatal(err)
	}
	read(f2)
	if n := m.Stats().PassthroughOpens; n != 0 {
		t.Errorf("%d passthrough opens while a cached open is live", n)
	}
	f1.Close()
	f2.Close()
	time.Sleep(100 * time.Millisecond) // RELEASE is asynchronous
	f3, err := os.Open(filepath.Join(dir, "etc/multi-hl2"))
	if err != nil {
		t.Fatal(err)
	}
	defer f3.Close()
	f4, err := os.Open(filepath.Join(dir, "data/multi.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f4.Close()
	read(f3)
	read(f4)
	if n := m.Stats().PassthroughOpens; n != 2 {
		t.Errorf("%d passthrough opens, want 2", n)
	}
	if n := m.FallbackReads(); n != 0 {
		t.Errorf("%d reads reached the daemon instead of passthrough", n)
	}
}
