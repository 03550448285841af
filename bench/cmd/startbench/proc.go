package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupRoot is in the cgroup v1 cpuacct hierarchy this machine has (its
// cgroup2 mount has no controllers enabled), one per invocation. Each
// process the benchmark measures runs in its own group below it, so a
// daemon's CPU time includes the helpers it forks (containerd's shims) and
// nothing of the benchmark's own process, which also runs the emulated link.
var cgroupRoot = fmt.Sprintf("/sys/fs/cgroup/cpuacct/riffle-startbench-%d", os.Getpid())

// group is one cpuacct cgroup.
type group string

// newGroup creates an empty cpuacct group named name (a fresh one if a
// group of that name is left over from an interrupted run).
func newGroup(name string) (group, error) {
	p := filepath.Join(cgroupRoot, name)
	killGroup(group(p))
	_ = os.Remove(p)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", fmt.Errorf("startbench: cgroup %s: %w", p, err)
	}
	return group(p), nil
}

// add moves pid into g.
func (g group) add(pid int) error {
	if g == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(string(g), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// cpu is the CPU time (user+system) used so far by every process that has
// been in g.
func (g group) cpu() time.Duration {
	b, err := os.ReadFile(filepath.Join(string(g), "cpuacct.usage"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return time.Duration(n)
}

// pids lists the processes in g.
func (g group) pids() []int {
	b, err := os.ReadFile(filepath.Join(string(g), "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// remove kills what is left in g and deletes it with the groups below it
// (riffle run's containers get theirs there), deepest first.
func (g group) remove() {
	if g == "" {
		return
	}
	var dirs []string
	_ = filepath.WalkDir(string(g), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		killGroup(group(dirs[i]))
		_ = os.Remove(dirs[i])
	}
}

// killGroup SIGKILLs every process in g and waits briefly for them to go.
func killGroup(g group) {
	for range 50 {
		pids := g.pids()
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vmHWM is the peak resident set size of a live process, in bytes.
func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// maxRSS is the peak RSS of an exited child, in bytes.
func maxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss << 10
	}
	return 0
}

// proc is a measured child process: started in its own cgroup, its stdout
// scanned line by line.
type proc struct {
	name  string
	cmd   *exec.Cmd
	grp   group
	lines chan string // stdout lines; closed at EOF
	done  chan struct{}
	err   error // Wait's result, set before done is closed
	tail  *tailBuffer
}

// startProc starts name args in a new cgroup called grpName. Its stdout
// lines arrive on p.lines (read them, or the child blocks); stderr is kept
// (the last few KB) for error messages.
func startProc(ctx context.Context, grpName string, env []string, name string, args ...string) (*proc, error) {
	g, err := newGroup(grpName)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	p := &proc{name: name, cmd: cmd, grp: g, lines: make(chan string, 64), done: make(chan struct{}), tail: &tailBuffer{max: 4096}}
	cmd.Stderr = p.tail
	out, err := cmd.StdoutPipe()
	if err != nil {
		g.remove()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		g.remove()
		return nil, fmt.Errorf("startbench: %s: %w", name, err)
	}
	if err := g.add(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		g.remove()
		return nil, err
	}
	go func() {
		s := bufio.NewScanner(out)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			p.lines <- s.Text()
		}
		_, _ = io.Copy(io.Discard, out)
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// wait waits for p to exit and returns an error that carries its stderr.
func (p *proc) wait() error {
	for range p.lines {
	}
	<-p.done
	if p.err != nil {
		return fmt.Errorf("startbench: %s %s: %w\n%s", p.name, strings.Join(p.cmd.Args[1:], " "), p.err, p.tail.String())
	}
	return nil
}

// stop sends SIGTERM, waits up to grace, then kills the process group.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	go func() { // the reader must not block on a full channel
		for range p.lines {
		}
	}()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// stats is the CPU time of p's cgroup and the peak RSS of p itself; call
// it after p has exited.
func (p *proc) stats() (time.Duration, int64) {
	cpu := p.grp.cpu()
	var rss int64
	if p.cmd.ProcessState != nil {
		rss = maxRSS(p.cmd.ProcessState)
	}
	return cpu, rss
}

// runProc runs a command to completion in its own cgroup and returns its
// CPU time and peak RSS.
func runProc(ctx context.Context, grpName string, name string, args ...string) (time.Duration, int64, error) {
	p, err := startProc(ctx, grpName, os.Environ(), name, args...)
	if err != nil {
		return 0, 0, err
	}
	defer p.grp.remove()
	if err := p.wait(); err != nil {
		return 0, 0, err
	}
	cpu, rss := p.stats()
	return cpu, rss, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// killRootedUnder SIGKILLs every process whose root directory is at or
// below dir: containers and chroot workloads a failed or interrupted case
// left running (a container outlives its killed shim).
func killRootedUnder(dir string) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, de := range ents {
		pid, err := strconv.Atoi(de.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		root, err := os.Readlink(filepath.Join("/proc", de.Name(), "root"))
		if err == nil && (root == dir || strings.HasPrefix(root, dir+"/")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder lazily unmounts every mount at or below dir, deepest first,
// so an interrupted case leaves no FUSE or overlay mount behind.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescape(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			fmt.Fprintf(os.Stderr, "startbench: unmount %s: %v\n", mps[i], err)
		}
	}
}

// unescape decodes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// dropCaches writes dirty pages and drops the page, dentry and inode
// caches, so a cold run reads from disk and the link, not from memory.
func dropCaches() {
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}
