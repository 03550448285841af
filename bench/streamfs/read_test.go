package streamfs

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// readFile reads p sequentially with 1 MiB reads and returns MB/s. With
// evict, the file's page cache is dropped first (fadvise), so the read
// comes from disk (or, on FUSE, from the daemon).
func readFile(t *testing.T, p string, evict bool) float64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if evict {
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	if err != nil {
		t.Fatal(err)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

// evictDir drops the page cache of every file below dir.
func evictDir(dir string) {
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			if f, err := os.Open(p); err == nil {
				unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				f.Close()
			}
		}
		return nil
	})
}

func TestReadSpeed(t *testing.T) {
	if os.Getenv("RIFFLE_BENCH") == "" {
		t.Skip("set RIFFLE_BENCH=1 to run the read benchmark")
	}
	testutil.RequiresRoot(t)
	size := int64(256)
	if s, err := strconv.Atoi(os.Getenv("RIFFLE_BENCH_MB")); err == nil && s > 0 {
		size = int64(s)
	}
	size <<= 20
	ctx := context.Background()
	base := t.TempDir()

	reg, err := registry.New(ctx, registry.Options{RootDir: filepath.Join(base, "registry")})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	img, err := imagegen.Build(imagegen.Large(size))
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/bench/large:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}

	plain := filepath.Join(base, "plain")
	os.Mkdir(plain, 0o755)
	if err := unpack.Image(ctx, plain, img); err != nil {
		t.Fatal(err)
	}
	simg, _, err := streamfs.Open(ctx, remote.New(remote.Options{}), ref, streamfs.OpenOptions{Build: true})
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(base, "cache")
	c, err := cache.Open(cacheDir, cache.Options{MaxBytes: 4 * size, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mountIt := func(opts streamfs.Options) (*streamfs.MountPoint, string) {
		dir, _ := os.MkdirTemp(base, "mnt")
		opts.Cache = c
		m, err := streamfs.Mount(ctx, dir, simg, opts)
		if err != nil {
			t.Fatal(err)
		}
		// If the test fails with the mount up, detach it (an error when
		// it was unmounted already is expected).
		t.Cleanup(func() { streamfs.UnmountDir(dir, true) })
		return m, dir
	}
	const file = "big/blob.bin"

	type result struct {
		name string
		mbs  float64
		vs   string
	}
	var rs []result

	// The machine is shared: take the best of three wherever a case can be
	// repeated in the same state.
	best := func(f func() float64) float64 {
		b := 0.0
		for range 3 {
			b = max(b, f())
		}
		return b
	}
	plainCold := best(func() float64 { return readFile(t, filepath.Join(plain, file), true) })
	plainHot := best(func() float64 { return readFile(t, filepath.Join(plain, file), false) })
	rs = append(rs, result{"plain dir, page cache dropped", plainCold, "1.00 (cold ref)"}, result{"plain dir, page cache hot", plainHot, "1.00 (hot ref)"})

	// Cold: from the registry (loopback, no link emulation), spans verified
	// and cached, the file then promoted to a whole-file entry.
	m, dir := mountIt(streamfs.Options{})
	cold := readFile(t, filepath.Join(dir, file), false)
	rs = append(rs, result{"streamfs cold (registry on loopback)", cold, fmt.Sprintf("%.2f of plain cold", cold/plainCold)})
	t.Logf("cold stats: %+v", m.Stats())
	// The full read stores the whole file in the background; wait for it.
	var fileDigest string
	for _, e := range simg.Layers[1].Entries() {
		if e.Name == file {
			fileDigest = e.Digest.String()
		}
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if e, err := c.Get(ctx, fileDigest); err == nil {
			e.Close()
			break
		}
		if time.Now().After(deadline) {
			m.Unmount()
			t.Fatal("the file was never stored whole in the cache")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}

	// Warm spans, served by the daemon (no passthrough), new mount so the
	// FUSE page cache is empty; span files hot in the page cache, then
	// dropped (the data on local disk, as the plain directory's cold
	// read). The kernel's read-ahead on the mount decides the size of the
	// requests: 128 KiB is what it was before streamfs raised it.
	warmSpans := func(ra int, evict bool, profile string) float64 {
		m, dir := mountIt(streamfs.Options{NoPassthrough: true, KernelReadAhead: ra})
		defer m.Unmount()
		if evict {
			evictDir(filepath.Join(cacheDir, "spans"))
		}
		if pdir := os.Getenv("RIFFLE_BENCH_PPROF"); pdir != "" && profile != "" {
			pf, err := os.Create(filepath.Join(pdir, profile))
			if err != nil {
				t.Fatal(err)
			}
			pprof.StartCPUProfile(pf)
			defer func() { pprof.StopCPUProfile(); pf.Close() }()
		}
		return readFile(t, filepath.Join(dir, file), false)
	}
	// paired runs f and the plain directory's read in the same state
	// (page cache dropped or hot) back to back, three times, and returns
	// f's best MB/s and its ratio to the plain read's best: on a shared
	// machine both then see about the same load.
	paired := func(evict bool, f func() float64) (float64, float64) {
		bx, bp := 0.0, 0.0
		for range 3 {
			bp = max(bp, readFile(t, filepath.Join(plain, file), evict))
			bx = max(bx, f())
		}
		return bx, bx / bp
	}
	for _, w := range []struct {
		label string
		ra    int
	}{{"read-ahead 128 KiB (kernel default)", -1}, {"read-ahead 1016 KiB (default)", 0}, {"read-ahead 4 MiB", 4 << 20}} {
		hot, hr := paired(false, func() float64 { return warmSpans(w.ra, false, "") })
		rs = append(rs, result{"streamfs warm spans via daemon, " + w.label, hot, fmt.Sprintf("%.2f of plain hot (paired)", hr)})
		profile := ""
		if w.ra == 0 {
			profile = "cpu-warm-spans-evicted.pprof"
		}
		cold, cr := paired(true, func() float64 { return warmSpans(w.ra, true, profile) })
		rs = append(rs, result{"  same, span files evicted", cold, fmt.Sprintf("%.2f of plain cold (paired)", cr)})
	}

	// A warm node with a layer store: the layers are extracted from the
	// cached spans (no registry), then the file is read by passthrough.
	settleStart := time.Now()
	storeDir := filepath.Join(base, "store")
	m, dir = mountIt(streamfs.Options{Layers: newBenchStore(t, storeDir)})
	select {
	case <-m.Complete():
	case <-time.After(5 * time.Minute):
		t.Fatal("the warm mount did not settle")
	}
	settle := time.Since(settleStart)
	st := m.Stats()
	t.Logf("warm node with a layer store: layers extracted from cached spans in %v (%d MB from the cache, %d MB over the wire)", settle.Round(time.Millisecond), st.BackgroundCachedBytes>>20, st.WireBytes>>20)
	settled, sr := paired(true, func() float64 {
		evictDir(storeDir)
		return readFile(t, filepath.Join(dir, file), true)
	})
	rs = append(rs, result{"streamfs warm, settled from the cache, evicted", settled, fmt.Sprintf("%.2f of plain cold (paired)", sr)})
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}

	// Passthrough from the cached whole file.
	m, dir = mountIt(streamfs.Options{})
	defer m.Unmount()
	ptHot := best(func() float64 { return readFile(t, filepath.Join(dir, file), false) })
	rs = append(rs, result{"streamfs passthrough, backing file hot", ptHot, fmt.Sprintf("%.2f of plain hot", ptHot/plainHot)})
	evictDir(filepath.Join(cacheDir, "blobs"))
	ptCold := best(func() float64 {
		evictDir(filepath.Join(cacheDir, "blobs"))
		return readFile(t, filepath.Join(dir, file), true)
	})
	rs = append(rs, result{"streamfs passthrough, backing file evicted", ptCold, fmt.Sprintf("%.2f of plain cold", ptCold/plainCold)})
	if st := m.Stats(); st.PassthroughOpens != 6 || st.FallbackReads != 0 {
		t.Errorf("passthrough opens: %d, want 6; fallback reads %d, want 0", st.PassthroughOpens, st.FallbackReads)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "sequential read of a %d MiB file (1 MiB reads):\n", size>>20)
	for _, r := range rs {
		fmt.Fprintf(&b, "  %-45s %8.0f MB/s  %s\n", r.name, r.mbs, r.vs)
	}
	t.Log("\n" + b.String())
}

func newBenchStore(t *testing.T, dir string) *layerstore.Store {
	t.Helper()
	s, err := layerstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
