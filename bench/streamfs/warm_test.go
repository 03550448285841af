package streamfs

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// warmCmd is the workload of TestWarmImport (RIFFLE_BENCH_CMD overrides it).
const warmCmd = `python3 -c "import numpy, scipy, pandas"`

// runIn runs cmd in a chroot of root, in a private mount namespace with the
// host's /dev and a /proc (as startbench does), and returns its wall time.
func runIn(t *testing.T, root, cmd string) time.Duration {
	t.Helper()
	const script = `mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -c "$2"`
	c := exec.Command("unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "-", root, cmd)
	c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "PYTHONDONTWRITEBYTECODE=1"}
	start := time.Now()
	out, err := c.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		t.Fatalf("%s in %s: %v\n%s", cmd, root, err, out)
	}
	return d
}

// opCounter is a slog handler that counts go-fuse's debug lines by
// opcode ("rx 12: LOOKUP ..."), to see which FUSE requests a workload
// makes.
type opCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *opCounter) Enabled(context.Context, slog.Level) bool { return true }
func (o *opCounter) WithAttrs([]slog.Attr) slog.Handler       { return o }
func (o *opCounter) WithGroup(string) slog.Handler            { return o }
func (o *opCounter) Handle(_ context.Context, r slog.Record) error {
	f := strings.Fields(r.Message)
	if len(f) >= 3 && f[0] == "rx" {
		o.mu.Lock()
		o.n[f[2]]++
		o.mu.Unlock()
	}
	return nil
}

func (o *opCounter) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	keys := make([]string, 0, len(o.n))
	for k := range o.n {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return o.n[keys[i]] > o.n[keys[j]] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, o.n[k])
	}
	return b.String()
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestWarmImport measures issue 7's warm target on a node whose cache
// holds the workload's spans but whose layer store does not hold the
// layers yet (startbench case e: the first run's layer streams were cut
// short): the workload (python3 importing numpy, scipy and pandas in a
// chroot) on a new mount over that cache, against the same workload on an
// overlayfs of the extracted layers. Page caches are dropped (fadvise)
// for the cache's and the store's files before each run; each mount case
// runs on a new empty layer store. Everything runs in this process
// (registry on loopback, mount), so its CPU time is reported for the
// mount cases. RIFFLE_BENCH_RUNS sets the runs per case (default 3),
// RIFFLE_BENCH_PPROF=DIR writes a CPU profile of each mount case,
// RIFFLE_BENCH_OPS=1 adds a run that counts FUSE requests by opcode,
// RIFFLE_BENCH_COLD_RA the first run's kernel read-ahead.
//
//	RIFFLE_BENCH=1 go test -run TestWarmImport -v -timeout 30m ./bench/streamfs/
func TestWarmImport(t *testing.T) {
	if os.Getenv("RIFFLE_BENCH") == "" {
		t.Skip("set RIFFLE_BENCH=1 to run the read benchmark")
	}
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "unshare")
	cmd := warmCmd
	if c := os.Getenv("RIFFLE_BENCH_CMD"); c != "" {
		cmd = c
	}
	runs := 3
	if n, err := strconv.Atoi(os.Getenv("RIFFLE_BENCH_RUNS")); err == nil && n > 0 {
		runs = n
	}
	ctx := context.Background()
	base := t.TempDir()
	img := benchImage(t)

	reg, err := registry.New(ctx, registry.Options{RootDir: filepath.Join(base, "registry")})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/bench/warm:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	client := remote.New(remote.Options{})
	simg, rimg, err := streamfs.Open(ctx, client, ref, streamfs.OpenOptions{Build: true})
	if err != nil {
		t.Fatal(err)
	}

	// The reference: the layers pulled and extracted, read through
	// overlayfs.
	pullStore, err := layerstore.Open(filepath.Join(base, "pull-store"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pull.Layers(ctx, client, rimg, pullStore, 0); err != nil {
		t.Fatal(err)
	}
	ovl := filepath.Join(base, "ovl")
	os.Mkdir(ovl, 0o755)
	if err := unix.Mount("overlay", ovl, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(pull.LowerDirs(pullStore, rimg), ":")); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(ovl, 0)

	cacheDir := filepath.Join(base, "cache")
	c, err := cache.Open(cacheDir, cache.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stores := 0
	// mountRun mounts the image anew over the cache (and a new, empty
	// layer store unless opts says otherwise), runs the workload, and
	// unmounts.
	mountRun := func(opts streamfs.Options, evict bool) (time.Duration, streamfs.Stats) {
		opts.Cache = c
		if opts.Layers == nil {
			stores++
			s, err := layerstore.Open(filepath.Join(base, fmt.Sprintf("store-%d", stores)))
			if err != nil {
				t.Fatal(err)
			}
			opts.Layers = s
		}
		if evict {
			evictDir(cacheDir)
		}
		dir, _ := os.MkdirTemp(base, "mnt")
		m, err := streamfs.Mount(ctx, dir, simg, opts)
		if err != nil {
			t.Fatal(err)
		}
		d := runIn(t, dir, cmd)
		st := m.Stats()
		if err := m.Unmount(); err != nil {
			t.Fatal(err)
		}
		return d, st
	}

	// First run: fills the cache with the workload's spans; its layer
	// streams are off, as if cut short.
	// RIFFLE_BENCH_COLD_RA sets its kernel read-ahead in bytes (-1: the
	// kernel's 128 KiB), to see what the window costs a cold start.
	coldRA, _ := strconv.Atoi(os.Getenv("RIFFLE_BENCH_COLD_RA"))
	cold, coldStats := mountRun(streamfs.Options{NoBackground: true, KernelReadAhead: coldRA}, false)
	t.Logf("first run (cold, fills the cache): %v, %d spans fetched, %d bytes over the wire", cold.Round(time.Millisecond), coldStats.FetchedSpans, coldStats.WireBytes)

	type result struct {
		name  string
		times []time.Duration
		cpu   time.Duration
		stats *streamfs.Stats
	}
	var rs []result
	var ovlTimes []time.Duration
	for range runs {
		evictDir(filepath.Join(base, "pull-store"))
		ovlTimes = append(ovlTimes, runIn(t, ovl, cmd))
	}
	rs = append(rs, result{name: "overlayfs of the extracted layers", times: ovlTimes})

	mountCase := func(label string, opts streamfs.Options) {
		r := result{name: label}
		if pdir := os.Getenv("RIFFLE_BENCH_PPROF"); pdir != "" {
			pf, err := os.Create(filepath.Join(pdir, "warm-"+strings.NewReplacer(" ", "-", ",", "").Replace(label)+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			pprof.StartCPUProfile(pf)
			defer func() { pprof.StopCPUProfile(); pf.Close() }()
		}
		c0 := usage()
		for range runs {
			d, st := mountRun(opts, true)
			r.times = append(r.times, d)
			r.stats = &st
		}
		r.cpu = (usage() - c0) / time.Duration(runs)
		rs = append(rs, r)
	}
	mountCase("mount, warm cache, layer streams on", streamfs.Options{})
	mountCase("mount, warm cache, layer streams off", streamfs.Options{NoBackground: true})

	var b strings.Builder
	ref0 := median(rs[0].times)
	fmt.Fprintf(&b, "%s, warm node (page cache dropped), %d runs per case:\n", cmd, runs)
	for _, r := range rs {
		fmt.Fprintf(&b, "  %-40s median %7.3fs (min %.3f, max %.3f)  ×overlayfs %.2f", r.name,
			median(r.times).Seconds(), minDur(r.times).Seconds(), maxDur(r.times).Seconds(),
			median(r.times).Seconds()/ref0.Seconds())
		if r.cpu > 0 {
			fmt.Fprintf(&b, "  cpu/run %.2fs", r.cpu.Seconds())
		}
		b.WriteString("\n")
	}
	for _, r := range rs {
		if r.stats != nil {
			s := *r.stats
			s.Layers = nil
			fmt.Fprintf(&b, "  %s: %+v\n", r.name, s)
		}
	}
	if os.Getenv("RIFFLE_BENCH_OPS") != "" {
		oc := &opCounter{n: map[string]int{}}
		mountRun(streamfs.Options{NoBackground: true, Debug: true, Logger: slog.New(oc)}, true)
		fmt.Fprintf(&b, "  FUSE requests of one warm run:%s\n", oc)
	}
	t.Log("\n" + b.String())
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func maxDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
