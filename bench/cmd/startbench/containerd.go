package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// containerd is a containerd daemon of the benchmark's own: its own root,
// state directory, socket and config, never the system's service, so a
// cold run starts from an empty content store and no snapshots.
type containerd struct {
	dir  string
	sock string
	p    *proc
}

// containerdConfig disables the CRI plugin (it would want a sandbox image
// from a public registry) and keeps every path under the run's directory.
const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`

// startContainerd starts a fresh daemon under dir (in its own cgroup, which
// its shims inherit) and waits until it answers.
func startContainerd(ctx context.Context, dir string) (*containerd, error) {
	c := &containerd{dir: dir, sock: filepath.Join(dir, "containerd.sock")}
	cfg := fmt.Sprintf(containerdConfig, filepath.Join(dir, "root"), filepath.Join(dir, "state"),
		c.sock, filepath.Join(dir, "containerd.ttrpc.sock"), filepath.Join(dir, "opt"))
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(ctx, "containerd", os.Environ(), "containerd", "--config", filepath.Join(dir, "config.toml"), "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	c.p = p
	go func() { // containerd writes nothing to stdout; keep the pipe drained
		for range p.lines {
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := exec.CommandContext(ctx, "ctr", "-a", c.sock, "version").Run()
		if err == nil {
			return c, nil
		}
		select {
		case <-p.done:
			c.close()
			return nil, fmt.Errorf("startbench: containerd exited at start: %v\n%s", p.err, p.tail)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.close()
			return nil, fmt.Errorf("startbench: containerd did not answer on %s: %w\n%s", c.sock, err, p.tail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ctr is the argv of a ctr command against this daemon.
func (c *containerd) ctr(args ...string) []string {
	return append([]string{"ctr", "-a", c.sock, "-n", "bench"}, args...)
}

// close stops the daemon and its shims, unmounts whatever overlay
// snapshots are still mounted, and removes its root.
func (c *containerd) close() {
	killRootedUnder(c.dir) // containers still running after a failure
	if c.p != nil {
		c.p.stop(10 * time.Second)
		killGroup(c.p.grp) // shims outlive the daemon
		c.p.grp.remove()
	}
	unmountUnder(c.dir)
	if err := os.RemoveAll(c.dir); err != nil {
		fmt.Fprintf(os.Stderr, "startbench: %v\n", err)
	}
}

// pull runs `ctr image pull` (fetch and unpack into overlayfs snapshots)
// and returns ctr's CPU time and peak RSS.
func (c *containerd) pull(ctx context.Context, ref string) (time.Duration, int64, error) {
	argv := c.ctr("images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref)
	return runProc(ctx, "ctr-pull", argv[0], argv[1:]...)
}

// runArgs is the `ctr run` of w: runc, a new overlayfs snapshot of the
// image, removed when it exits.
func (c *containerd) runArgs(ref, id string, w workload) []string {
	return c.ctr("run", "--rm", "--snapshotter", "overlayfs", "--env", "PYTHONDONTWRITEBYTECODE=1",
		ref, id, "/bin/sh", "-c", w.Cmd)
}

// caseContainerd is case a: a fresh containerd, `ctr image pull`, `ctr run`.
func caseContainerd(ctx context.Context, e *env, w workload) (sample, error) {
	dir, err := e.scratch("containerd")
	if err != nil {
		return sample{}, err
	}
	c, err := startContainerd(ctx, dir)
	if err != nil {
		return sample{}, err
	}
	defer c.close()
	t := e.begin()
	cpu0 := c.p.grp.cpu()
	pcpu, prss, err := c.pull(ctx, e.ref)
	if err != nil {
		return sample{}, err
	}
	s, err := runWorkload(ctx, t, w, "ctr run", c.runArgs(e.ref, fmt.Sprintf("bench-%d", e.seq), w))
	if err != nil {
		return sample{}, err
	}
	s.addProc("ctr pull", pcpu, prss)
	s.addProc("containerd", c.p.grp.cpu()-cpu0, vmHWM(c.p.cmd.Process.Pid))
	return s, nil
}

// caseContainerdWarm is case w: the image is already pulled and extracted;
// only `ctr run` is timed (page cache dropped first). It is the "already
// extracted overlayfs image" the warm targets compare against.
func caseContainerdWarm(ctx context.Context, e *env, w workload) (sample, error) {
	dir, err := e.scratch("containerd-warm")
	if err != nil {
		return sample{}, err
	}
	c, err := startContainerd(ctx, dir)
	if err != nil {
		return sample{}, err
	}
	defer c.close()
	if _, _, err := c.pull(ctx, e.ref); err != nil {
		return sample{}, err
	}
	t := e.begin()
	cpu0 := c.p.grp.cpu()
	s, err := runWorkload(ctx, t, w, "ctr run", c.runArgs(e.ref, fmt.Sprintf("bench-%d", e.seq), w))
	if err != nil {
		return sample{}, err
	}
	s.addProc("containerd", c.p.grp.cpu()-cpu0, vmHWM(c.p.cmd.Process.Pid))
	return s, nil
}
