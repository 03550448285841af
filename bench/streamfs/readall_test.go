package streamfs

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// wireCounter counts the blob bytes a registry sends.
type wireCounter struct {
	h http.Handler
	n atomic.Int64
}

func (w *wireCounter) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	w.h.ServeHTTP(&countingRW{ResponseWriter: rw, n: &w.n}, r)
}

type countingRW struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingRW) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// usage is the CPU time of this process so far.
func usage() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS resets VmHWM, so peakRSS reports the peak of one case.
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

func peakRSS() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// readAll reads every regular file below dir, one at a time in walk order
// (as `tar c` or a checksum walk would), and returns files and bytes read.
func readAll(t *testing.T, dir string) (files, bytes int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		bp := readBufs.Get().(*[]byte)
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, *bp)
		readBufs.Put(bp)
		f.Close()
		files++
		bytes += n
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files, bytes
}

// benchImage is the image to read: the Debian + python image of issue 7
// (RIFFLE_BENCH_IMAGE=debian-python, the default; built once by
// debootstrap and cached in /var/cache/riffle-test), or imagegen.Large of
// RIFFLE_BENCH_MB MiB (RIFFLE_BENCH_IMAGE=large).
func benchImage(t *testing.T) v1.Image {
	t.Helper()
	if os.Getenv("RIFFLE_BENCH_IMAGE") == "large" {
		size := int64(1024)
		if s, err := strconv.Atoi(os.Getenv("RIFFLE_BENCH_MB")); err == nil && s > 0 {
			size = int64(s)
		}
		img, err := imagegen.Build(imagegen.Large(size << 20))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	testutil.RequiresBinary(t, "debootstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	img, err := imagegen.Debian(ctx, imagegen.DebianOptions{
		CacheDir: "/var/cache/riffle-test",
		Include:  []string{"python3-numpy", "python3-scipy", "python3-pandas"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestReadAllCold reads every file of an image through a cold mount with
// the background stream on and off, against a full pull (into the layer
// store, read through a read-only overlayfs of its layers), all in this
// process, and reports wall time, CPU time (getrusage), bytes from the
// registry and peak RSS as ratios to the pull; then, warm, the overlayfs
// of the pulled layers against a new mount over the streamed layer store.
// The registry and the reader run in this process too, so the CPU and RSS
// figures include theirs (the same reader in every case). RIFFLE_BENCH_PPROF=DIR
// writes a CPU profile of each mount case there.
func TestReadAllCold(t *testing.T) {
	if os.Getenv("RIFFLE_BENCH") == "" {
		t.Skip("set RIFFLE_BENCH=1 to run the read benchmark")
	}
	testutil.RequiresRoot(t)
	ctx := context.Background()
	base := t.TempDir()
	img := benchImage(t)

	reg, err := registry.New(ctx, registry.Options{RootDir: filepath.Join(base, "registry")})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	wc := &wireCounter{h: reg}
	srv := httptest.NewServer(wc)
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/bench/readall:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	client := remote.New(remote.Options{})
	simg, rimg, err := streamfs.Open(ctx, client, ref, streamfs.OpenOptions{Build: true})
	if err != nil {
		t.Fatal(err)
	}
	var compressed int64
	for _, l := range rimg.Manifest.Layers {
		compressed += l.Size
	}

	type result struct {
		name         string
		wall, cpu    time.Duration
		wire, rss    int64
		files, bytes int64
		complete     time.Duration
		stats        *streamfs.Stats
	}
	var rs []result
	measure := func(name string, run func() (int64, int64, time.Duration, *streamfs.Stats)) {
		evictDir(filepath.Join(base, "registry"))
		resetPeakRSS()
		w0, c0, t0 := wc.n.Load(), usage(), time.Now()
		files, bytes, complete, st := run()
		rs = append(rs, result{name: name, wall: time.Since(t0), cpu: usage() - c0, wire: wc.n.Load() - w0, rss: peakRSS(), files: files, bytes: bytes, complete: complete, stats: st})
	}

	// (a) Riffle's full pull into the layer store, then the same read
	// through overlayfs.
	measure("full pull + read (overlayfs)", func() (int64, int64, time.Duration, *streamfs.Stats) {
		s, err := layerstore.Open(filepath.Join(base, "pull-store"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pull.Layers(ctx, client, rimg, s, 0); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(base, "pull-mnt")
		os.Mkdir(dir, 0o755)
		if err := unix.Mount("overlay", dir, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(pull.LowerDirs(s, rimg), ":")); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(dir, 0)
		f, b := readAll(t, dir)
		return f, b, 0, nil
	})

	mountCase := func(label string, opts streamfs.Options) {
		measure(label, func() (int64, int64, time.Duration, *streamfs.Stats) {
			c, err := cache.Open(filepath.Join(base, "cache-"+strings.ReplaceAll(label, " ", "-")), cache.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			opts.Cache = c
			dir, _ := os.MkdirTemp(base, "mnt")
			if pdir := os.Getenv("RIFFLE_BENCH_PPROF"); pdir != "" {
				pf, err := os.Create(filepath.Join(pdir, "cpu-"+strings.ReplaceAll(label, " ", "-")+".pprof"))
				if err != nil {
					t.Fatal(err)
				}
				pprof.StartCPUProfile(pf)
				defer func() { pprof.StopCPUProfile(); pf.Close() }()
			}
			start := time.Now()
			m, err := streamfs.Mount(ctx, dir, simg, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Unmount()
			f, b := readAll(t, dir)
			var complete time.Duration
			if opts.Layers != nil && !opts.NoBackground {
				<-m.Complete()
				complete = time.Since(start)
			}
			st := m.Stats()
			if n := st.FallbackReads; n != 0 {
				t.Errorf("%s: %d fallback reads", label, n)
			}
			return f, b, complete, &st
		})
	}
	storeFor := func(n string) *layerstore.Store {
		s, err := layerstore.Open(filepath.Join(base, n))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	bgStore := storeFor("bg-store")
	mountCase("mount, background stream", streamfs.Options{Layers: bgStore})
	mountCase("mount, no background (store)", streamfs.Options{Layers: storeFor("nobg-store"), NoBackground: true})
	mountCase("mount, no store (promotion)", streamfs.Options{})

	// Warm node: the layers are in the store; page cache dropped (fadvise)
	// for the store's files before each read.
	measure("warm: overlayfs of the pull", func() (int64, int64, time.Duration, *streamfs.Stats) {
		evictDir(filepath.Join(base, "pull-store"))
		s, _ := layerstore.Open(filepath.Join(base, "pull-store"))
		dir := filepath.Join(base, "pull-mnt")
		if err := unix.Mount("overlay", dir, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(pull.LowerDirs(s, rimg), ":")); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(dir, 0)
		f, b := readAll(t, dir)
		return f, b, 0, nil
	})
	evictDir(filepath.Join(base, "bg-store"))
	mountCase("warm: mount over the store", streamfs.Options{Layers: bgStore})

	var b strings.Builder
	ref0 := rs[0]
	fmt.Fprintf(&b, "read every file (%d files, %d MB; image %d MB compressed) from a registry on loopback:\n", ref0.files, ref0.bytes/1e6, compressed/1e6)
	fmt.Fprintf(&b, "  %-32s %8s %6s %8s %6s %9s %6s %8s %s\n", "case", "wall", "×pull", "cpu", "×pull", "wire MB", "×pull", "peak RSS", "complete")
	for _, r := range rs {
		fmt.Fprintf(&b, "  %-32s %7.2fs %6.2f %7.2fs %6.2f %9.1f %6.2f %6d MB %v\n", r.name,
			r.wall.Seconds(), r.wall.Seconds()/ref0.wall.Seconds(),
			r.cpu.Seconds(), r.cpu.Seconds()/ref0.cpu.Seconds(),
			float64(r.wire)/1e6, float64(r.wire)/float64(ref0.wire), r.rss>>20, r.complete.Round(time.Millisecond))
		if r.files != ref0.files || r.bytes != ref0.bytes {
			t.Errorf("%s read %d files, %d bytes; the pull %d, %d", r.name, r.files, r.bytes, ref0.files, ref0.bytes)
		}
	}
	if n := len(rs); n >= 2 {
		wo, wm := rs[n-2], rs[n-1]
		fmt.Fprintf(&b, "  warm: mount/overlayfs wall %.2f, cpu %.2f\n", wm.wall.Seconds()/wo.wall.Seconds(), wm.cpu.Seconds()/wo.cpu.Seconds())
	}
	for _, r := range rs {
		if r.stats != nil {
			s := *r.stats
			s.Layers = nil
			fmt.Fprintf(&b, "  %s: %+v\n", r.name, s)
		}
	}
	t.Log("\n" + b.String())
}
