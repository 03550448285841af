package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"

	"strconv"
	"strings"
	"time"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/remote"
)

// cachedReadFile is the big file's path in the cached-read image.
const cachedReadFile = "big/file.bin"

// cachedRead is the issue's "before settling, a 1 GB sequential read of
// cached data runs at local-disk speed or near it": one big file, read
// once by a streamed container so its data is in the node cache, then read
// again by a new container on a new mount (the image not settled: no
// background stream), against the same file extracted by riffle pull on
// the same filesystem. Both reads are timed the same way (busybox time
// and dd, inside the container and on the host), page cache dropped before each,
// so the container's start is not in the figure.
type cachedRead struct {
	Bytes int64 `json:"bytes"`
	// DiskSeconds reads the extracted file; RiffleSeconds reads it through
	// the mount over the warm node cache.
	DiskSeconds   []float64 `json:"diskSeconds"`
	RiffleSeconds []float64 `json:"riffleSeconds"`
	// SpeedRatio is the median disk time over the median Riffle time:
	// Riffle's read speed as a fraction of the disk's (target ≥ 0.8).
	SpeedRatio float64 `json:"speedRatio"`
	// Verbose is riffle run's account of the last timed run (how the image
	// arrived, passthrough opens), to check the case is what it says.
	Verbose string `json:"verbose,omitempty"`
}

// timedDD is the read, timed by busybox's time applet (Debian's busybox dd
// prints no timing summary).
var timedDD = []string{"/bin/busybox", "time", "/bin/busybox", "dd", "of=/dev/null", "bs=1M"}

// realRe matches busybox time's "real\t0m 1.23s".
var realRe = regexp.MustCompile(`real\s+(\d+)m\s*([0-9.]+)s`)

func ddSeconds(out string) (float64, error) {
	m := realRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("startbench: no time summary in:\n%s", tail(out, 2000))
	}
	min, _ := strconv.ParseFloat(m[1], 64)
	sec, err := strconv.ParseFloat(m[2], 64)
	return 60*min + sec, err
}

// ddOf is timedDD reading path.
func ddOf(path string) []string {
	return append(append([]string(nil), timedDD...), "if="+path)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// measureCachedRead builds and pushes the image (untimed), fills a node
// cache and a pulled tree, and times 3×runs reads of each, alternating.
// It talks to the registry directly: the link plays no part in a read of
// cached data.
// With keep, the node and the pulled tree stay under the work directory
// for experiments by hand.
func measureCachedRead(ctx context.Context, s *setupState, size int64, runs int, keep bool) (*cachedRead, error) {
	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		return nil, err
	}
	spec.Layers = append(spec.Layers, imagegen.Layer{Comment: "cached read", Entries: []imagegen.Entry{
		{Type: imagegen.Dir, Name: "big"},
		{Type: imagegen.File, Name: cachedReadFile, Size: size, Seed: 1 << 20, Fill: imagegen.Mixed},
	}})
	img, err := imagegen.Build(spec)
	if err != nil {
		return nil, err
	}
	ref := s.regAddr + "/bench/images/cachedread:v1"
	if err := remote.New(remote.Options{}).Push(ctx, ref, img, nil); err != nil {
		return nil, err
	}
	if _, err := s.svc.IndexImage(ctx, ref); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, "cached-read")
	if !keep {
		defer os.RemoveAll(dir)
	}
	node, pulled := filepath.Join(dir, "node"), filepath.Join(dir, "pulled")

	dd := ddOf("/" + cachedReadFile)
	riffleRead := func() (string, error) {
		args := []string{"run", "--data-dir", node, "--verbose", "--no-background",
			"--index-service", "http://" + s.regAddr, ref, "--"}
		out, err := exec.CommandContext(ctx, s.bin, append(args, dd...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("startbench: riffle run %s: %w\n%s", strings.Join(dd, " "), err, tail(string(out), 2000))
		}
		return string(out), nil
	}
	// The first read fetches the file into the node cache; the second
	// finds it there (and stores it whole, as a warm node does).
	for range 2 {
		if _, err := riffleRead(); err != nil {
			return nil, fmt.Errorf("filling the node cache: %w", err)
		}
	}
	if out, err := exec.CommandContext(ctx, s.bin, "pull", "--data-dir", pulled, ref).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("startbench: riffle pull: %w\n%s", err, out)
	}
	local, err := findFile(filepath.Join(pulled, "layers"), cachedReadFile)
	if err != nil {
		return nil, err
	}
	r := &cachedRead{Bytes: size}
	// A read takes about a second here and the disk's time varies twofold
	// from one read to the next: three pairs per run.
	disk := func() error {
		dropCaches()
		out, err := exec.CommandContext(ctx, dd[0], ddOf(local)[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("startbench: dd of the extracted file: %w\n%s", err, out)
		}
		sec, err := ddSeconds(string(out))
		if err != nil {
			return err
		}
		r.DiskSeconds = append(r.DiskSeconds, sec)
		return nil
	}
	riffle := func() error {
		dropCaches()
		rout, err := riffleRead()
		if err != nil {
			return err
		}
		sec, err := ddSeconds(rout)
		if err != nil {
			return err
		}
		r.RiffleSeconds = append(r.RiffleSeconds, sec)
		r.Verbose = tail(rout, 1500)
		return nil
	}
	for i := range 3 * runs {
		// Each riffle run reports the read as a startup profile; the pack
		// the index service then builds must not share the CPU with the
		// timed reads.
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		if err := s.svc.WaitPacks(wctx); err != nil {
			fmt.Fprintf(os.Stderr, "startbench: prefetch packs still building after 2 minutes: %v\n", err)
		}
		cancel()
		// Each goes first in every other pair: reads here take either
		// about 0.6 s or about 1.2 s, in runs of several, on either side.
		pair := []func() error{disk, riffle}
		if i%2 == 1 {
			pair[0], pair[1] = riffle, disk
		}
		for _, read := range pair {
			if err := read(); err != nil {
				return nil, err
			}
		}
	}
	rmed, _, _ := medMinMax(append([]float64(nil), r.RiffleSeconds...))
	dmed, _, _ := medMinMax(append([]float64(nil), r.DiskSeconds...))
	if rmed > 0 {
		r.SpeedRatio = dmed / rmed
	}
	return r, nil
}

// findFile returns the first path under root that ends in name (the
// pulled tree keeps each layer under layers/sha256/HEX/fs).
func findFile(root, name string) (string, error) {
	var found string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != "" {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, "/"+name) {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	if err == nil && found == "" {
		err = fmt.Errorf("startbench: %s not found in the pulled tree under %s", name, root)
	}
	return found, err
}

func (c *cachedRead) String() string {
	rmed, lo, hi := medMinMax(append([]float64(nil), c.RiffleSeconds...))
	dmed, dlo, dhi := medMinMax(append([]float64(nil), c.DiskSeconds...))
	mb := float64(c.Bytes) / 1e6
	return fmt.Sprintf("cached read of %.0f MB before settling: riffle %.2f s (%.2f-%.2f, %.0f MB/s), disk %.2f s (%.2f-%.2f, %.0f MB/s): %.2f× disk speed",
		mb, rmed, lo, hi, mb/rmed, dmed, dlo, dhi, mb/dmed, c.SpeedRatio)
}
