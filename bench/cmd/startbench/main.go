// Command startbench measures what Riffle is for: how soon a container's
// first work is done when its image streams, against containerd's full pull
// (the outside reference) and Riffle's own full pull, on an emulated
// registry link. Every figure comes from one run of this command and is
// reported as a ratio to those two.
//
// The documented command (as root; Debian's containerd, runc, fuse3 and
// debootstrap installed, as scripts/setup.sh does; 30-40 minutes on an
// idle 2-core machine, much longer on a shared one):
//
//	go run ./bench/cmd/startbench
//
// and, while developing (one run, one link, chosen cases):
//
//	go run ./bench/cmd/startbench --quick --cases a,b,c
//
// Setup, not timed: build the image (Debian 12 with python3-numpy, -scipy
// and -pandas by default; debootstrap the first time, cached in
// /var/cache/riffle-test after), push it to an embedded registry on
// loopback, and index it (as the index service does when an image is
// pushed). The registry is reached only through bench/linkproxy, a
// user-space link of a given rate and RTT (the kernel has no netem); by
// default 400 Mbit/s with 20 ms RTT, then 100 Mbit/s with 60 ms RTT.
//
// Cases (--cases), each cold unless it says otherwise: node state wiped
// and the page cache dropped before every timed run:
//
//	a  containerd full pull: Debian's containerd 1.6, started by the
//	   benchmark with its own root, state, socket and config (overlayfs
//	   snapshotter), `ctr image pull --plain-http`, then `ctr run` (runc)
//	w  warm reference: the same container on an image containerd has
//	   already pulled and extracted (overlayfs), only `ctr run` timed
//	b  Riffle's full pull: `riffle pull --data-dir D` into the node's
//	   image store, then the workload in a chroot of the extracted tree
//	c  Riffle streaming, first run: `riffle mount` (indexes from the
//	   index service, through the link), the workload in a chroot of it
//	d  Riffle streaming with a learned profile: a first run on another
//	   node leaves its startup profile with the index service, then a
//	   cold node runs the image (needs --riffle-run)
//	e  Riffle streaming, warm node cache, not settled: a second mount
//	   over the cache the same workload filled
//	f  Riffle, settled image: a run that read every file, then the
//	   timed run, which must say it started settled (needs --riffle-run)
//
// Cases that need a feature the riffle binary lacks are reported as not
// available instead of failing. With --riffle-run, b to f run through
// `riffle run` (one process that streams or pulls and runs the container
// with runc) instead of riffle pull/mount plus chroot.
//
// Workloads (--workloads): echo (time from the start of the case to the
// first line of `echo hello`), python (`python3 -c "import numpy, scipy,
// pandas"` done) and readall (`find / -xdev -type f -exec cat {} +` done).
// Each case reports its time, the bytes over the link, the CPU time of the
// node's processes (their own cgroups: containerd's daemon with its shims,
// ctr, riffle pull, riffle mount or riffle run; not the workload) and their
// peak RSS.
//
// --cached-read (1 GiB by default, on the first link only) times a
// sequential read of one big file whose data is in a warm node cache of an
// image that has not settled, against the same file extracted on disk
// (busybox dd in both, page cache dropped; the container's start is not
// timed).
//
// --tasks 50 also starts `riffle serve` and submits one Batch job of 50
// streamed tasks of the image, against a job of one task: bytes over the
// link and time until every container has started.
//
// Output: a table of medians (min–max) with ratios to a and b on stdout,
// and one JSON file per link under bench/results/ (date and link in its
// name) with every sample, the machine and the git commit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/riffle-dev/riffle/bench/linkproxy"
)

// flags are the command line.
type flags struct {
	imageKind string
	links     string
	runs      int
	cases     string
	workloads string
	quick     bool
	hold      bool
	riffleBin string
	riffleRun bool
	fixtures  string
	work      string
	spanSize  int64
	timeout   time.Duration
	tasks     int
	results   string
	// cachedRead is the size of the file read from a warm node cache
	// (0: skip that measurement).
	cachedRead int64
}

func parseFlags() flags {
	var f flags
	flag.StringVar(&f.imageKind, "image", "debian-python", "debian-python, debian or busybox (a small image for trying the harness)")
	flag.StringVar(&f.links, "links", "400:20ms,100:60ms", "emulated links, MBIT:RTT, comma separated (MBIT 0: unlimited)")
	flag.IntVar(&f.runs, "runs", 3, "timed runs of each case and workload")
	flag.StringVar(&f.cases, "cases", "a,w,b,c,d,e,f", "cases to run (see the doc comment)")
	flag.StringVar(&f.workloads, "workloads", "echo,python,readall", "workloads to run")
	flag.BoolVar(&f.quick, "quick", false, "for development: 1 run, the first link only, no 50-task job")
	flag.StringVar(&f.riffleBin, "riffle", "", "riffle binary (default: build ./cmd/riffle)")
	// riffleRunArgs holds the command lines of cases b to f.
	flag.BoolVar(&f.riffleRun, "riffle-run", true, "run cases b to f through `riffle run` (false: riffle pull/mount + chroot; d and f need riffle run)")
	flag.StringVar(&f.fixtures, "fixtures", "/var/cache/riffle-test", "where built images are cached")
	flag.StringVar(&f.work, "work", "", "scratch directory (default: a new directory in /var/tmp, removed at the end; a given one is kept, with the cached-read node and tree)")
	flag.Int64Var(&f.spanSize, "span-size", 0, "uncompressed bytes per index span (0: the index default)")
	flag.DurationVar(&f.timeout, "timeout", 10*time.Minute, "limit for one timed run")
	flag.IntVar(&f.tasks, "tasks", 50, "tasks of the concurrent Batch job through riffle serve (0: skip it)")
	flag.BoolVar(&f.hold, "hold", false, "for experiments by hand: set up the image, registry, index service and first link, print their addresses, and wait for Ctrl-C (no case is run)")
	flag.StringVar(&f.results, "results", "bench/results", "directory for the JSON results (empty: write none)")
	flag.Int64Var(&f.cachedRead, "cached-read", 1<<30, "bytes of the one file read from a warm, unsettled node cache against the same file on disk, on the first link (0: skip it)")
	flag.Parse()
	if f.quick {
		f.runs = 1
		f.links, _, _ = strings.Cut(f.links, ",")
		f.tasks = 0
		f.cachedRead = 0
	}
	return f
}

func main() {
	log.SetFlags(0)
	f := parseFlags()
	if os.Geteuid() != 0 {
		log.Fatal("startbench: run as root (containerd, FUSE mounts, chroot, cgroups and full extraction need it)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		if ctx.Err() != nil {
			err = errors.New("startbench: interrupted; everything it started is stopped and removed")
		}
		log.Print(err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags) error {
	links, err := parseLinks(f.links)
	if err != nil {
		return err
	}
	cases, err := selectCases(f.cases)
	if err != nil {
		return err
	}
	dir := f.work
	if dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "startbench-")
		if err != nil {
			return err
		}
		dir = d
		defer os.RemoveAll(dir)
	}
	// Whatever a failed or interrupted case left: mounts, then processes.
	defer func() {
		killRootedUnder(dir)
		unmountUnder(dir)
		group(cgroupRoot).remove()
	}()

	s, err := setup(ctx, f, dir)
	if err != nil {
		return err
	}
	defer s.close()
	wls, err := selectWorkloads(f.workloads, f.imageKind)
	if err != nil {
		return err
	}
	fmt.Printf("image %s: %d layers, %.1f MB compressed, %.1f MB uncompressed; indexes %.1f KB (detached, as nodes fetch them: %.1f KB)\n",
		f.imageKind, s.layers, float64(s.compressed)/1e6, float64(s.uncompressed)/1e6, float64(s.indexBytes)/1e3, float64(s.detachedBytes)/1e3)
	fmt.Printf("riffle: %s (riffle run: %s); containerd: %s\n\n", s.bin, yesNo(s.runHelp != ""), s.containerdVersion)

	for i, l := range links {
		link, err := linkproxy.Start(s.regAddr, l.rtt/2, int64(l.mbit*1e6/8))
		if err != nil {
			return err
		}
		e := &env{setupState: s, f: f, link: link, lk: l,
			ref: link.Addr() + "/" + s.repo + ":v1", indexURL: "http://" + link.Addr()}
		if f.hold {
			fmt.Printf("holding: image %s, index service %s, link %d Mbit/s %v RTT (Ctrl-C ends)\n", e.ref, e.indexURL, int(l.mbit), l.rtt)
			<-ctx.Done()
			link.Close()
			return nil
		}
		rep := newReport(f, s, l, cases, wls)
		err = measureAll(ctx, e, cases, wls, rep)
		if err == nil && f.tasks > 0 && ctx.Err() == nil {
			rep.Fanout, err = fanout(ctx, e, f.tasks)
			if err != nil {
				fmt.Printf("%d-task job: %v\n", f.tasks, err)
				rep.FanoutError = err.Error()
				err = nil
			}
		}
		link.Close()
		if err == nil && i == 0 && f.cachedRead > 0 && ctx.Err() == nil {
			rep.CachedRead, err = measureCachedRead(ctx, s, f.cachedRead, f.runs, f.work != "")
			if err != nil {
				fmt.Printf("cached read: %v\n", err)
				rep.CachedReadError = err.Error()
				err = nil
			}
		}
		rep.print(os.Stdout)
		if f.results != "" && ctx.Err() == nil {
			if p, werr := rep.write(f.results); werr != nil {
				log.Print(werr)
			} else {
				fmt.Printf("results: %s\n\n", p)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// measureAll runs every case and workload f.runs times, interleaving cases
// within a run so a slow spell of the shared machine hits them alike.
func measureAll(ctx context.Context, e *env, cases []benchCase, wls []workload, rep *report) error {
	fmt.Printf("link %s\n", e.lk)
	for _, w := range wls {
		for r := range e.f.runs {
			for _, c := range cases {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if rep.unavailable(c.ID, w.Name) {
					continue
				}
				// A pack build that an earlier run's profile report
				// started reads layers through the link: let it end
				// first (containerd's readall pulls counted 44-103 MB
				// over the link beyond the image while one ran).
				e.waitPacks(ctx)
				rctx, cancel := context.WithTimeout(ctx, e.f.timeout)
				s, err := c.run(rctx, e, w)
				cancel()
				var na notAvailable
				switch {
				case errors.As(err, &na):
					rep.markUnavailable(c.ID, w.Name, na.Error())
					fmt.Printf("  %-8s %s run %d: not available: %v\n", w.Name, c.ID, r+1, na)
				case err != nil:
					if ctx.Err() != nil {
						return ctx.Err()
					}
					rep.addError(c.ID, w.Name, err)
					fmt.Printf("  %-8s %s run %d: FAILED: %v\n", w.Name, c.ID, r+1, err)
				default:
					rep.add(c.ID, w.Name, s)
					fmt.Printf("  %-8s %s run %d: %7.2fs %8.1f MB over the link%s\n", w.Name, c.ID, r+1, s.Seconds, float64(s.LinkBytes)/1e6, s.resources())
				}
			}
		}
	}
	return nil
}

// link is one emulated link.
type link struct {
	mbit float64
	rtt  time.Duration
}

func (l link) String() string { return fmt.Sprintf("%g Mbit/s, %v RTT", l.mbit, l.rtt) }

// slug names the link in file names: 400mbit-20ms.
func (l link) slug() string { return fmt.Sprintf("%gmbit-%v", l.mbit, l.rtt) }

func parseLinks(s string) ([]link, error) {
	var out []link
	for _, part := range strings.Split(s, ",") {
		m, r, ok := strings.Cut(strings.TrimSpace(part), ":")
		var l link
		_, err := fmt.Sscanf(m, "%g", &l.mbit)
		if ok && err == nil {
			l.rtt, err = time.ParseDuration(r)
		}
		if !ok || err != nil || l.mbit < 0 {
			return nil, fmt.Errorf("startbench: --links %q: give MBIT:RTT pairs such as 400:20ms,100:60ms", s)
		}
		out = append(out, l)
	}
	return out, nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// output runs a command and returns its trimmed stdout, or "" if it fails.
func output(name string, args ...string) string {
	b, err := exec.Command(name, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// scratch makes a fresh directory under the work directory.
func (e *env) scratch(format string, args ...any) (string, error) {
	e.seq++
	p := filepath.Join(e.dir, fmt.Sprintf("%03d-", e.seq)+fmt.Sprintf(format, args...))
	return p, os.MkdirAll(p, 0o755)
}
