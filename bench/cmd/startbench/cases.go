package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/bench/linkproxy"
	"github.com/riffle-dev/riffle/internal/pull"
)

// env is what a case runs against: one link, one image.
type env struct {
	*setupState
	f        flags
	link     *linkproxy.Link
	lk       link
	ref      string // the image, through the link
	indexURL string // the index service, through the link
	seq      int
}

// benchCase is one way of getting the image and running the workload.
// run does its own untimed preparation, then times from the start of the
// case (see timer) and cleans up everything it started, also on failure.
type benchCase struct {
	ID   string
	Name string
	run  func(ctx context.Context, e *env, w workload) (sample, error)
}

var allCases = []benchCase{
	{"a", "containerd full pull + ctr run", caseContainerd},
	{"w", "extracted overlayfs, warm (containerd, image present)", caseContainerdWarm},
	{"b", "riffle full pull", casePull},
	{"c", "riffle streaming, first run", caseStream},
	{"d", "riffle streaming, learned profile", caseProfile},
	{"e", "riffle streaming, warm node cache", caseWarmCache},
	{"f", "riffle, settled image", caseSettled},
}

func selectCases(s string) ([]benchCase, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil // only the other measurements (--tasks, --cached-read)
	}
	want := map[string]bool{}
	for _, id := range strings.Split(s, ",") {
		want[strings.TrimSpace(id)] = true
	}
	var out []benchCase
	for _, c := range allCases {
		if want[c.ID] {
			out = append(out, c)
			delete(want, c.ID)
		}
	}
	if len(want) > 0 || len(out) == 0 {
		return nil, fmt.Errorf("startbench: --cases %q: choose from a,w,b,c,d,e,f", s)
	}
	return out, nil
}

// notAvailable is a case the riffle binary cannot run yet.
type notAvailable string

func (n notAvailable) Error() string { return string(n) }

// sample is one timed run of a case.
type sample struct {
	Seconds   float64 `json:"seconds"`
	LinkBytes int64   `json:"linkBytes"`
	// CPUSeconds and PeakRSS are per node process (not the workload),
	// named by role: "containerd" (daemon and shims), "ctr pull",
	// "riffle pull", "riffle mount", "riffle run".
	CPUSeconds map[string]float64 `json:"cpuSeconds,omitempty"`
	PeakRSS    map[string]int64   `json:"peakRSSBytes,omitempty"`
	// StreamBytes splits a streamed run's compressed bytes from the
	// registry by what fetched them, as riffle run --verbose reports at the
	// container's exit: "range" (span reads: blocked reads, read-ahead and
	// profile prefetch by range), "pack" (prefetch packs), "background"
	// (whole-layer streams).
	StreamBytes map[string]int64 `json:"streamBytes,omitempty"`
}

// streamBytesRe matches riffle run's byte counts at the container's exit.
var streamBytesRe = regexp.MustCompile(`\b(wire_range|wire_pack|wire_background)=(\d+)`)

// parseStreamBytes reads the byte counts riffle run --verbose printed.
func parseStreamBytes(tail string) map[string]int64 {
	var out map[string]int64
	for _, m := range streamBytesRe.FindAllStringSubmatch(tail, -1) {
		n, err := strconv.ParseInt(m[2], 10, 64)
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string]int64{}
		}
		out[strings.TrimPrefix(m[1], "wire_")] = n
	}
	return out
}

func (s sample) resources() string {
	var parts []string
	for _, k := range sortedKeys(s.CPUSeconds) {
		parts = append(parts, fmt.Sprintf("%s %.1fs CPU %.0f MB", k, s.CPUSeconds[k], float64(s.PeakRSS[k])/1e6))
	}
	if len(s.StreamBytes) > 0 {
		var by []string
		for _, k := range sortedKeys(s.StreamBytes) {
			by = append(by, fmt.Sprintf("%s %.1f MB", k, float64(s.StreamBytes[k])/1e6))
		}
		parts = append(parts, "registry bytes by "+strings.Join(by, ", "))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, ", ")
}

func (s *sample) addProc(role string, cpu time.Duration, rss int64) {
	if s.CPUSeconds == nil {
		s.CPUSeconds, s.PeakRSS = map[string]float64{}, map[string]int64{}
	}
	s.CPUSeconds[role] += cpu.Seconds()
	s.PeakRSS[role] = max(s.PeakRSS[role], rss)
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// timer marks the start of a timed run: caches dropped, link bytes noted.
type timer struct {
	start time.Time
	bytes int64
	link  *linkproxy.Link
}

func (e *env) begin() timer {
	dropCaches()
	return timer{start: time.Now(), bytes: e.link.Bytes(), link: e.link}
}

// runWorkload runs argv (a launcher that runs w in the container: chroot,
// ctr run, riffle run) to the end, and fills the sample's time: to the
// first line of output for FirstLine workloads, else to exit. The
// launcher's own CPU and RSS are recorded as role when role is not "".
func runWorkload(ctx context.Context, t timer, w workload, role string, argv []string) (sample, error) {
	s, _, err := runWorkloadTail(ctx, t, w, role, argv)
	return s, err
}

// runWorkloadTail is runWorkload that also returns the end of the
// launcher's stderr.
func runWorkloadTail(ctx context.Context, t timer, w workload, role string, argv []string) (sample, string, error) {
	p, err := startProc(ctx, "workload", workloadEnv, argv[0], argv[1:]...)
	if err != nil {
		return sample{}, "", err
	}
	defer p.grp.remove()
	// riffle run's containers get cgroups below its own ("riffle/<id>",
	// runtime.Config.CgroupParent); their CPU is the workload's, not the
	// node's, so it is taken out. cpuacct charges every ancestor, so the
	// "riffle" group keeps the total after runc removes the container's.
	ctrs := group(filepath.Join(string(p.grp), "riffle"))
	// The launcher's own peak RSS is sampled too: wait4's maxrss would be
	// the largest of it and every descendant it reaped (runc, the
	// container's process).
	var ctrCPU, hwm atomic.Int64
	stopPoll := make(chan struct{})
	go func() {
		for {
			ctrCPU.Store(max(ctrCPU.Load(), int64(ctrs.cpu())))
			hwm.Store(max(hwm.Load(), vmHWM(p.cmd.Process.Pid)))
			select {
			case <-stopPoll:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var first time.Duration
	for line := range p.lines {
		// The workload's line, not a launcher's progress output.
		if first == 0 && strings.TrimSpace(line) == w.Expect {
			first = time.Since(t.start)
		}
	}
	err = p.wait()
	close(stopPoll)
	if err != nil {
		return sample{}, "", err
	}
	s := sample{Seconds: time.Since(t.start).Seconds(), LinkBytes: t.link.Bytes() - t.bytes}
	if w.FirstLine {
		if first == 0 {
			return sample{}, "", fmt.Errorf("startbench: %s did not print %q", w.Cmd, w.Expect)
		}
		s.Seconds = first.Seconds()
	}
	if role != "" {
		cpu, _ := p.stats()
		cpu -= time.Duration(max(ctrCPU.Load(), int64(ctrs.cpu())))
		s.addProc(role, cpu, hwm.Load())
	}
	s.StreamBytes = parseStreamBytes(p.tail.String())
	return s, p.tail.String(), nil
}

// workloadEnv is the environment of every launcher. Python must not write
// bytecode: the streamed root is read-only, and on the others the writes
// would be work the streamed case does not do.
var workloadEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "PYTHONDONTWRITEBYTECODE=1"}

// chrootArgs runs w in root, in a private mount namespace with the host's
// /dev and a /proc, as a container would have them: without them a
// workload's "> /dev/null" would create a file in the extracted tree (or
// fail on a read-only mount).
func chrootArgs(root string, w workload) []string {
	const script = `mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc" && exec chroot "$1" /bin/sh -c "$2"`
	return []string{"unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "-", root, w.Cmd}
}

// riffleRunArgs is the `riffle run` command line of cases b, c and e
// (and d, f). Keep the flags here, in one place, in step with the CLI.
func (e *env) riffleRunArgs(dataDir string, pull bool, w workload, flags ...string) []string {
	args := []string{e.bin, "run", "--data-dir", dataDir, "--verbose", "--env", "PYTHONDONTWRITEBYTECODE=1"}
	args = append(args, flags...)
	if pull {
		args = append(args, "--pull")
	} else if strings.Contains(e.runHelp, "--index-service") {
		// Indexes as riffle mount gets them here: from the index service,
		// through the link, not built by reading every layer.
		args = append(args, "--index-service", e.indexURL)
	}
	return append(args, e.ref, "--", "/bin/sh", "-c", w.Cmd)
}

// casePull is case b: `riffle pull` into a fresh node store, then the
// workload on the extracted tree.
func casePull(ctx context.Context, e *env, w workload) (sample, error) {
	data, err := e.scratch("riffle-pull")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(data)
	t := e.begin()
	if e.f.riffleRun {
		return runWorkload(ctx, t, w, "riffle run", e.riffleRunArgs(data, true, w))
	}
	cpu, rss, err := runProc(ctx, "riffle-pull", e.bin, "pull", "--data-dir", data, e.ref)
	if err != nil {
		return sample{}, err
	}
	root := pull.Store(filepath.Join(data, "images", "pulled")).RootFS(digest.Digest(e.digest))
	s, err := runWorkload(ctx, t, w, "", chrootArgs(root, w))
	s.addProc("riffle pull", cpu, rss)
	return s, err
}

// caseStream is case c: a cold node cache, a new mount, the workload.
func caseStream(ctx context.Context, e *env, w workload) (sample, error) {
	data, err := e.scratch("riffle-stream")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(data)
	e.clearProfiles()
	t := e.begin()
	return e.streamOnce(ctx, t, data, w)
}

// clearProfiles removes the startup profiles and prefetch packs earlier
// runs left with the index service, so a "first run" has none to prefetch.
func (e *env) clearProfiles() {
	for _, d := range []string{"profiles", "packs"} {
		if err := os.RemoveAll(filepath.Join(e.indexDir, d)); err != nil {
			fmt.Fprintf(os.Stderr, "startbench: %v\n", err)
		}
	}
}

// waitPacks waits until the index service has built the prefetch packs
// of every profile reported so far (it builds them in the background
// after a node reports a profile, and rebuilds a pack whose profile a
// later run changed), at most a minute. Case d then measures a node that
// finds them, as a task started a little later would, and the timed runs
// of e and f do not share the link and a core with a build. (Python f
// counted 41-44 MB over the link in timed runs: riffle run --settle
// exited before its profile report landed, so waiting for a pack file
// found the older pack while the report rebuilt it.)
func (e *env) waitPacks(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := e.svc.WaitPacks(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "startbench: prefetch packs still building after a minute: %v\n", err)
	}
}

// caseWarmCache is case e: the same workload ran once on this node (its
// spans are in the node cache), and a later task mounts the image anew.
func caseWarmCache(ctx context.Context, e *env, w workload) (sample, error) {
	data, err := e.scratch("riffle-warm")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(data)
	e.clearProfiles()
	if _, err := e.streamOnce(ctx, e.begin(), data, w); err != nil {
		return sample{}, fmt.Errorf("filling the node cache: %w", err)
	}
	// The untimed run reported a startup profile, and the index service
	// builds its packs by reading the layers through the link (about 230
	// MB after reading every file): let it finish, or the timed run shares
	// the link and a core with it (readall e and f counted 140-240 MB over
	// the link and ran 1.2-1.4 times as long as containerd's overlayfs).
	e.waitPacks(ctx)
	// The warm node has no learned profile: it has its cache.
	e.clearProfiles()
	t := e.begin()
	return e.streamOnce(ctx, t, data, w)
}

// streamOnce mounts the image with the node cache under data and runs w in
// it: `riffle mount` (its own process, measured) + chroot, or riffle run.
func (e *env) streamOnce(ctx context.Context, t timer, data string, w workload) (sample, error) {
	if e.f.riffleRun {
		return runWorkload(ctx, t, w, "riffle run", e.riffleRunArgs(data, false, w))
	}
	mnt := filepath.Join(data, "mnt")
	m, err := startProc(ctx, "riffle-mount", os.Environ(), e.bin, "mount",
		"--index-service", e.indexURL, "--cache-dir", filepath.Join(data, "cache"), e.ref, mnt)
	if err != nil {
		return sample{}, err
	}
	defer func() {
		killRootedUnder(mnt) // a workload left by a failure keeps the mount busy
		m.stop(10 * time.Second)
		unmountUnder(mnt)
		m.grp.remove()
	}()
	ready := false
	for line := range m.lines {
		if strings.HasPrefix(line, "mounted ") {
			ready = true
			break
		}
	}
	if !ready {
		return sample{}, m.wait()
	}
	s, err := runWorkload(ctx, t, w, "", chrootArgs(mnt, w))
	if err != nil {
		return sample{}, err
	}
	// The mount's process serves until it is told to stop; its peak RSS is
	// read while it is alive, its CPU after it has exited.
	rss := vmHWM(m.cmd.Process.Pid)
	m.stop(30 * time.Second)
	for range m.lines {
	}
	cpu, _ := m.stats()
	s.addProc("riffle mount", cpu, rss)
	return s, nil
}

// caseProfile is case d: the image ran once on another node, whose run
// left its learned startup profile with the index service (riffle run
// reports it there, by layer digest), and this node starts it cold.
// riffle run has no flag for profiles: they are on whenever it is given
// --index-service, so the case needs --riffle-run and nothing more.
func caseProfile(ctx context.Context, e *env, w workload) (sample, error) {
	if !e.f.riffleRun {
		return sample{}, notAvailable("needs `riffle run` (--riffle-run): profiles are recorded and used by the node engine it drives")
	}
	first, err := e.scratch("riffle-profile-first")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(first)
	e.clearProfiles()
	if _, err := runWorkload(ctx, e.begin(), w, "", e.riffleRunArgs(first, false, w)); err != nil {
		return sample{}, fmt.Errorf("first run (records the profile): %w", err)
	}
	e.waitPacks(ctx)
	data, err := e.scratch("riffle-profile")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(data)
	return runWorkload(ctx, e.begin(), w, "riffle run", e.riffleRunArgs(data, false, w))
}

// caseSettled is case f: every layer of the image is complete on the node
// and settled into overlayfs; a later task starts from it.
func caseSettled(ctx context.Context, e *env, w workload) (sample, error) {
	if !e.f.riffleRun {
		return sample{}, notAvailable("needs `riffle run` (--riffle-run): settling is done by the node engine it drives")
	}
	data, err := e.scratch("riffle-settled")
	if err != nil {
		return sample{}, err
	}
	defer os.RemoveAll(data)
	// The first task runs w; --settle keeps riffle run until the layers
	// streaming in the background are complete, as riffle serve's node
	// would go on streaming them after the task.
	if _, err := runWorkload(ctx, e.begin(), w, "", e.riffleRunArgs(data, false, w, "--settle")); err != nil {
		return sample{}, fmt.Errorf("first run, until the image settled: %w", err)
	}
	// The untimed run reported a startup profile, and the index service
	// builds its packs by reading the layers through the link (about 230
	// MB after reading every file): let it finish, or the timed run shares
	// the link and a core with it (readall e and f counted 140-240 MB over
	// the link and ran 1.2-1.4 times as long as containerd's overlayfs).
	e.waitPacks(ctx)
	s, tail, err := runWorkloadTail(ctx, e.begin(), w, "riffle run", e.riffleRunArgs(data, false, w))
	if err == nil && !strings.Contains(tail, "method=settled") {
		err = fmt.Errorf("startbench: the image had not settled after a run with --settle (riffle run --verbose said:\n%s)", tail)
	}
	return s, err
}
