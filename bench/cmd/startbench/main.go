// Command startbench measures what Riffle is for: how soon a container's
// first work is done when its image streams, against a normal full pull, on
// an emulated registry link. All numbers come from one run, and the result
// is reported as ratios to the full pull.
//
// It runs as root (FUSE, chroot, unpack). Setup, not timed: build the image
// (Debian with python3-numpy, -scipy and -pandas by default; debootstrap the
// first time, cached in /var/cache/riffle-test after), push it to an
// embedded registry on loopback, and index it (the index service does this
// when an image is pushed). Then, through a user-space link of --mbit and
// --rtt (bench/linkproxy; the kernel has no netem):
//
//  1. full pull: `riffle pull` (parallel layer downloads, apply in order),
//     then the workload in a chroot of the extracted tree;
//  2. streamed, cold node cache: resolve, fetch indexes, mount, workload;
//  3. streamed, warm node cache (a new mount: a later job on the node);
//  4. read every file of the image: through a cold mount, against pull +
//     reading the extracted tree;
//  5. warm reads of every file: the mount against the extracted tree on the
//     local disk, page cache dropped before each.
//
// Usage: go run ./bench/cmd/startbench [--image debian-python|debian|large] [--mbit 400] [--rtt 20ms]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/riffle-dev/riffle/bench/linkproxy"
	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

func main() {
	var (
		imageKind = flag.String("image", "debian-python", "debian-python, debian or large")
		mbit      = flag.Float64("mbit", 400, "link bandwidth in Mbit/s (0: unlimited)")
		rtt       = flag.Duration("rtt", 20*time.Millisecond, "link round-trip time")
		workload  = flag.String("workload", "", "command run in the image's root (default: per image)")
		riffleBin = flag.String("riffle", "", "riffle binary for the full pull (default: build it)")
		cacheDir  = flag.String("fixtures", "/var/cache/riffle-test", "where built images are cached")
		work      = flag.String("work", "", "scratch directory (default: a new temp dir)")
		skipRead  = flag.Bool("skip-read-all", false, "skip the read-every-file measurements")
		spanSize  = flag.Int64("span-size", 0, "uncompressed bytes per index span (0: the index default)")
	)
	flag.Parse()
	log.SetFlags(0)
	if os.Geteuid() != 0 {
		log.Fatal("startbench: run as root (FUSE mounts, chroot and full extraction need it)")
	}
	ctx := context.Background()
	dir := *work
	if dir == "" {
		d, err := os.MkdirTemp("", "startbench-")
		check(err)
		dir = d
		defer os.RemoveAll(dir)
	}

	// Setup, untimed.
	img, wl := buildImage(ctx, *imageKind, *cacheDir)
	if *workload != "" {
		wl = *workload
	}
	bin := *riffleBin
	if bin == "" {
		bin = filepath.Join(dir, "riffle")
		run("go", "build", "-o", bin, "./cmd/riffle")
	}
	regAddr, svc := startRegistry(ctx, dir, *spanSize)
	client := remote.New(remote.Options{})
	direct := regAddr + "/bench/images/" + *imageKind + ":v1"
	check(client.Push(ctx, direct, img, nil))
	t0 := time.Now()
	res, err := svc.IndexImage(ctx, direct)
	check(err)
	indexTime := time.Since(t0)
	var idxBytes, blobBytes int
	for _, l := range res.Layers {
		idxBytes += l.IndexBytes
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		blobBytes += int(n)
	}

	link, err := linkproxy.Start(regAddr, *rtt/2, int64(*mbit*1e6/8))
	check(err)
	defer link.Close()
	ref := link.Addr() + "/bench/images/" + *imageKind + ":v1"
	fmt.Printf("image %s: %d layers, %.1f MB compressed; indexes %.1f KB, built in %v (server side, once)\n",
		*imageKind, len(layers), float64(blobBytes)/1e6, float64(idxBytes)/1e3, indexTime.Round(time.Millisecond))
	fmt.Printf("link: %.0f Mbit/s, %v RTT; workload: %s\n\n", *mbit, *rtt, wl)

	type row struct {
		name  string
		d     time.Duration
		bytes int64
	}
	var rows []row
	measure := func(name string, f func()) time.Duration {
		dropCaches()
		b0 := link.Bytes()
		start := time.Now()
		f()
		d := time.Since(start)
		rows = append(rows, row{name, d, link.Bytes() - b0})
		fmt.Printf("%-44s %8.2fs  %8.1f MB over the link\n", name, d.Seconds(), float64(link.Bytes()-b0)/1e6)
		return d
	}

	// 1. Full pull.
	rootfs := filepath.Join(dir, "rootfs")
	full := measure("full pull + workload", func() {
		run(bin, "pull", ref, rootfs)
		chroot(rootfs, wl)
	})

	// 2 and 3. Streamed, cold and warm node cache.
	nodeCache, err := cache.Open(filepath.Join(dir, "cache"), cache.Options{NoSync: true})
	check(err)
	mountAt := func(name string) *streamfs.MountPoint {
		im, _, err := streamfs.Open(ctx, client, ref, streamfs.OpenOptions{Indexes: indexsvc.HTTPSource{BaseURL: "http://" + link.Addr()}})
		check(err)
		mp := filepath.Join(dir, name)
		check(os.MkdirAll(mp, 0o755))
		m, err := streamfs.Mount(ctx, mp, im, streamfs.Options{Cache: nodeCache})
		check(err)
		return m
	}
	cold := measure("streamed (cold node cache) + workload", func() {
		m := mountAt("mnt-cold")
		chroot(m.Dir(), wl)
		check(m.Unmount())
	})
	warm := measure("streamed (warm node cache) + workload", func() {
		m := mountAt("mnt-warm")
		chroot(m.Dir(), wl)
		check(m.Unmount())
	})

	var pullRead, streamRead, localWarm, mountWarm time.Duration
	if !*skipRead {
		// 4. Read everything: pull + read, against a cold streamed read.
		nodeCache.Close()
		nodeCache, err = cache.Open(filepath.Join(dir, "cache2"), cache.Options{NoSync: true})
		check(err)
		os.RemoveAll(rootfs)
		pullRead = measure("full pull + read every file", func() {
			run(bin, "pull", ref, rootfs)
			readAll(rootfs)
		})
		var m *streamfs.MountPoint
		streamRead = measure("streamed (cold) + read every file", func() {
			m = mountAt("mnt-all")
			readAll(m.Dir())
		})
		// 5. Warm reads: local disk against the mount.
		localWarm = measure("warm: read every file, extracted tree", func() { readAll(rootfs) })
		mountWarm = measure("warm: read every file, streamed mount", func() { readAll(m.Dir()) })
		check(m.Unmount())
	}

	fmt.Printf("\nratios to the full pull (lower is better):\n")
	fmt.Printf("  time to workload done, streamed cold:  %.2f\n", cold.Seconds()/full.Seconds())
	fmt.Printf("  time to workload done, streamed warm:  %.2f\n", warm.Seconds()/full.Seconds())
	if !*skipRead {
		fmt.Printf("  read whole image, streamed cold:       %.2f\n", streamRead.Seconds()/pullRead.Seconds())
		fmt.Printf("  warm read of every file, mount/local:  %.2f\n", mountWarm.Seconds()/localWarm.Seconds())
	}
}

func buildImage(ctx context.Context, kind, cacheDir string) (v1.Image, string) {
	switch kind {
	case "debian-python":
		img, err := imagegen.Debian(ctx, imagegen.DebianOptions{CacheDir: cacheDir,
			Include: []string{"python3-numpy", "python3-scipy", "python3-pandas"}})
		check(err)
		return img, `/usr/bin/python3 -c "import numpy, scipy, pandas"`
	case "debian":
		img, err := imagegen.DebianImage(ctx, cacheDir)
		check(err)
		return img, "/bin/ls -R /usr/share/doc"
	case "large":
		img, err := imagegen.Build(imagegen.Large(1 << 30))
		check(err)
		return img, "/bin/true"
	}
	log.Fatalf("startbench: --image %q: use debian-python, debian or large", kind)
	return nil, ""
}

func startRegistry(ctx context.Context, dir string, spanSize int64) (string, *indexsvc.Service) {
	reg, err := registry.New(ctx, registry.Options{RootDir: filepath.Join(dir, "registry")})
	check(err)
	svc, err := indexsvc.New(filepath.Join(dir, "indexes"), remote.New(remote.Options{}), indexsvc.Options{SpanSize: spanSize})
	check(err)
	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	mux.Handle("/index/", svc.Handler())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go http.Serve(ln, mux)
	return ln.Addr().String(), svc
}

// chroot runs cmd (a shell-quoted command line) in root.
func chroot(root, cmd string) {
	c := exec.Command("chroot", root, "/bin/sh", "-c", cmd)
	c.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1", "HOME=/root"}
	c.Stdout, c.Stderr = io.Discard, os.Stderr
	if err := c.Run(); err != nil {
		log.Fatalf("startbench: workload in %s: %v", root, err)
	}
}

// readAll reads every regular file under root, four at a time.
func readAll(root string) {
	paths := make(chan string, 256)
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for p := range paths {
				f, err := os.Open(p)
				if err != nil {
					failed.Store(err)
					continue
				}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf); err != nil {
					failed.Store(fmt.Errorf("%s: %w", p, err))
				}
				f.Close()
			}
		}()
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths <- p
		}
		return nil
	})
	close(paths)
	wg.Wait()
	check(err)
	if e, ok := failed.Load().(error); ok {
		log.Fatalf("startbench: reading %s: %v", root, e)
	}
}

func dropCaches() {
	exec.Command("sync").Run()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

func run(name string, args ...string) {
	c := exec.Command(name, args...)
	c.Stdout, c.Stderr = io.Discard, os.Stderr
	if err := c.Run(); err != nil {
		log.Fatalf("startbench: %s %s: %v", name, strings.Join(args, " "), err)
	}
}

func check(err error) {
	if err != nil && !errors.Is(err, fs.ErrClosed) {
		log.Fatal(err)
	}
}
