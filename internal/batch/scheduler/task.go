package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/runtime"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// containerHostsFile is where a container runnable finds the hosts file.
const containerHostsFile = "/etc/cloudbatch-taskgroup-hosts"

var errMaxRunDuration = errors.New("scheduler: maxRunDuration reached")

// runLimit is how maxRunDuration is enforced. The stop grace is part of
// the limit, as Batch users read maxRunDuration ("the amount of time that
// a task is permitted to run"): runnables get SIGTERM at soft and
// whatever still runs gets SIGKILL at the limit itself, so a task never
// outlives its maxRunDuration by the grace period.
type runLimit struct {
	limit, grace time.Duration
}

// newRunLimit takes the grace out of the end of the limit, at most a
// tenth of it, so a short limit is not mostly grace.
func newRunLimit(limit, grace time.Duration) runLimit {
	return runLimit{limit: limit, grace: min(grace, limit/10)}
}

func (l runLimit) soft() time.Duration { return l.limit - l.grace }

// note explains the stop in the task's event and log.
func (l runLimit) note() string {
	return fmt.Sprintf("The task reached its maxRunDuration of %v and was stopped: SIGTERM at %v, SIGKILL at %v to what still ran (the %v stop grace is part of maxRunDuration).",
		l.limit, l.soft(), l.limit, l.grace)
}

// result is how one attempt of a task ended.
type result struct {
	code int    // 0: success
	note string // appended to the task's state event
}

// proc is a started runnable.
type proc interface {
	// wait returns the exit status once it exits.
	wait() (int, error)
	// done is closed when it has exited.
	done() <-chan struct{}
	// stop ends it: SIGTERM, then SIGKILL after the grace period or
	// when ctx ends, whichever is first. It returns once it has exited.
	stop(ctx context.Context)
}

// attempt runs the task's runnables once; attempt counts from 0 and prev
// is the exit code of the attempt before it.
func (r *jobRun) attempt(ctx context.Context, idx int64, attempt int, prev int32) result {
	s := r.s
	spec := r.group.GetTaskSpec()
	// tctx ends when runnables must stop (a stop of the job, or
	// maxRunDuration less the grace); killCtx when whatever still runs is
	// killed (maxRunDuration; never, without one: stops get the whole grace).
	tctx, killCtx := ctx, context.WithoutCancel(ctx)
	var limit runLimit
	if d := spec.GetMaxRunDuration(); d != nil && d.AsDuration() > 0 {
		limit = newRunLimit(d.AsDuration(), s.opts.StopGrace)
		var cancel, cancelKill context.CancelFunc
		tctx, cancel = context.WithTimeoutCause(ctx, limit.soft(), errMaxRunDuration)
		defer cancel()
		killCtx, cancelKill = context.WithTimeout(killCtx, limit.limit)
		defer cancelKill()
	}
	tl, err := s.logs.OpenTask(r.name, idx, r.logPath)
	if err != nil {
		r.taskEvent(ctx, idx, logsFailedEvent(err))
		return result{code: ExitNotStarted, note: "Riffle could not open the task's log files."}
	}
	defer tl.Close()
	if attempt > 0 {
		// The log holds every attempt; say where a new one begins.
		tl.Printf("riffle: retry: attempt %d of %d of task %d begins (BATCH_TASK_RETRY_ATTEMPT=%d); the previous attempt ended with exit code %d.",
			attempt+1, spec.GetMaxRetryCount()+1, idx, attempt, prev)
	}
	work := filepath.Join(r.workDir, "task-"+strconv.FormatInt(idx, 10))
	if err := os.MkdirAll(work, 0o755); err != nil {
		return result{code: ExitNotStarted, note: fmt.Sprintf("Riffle could not create the task's working directory: %v.", err)}
	}
	binds, err := r.taskVolumes(tctx, idx)
	if err != nil {
		r.taskEvent(ctx, idx, volumeFailedEvent(err))
		tl.Printf("riffle: %v", err)
		return result{code: ExitNotStarted, note: "A volume could not be mounted."}
	}

	var (
		failed bool
		res    result
		bgs    []proc
		ended  = func() bool { return tctx.Err() != nil }
	)
	defer func() {
		for _, p := range bgs {
			p.stop(killCtx)
		}
	}()
	for ri, rn := range spec.GetRunnables() {
		if ended() {
			break // maxRunDuration stops even alwaysRun runnables
		}
		if failed && !rn.GetAlwaysRun() {
			continue
		}
		if rn.GetBarrier() != nil {
			if b := r.barriers[ri]; b != nil {
				_ = b.wait(tctx, idx) // only ends early with tctx, which the loop checks
			}
			continue
		}
		env := r.env(idx, attempt, rn)
		p, note, err := r.start(tctx, idx, ri, rn, env, binds, work, tl)
		if err != nil {
			code := ExitNotStarted
			var se *runtime.StartError
			if errors.As(err, &se) {
				code = se.ExitCode
			}
			tl.Printf("riffle: runnable %d did not start: %v", ri, err)
			r.taskEvent(ctx, idx, runnableFailedEvent(ri, err))
			// A background runnable that cannot start fails the task too:
			// the runnables after it may wait for what it was to do.
			if !rn.GetIgnoreExitStatus() {
				failed, res = true, result{code: code, note: note}
			}
			continue
		}
		if rn.GetBackground() {
			bgs = append(bgs, p)
			continue
		}
		rctx := tctx
		var cancel context.CancelFunc = func() {}
		if d := rn.GetTimeout(); d != nil && d.AsDuration() > 0 {
			rctx, cancel = context.WithTimeout(tctx, d.AsDuration())
		}
		timedOut := false
		select {
		case <-p.done():
		case <-rctx.Done():
			timedOut = tctx.Err() == nil
			p.stop(killCtx)
		}
		cancel()
		code, werr := p.wait()
		if werr != nil && code == 0 {
			code = ExitNotStarted
		}
		if timedOut {
			ev := runnableTimeoutEvent(ri, rn.GetTimeout().AsDuration(), code)
			tl.Printf("riffle: %s", ev.desc)
			r.taskEvent(ctx, idx, ev)
			if code == 0 {
				code = ExitRunnableTimeout
			}
		}
		if code != 0 && !rn.GetIgnoreExitStatus() {
			failed, res = true, result{code: code}
		}
	}
	if context.Cause(tctx) == errMaxRunDuration && ctx.Err() == nil {
		for _, p := range bgs {
			p.stop(killCtx) // before the task is reported ended
		}
		tl.Printf("riffle: %s", limit.note())
		return result{code: ExitMaxRunDuration, note: limit.note()}
	}
	return res
}

// env is a runnable's environment, lowest precedence first: the task
// group's (taskSpec.environments, then taskSpec.environment), the task's
// (taskEnvironments[idx]), the runnable's, then the BATCH_* variables.
func (r *jobRun) env(idx int64, attempt int, rn *batchpb.Runnable) []string {
	spec := r.group.GetTaskSpec()
	var out []string
	add := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = append(out, k+"="+m[k])
		}
	}
	add(spec.GetEnvironments())
	add(spec.GetEnvironment().GetVariables())
	if envs := r.group.GetTaskEnvironments(); idx < int64(len(envs)) {
		add(envs[idx].GetVariables())
	}
	add(rn.GetEnvironment().GetVariables())
	_, _, id, _ := job.SplitName(r.name)
	out = append(out,
		"BATCH_TASK_INDEX="+strconv.FormatInt(idx, 10),
		"BATCH_TASK_COUNT="+strconv.FormatInt(r.group.GetTaskCount(), 10),
		"BATCH_JOB_ID="+id,
		"BATCH_JOB_UID="+r.job.GetUid(),
		"BATCH_TASK_RETRY_ATTEMPT="+strconv.Itoa(attempt),
	)
	if r.hosts != "" {
		out = append(out, "BATCH_HOSTS_FILE="+r.hosts)
	}
	return out
}

// taskVolumes prepares TaskSpec.volumes on the host and returns them as
// bind mounts for container runnables (Batch mounts every task volume
// into containers at the same path).
func (r *jobRun) taskVolumes(ctx context.Context, idx int64) ([]string, error) {
	var binds []string
	for i, v := range r.group.GetTaskSpec().GetVolumes() {
		p := v.GetMountPath()
		field := fmt.Sprintf("taskGroups[0].taskSpec.volumes[%d]", i)
		if p == "" || !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%s.mountPath %q must be an absolute path", field, p)
		}
		switch v.GetSource().(type) {
		case *batchpb.Volume_Nfs:
			if err := r.mountNFS(ctx, v); err != nil {
				return nil, fmt.Errorf("%s.nfs: the NFS share could not be mounted at %s: %v", field, p, err)
			}
		case nil:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return nil, fmt.Errorf("%s.mountPath: %v", field, err)
			}
		default:
			return nil, fmt.Errorf("%s: this volume source is not supported on one machine", field)
		}
		mode := ""
		for _, o := range v.GetMountOptions() {
			if o == "ro" {
				mode = ":ro"
			}
		}
		binds = append(binds, p+":"+p+mode)
	}
	return binds, nil
}

// start starts runnable ri; note is set when a failure to start should
// be explained in the task's state event.
func (r *jobRun) start(ctx context.Context, idx int64, ri int, rn *batchpb.Runnable, env, binds []string, work string, tl taskLog) (proc, string, error) {
	stdout, stderr := tl.Writers()
	switch x := rn.GetExecutable().(type) {
	case *batchpb.Runnable_Script_:
		p, err := r.startScript(ctx, ri, x.Script, env, work, stdout, stderr)
		if err != nil {
			stdout.Close()
			stderr.Close()
		}
		return p, "", err
	case *batchpb.Runnable_Container_:
		p, note, err := r.startContainer(ctx, idx, ri, rn, x.Container, env, binds, stdout, stderr)
		if err != nil {
			stdout.Close()
			stderr.Close()
		}
		return p, note, err
	}
	stdout.Close()
	stderr.Close()
	return nil, "", fmt.Errorf("runnables[%d]: no container, script or barrier", ri)
}

// taskLog is what a runnable needs of the task's logs.
type taskLog interface {
	Writers() (stdout, stderr io.WriteCloser)
	Printf(format string, args ...any)
}

// scriptProc is a script runnable: a host process in its own process
// group, so stopping it reaches everything it started.
type scriptProc struct {
	cmd   *exec.Cmd
	grace time.Duration
	ch    chan struct{}
	code  int
	err   error
	once  sync.Once
	outs  []io.Closer
}

func (r *jobRun) startScript(ctx context.Context, ri int, sc *batchpb.Runnable_Script, env []string, work string, stdout, stderr io.WriteCloser) (proc, error) {
	path := sc.GetPath()
	if t, ok := sc.GetCommand().(*batchpb.Runnable_Script_Text); ok {
		path = filepath.Join(work, fmt.Sprintf("runnable-%d.sh", ri))
		if err := os.WriteFile(path, []byte(t.Text), 0o755); err != nil {
			return nil, fmt.Errorf("writing the script: %w", err)
		}
	}
	if path == "" {
		return nil, errors.New("the script has neither text nor path")
	}
	// As on a Batch VM: a "#!" line picks the interpreter, else /bin/sh.
	args := []string{"/bin/sh", path}
	if hasShebang(path) {
		args = []string{path}
	}
	cmd, cleanup, err := r.scriptCommand(ri, args, env, work)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Output pipes held open by a leftover grandchild must not block us.
	cmd.WaitDelay = 2 * time.Second
	if err := ctx.Err(); err != nil {
		cleanup()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cleanup()
		return nil, err
	}
	p := &scriptProc{cmd: cmd, grace: r.s.opts.StopGrace, ch: make(chan struct{}), outs: []io.Closer{stdout, stderr}}
	go func() {
		err := cmd.Wait()
		// What the script left behind goes with it.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cleanup()
		p.code = exitCode(cmd.ProcessState, err)
		if p.code >= 0 {
			err = nil
		}
		p.err = err
		for _, c := range p.outs {
			_ = c.Close() // a log writer's Close only flushes a partial line
		}
		close(p.ch)
	}()
	return p, nil
}

func hasShebang(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [2]byte
	n, _ := io.ReadFull(f, b[:])
	return n == 2 && string(b[:]) == "#!"
}

// exitCode is a process's status as a shell reports it (128+n for signal n).
func exitCode(ps *os.ProcessState, err error) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func (p *scriptProc) wait() (int, error)    { <-p.ch; return p.code, p.err }
func (p *scriptProc) done() <-chan struct{} { return p.ch }
func (p *scriptProc) stop(ctx context.Context) {
	p.once.Do(func() {
		pid := p.cmd.Process.Pid
		// Errors only say the group is gone already.
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		t := time.NewTimer(p.grace)
		defer t.Stop()
		select {
		case <-p.ch:
			return
		case <-t.C:
		case <-ctx.Done():
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	})
	<-p.ch
}

// containerProc is a container runnable under runc.
type containerProc struct {
	c       *runtime.Container
	rfs     *RootFS
	log     *slog.Logger
	ch      chan struct{}
	code    int
	err     error
	outs    []io.Closer
	stopped sync.Once
}

func (p *containerProc) wait() (int, error)    { <-p.ch; return p.code, p.err }
func (p *containerProc) done() <-chan struct{} { return p.ch }
func (p *containerProc) stop(ctx context.Context) {
	p.stopped.Do(func() {
		if err := p.c.Stop(ctx); err != nil {
			p.log.Warn("scheduler: stopping a container", "container", p.c.ID(), "err", err)
		}
	})
	<-p.ch
}

func (r *jobRun) startContainer(ctx context.Context, idx int64, ri int, rn *batchpb.Runnable, c *batchpb.Runnable_Container, env, binds []string, stdout, stderr io.WriteCloser) (proc, string, error) {
	s := r.s
	field := fmt.Sprintf("runnables[%d].container", ri)
	if s.opts.Runtime == nil || s.opts.Images == nil {
		return nil, "Container runnables need the container runtime (runc), which this Riffle runs without.",
			fmt.Errorf("%s: this Riffle has no container runtime; install runc and restart riffle serve", field)
	}
	t0 := time.Now()
	rfs, err := r.rootfs(ctx, idx, ri, c)
	if err != nil {
		return nil, "The container image could not be fetched.", fmt.Errorf("%s.imageUri %s: %w", field, c.GetImageUri(), err)
	}
	ready := time.Since(t0)
	var before streamfs.Stats
	if rfs.Stats != nil {
		before = rfs.Stats()
	}
	volumes := append(append([]string{}, c.GetVolumes()...), binds...)
	if r.hosts != "" {
		volumes = append(volumes, r.hosts+":"+containerHostsFile+":ro")
		for i, e := range env {
			if len(e) > len("BATCH_HOSTS_FILE=") && e[:len("BATCH_HOSTS_FILE=")] == "BATCH_HOSTS_FILE=" {
				env[i] = "BATCH_HOSTS_FILE=" + containerHostsFile
			}
		}
	}
	_, _, jobID, _ := job.SplitName(r.name)
	cr := r.group.GetTaskSpec().GetComputeResource()
	spec := &runtime.Spec{
		Name:                 fmt.Sprintf("%s-t%d-r%d", jobID, idx, ri),
		Lower:                rfs.Lower,
		Image:                rfs.Config,
		Entrypoint:           c.GetEntrypoint(),
		Commands:             c.GetCommands(),
		Env:                  env,
		Volumes:              volumes,
		CPUMilli:             cr.GetCpuMilli(),
		MemoryMiB:            cr.GetMemoryMib(),
		BlockExternalNetwork: c.GetBlockExternalNetwork(),
		Options:              c.GetOptions(),
		Labels:               rn.GetLabels(),
		StopGrace:            s.opts.StopGrace,
	}
	ctr, err := s.opts.Runtime.Start(ctx, spec, stdout, stderr)
	if err != nil {
		r.imageProblems(idx, ri, c.GetImageUri(), rfs, t0)
		rfs.Release()
		return nil, "", err
	}
	r.taskEvent(ctx, idx, imageReadyEvent(ri, c.GetImageUri(), rfs, ready, time.Since(t0)))
	p := &containerProc{c: ctr, rfs: rfs, log: s.log, ch: make(chan struct{}), outs: []io.Closer{stdout, stderr}}
	go func() {
		p.code, p.err = ctr.Wait(context.Background())
		for _, c := range p.outs {
			_ = c.Close() // a log writer's Close only flushes a partial line
		}
		if rfs.Stats != nil {
			r.taskEvent(context.Background(), idx, imageStreamedBytesEvent(ri, statsDelta(before, rfs.Stats())))
		}
		r.imageProblems(idx, ri, c.GetImageUri(), rfs, t0)
		rfs.Release()
		close(p.ch)
	}()
	return p, "", nil
}

// imageProblems records events for the streamed image's failed fetches
// since the runnable began (corrupt data, registry unreachable): the I/O
// errors the container saw do not say why.
func (r *jobRun) imageProblems(idx int64, ri int, imageURI string, rfs *RootFS, since time.Time) {
	if rfs.Problems == nil {
		return
	}
	for _, ev := range imageProblemEvents(ri, imageURI, rfs.Problems(), since) {
		r.taskEvent(context.Background(), idx, ev)
	}
}

// rootfs gets the image of a container runnable: streamed when asked and
// possible, else pulled, with an event saying why streaming was not used.
func (r *jobRun) rootfs(ctx context.Context, idx int64, ri int, c *batchpb.Runnable_Container) (*RootFS, error) {
	s := r.s
	auth := Auth{Username: c.GetUsername(), Password: c.GetPassword()}
	if c.GetEnableImageStreaming() {
		argv := c.GetCommands()
		if e := c.GetEntrypoint(); e != "" {
			argv = append([]string{e}, argv...)
		}
		opts := []node.StreamOption{node.WithExec(argv...)}
		if r.job.GetLabels()[job.BackgroundStreamLabel] == "off" {
			opts = append(opts, node.WithoutBackground())
		}
		rfs, err := s.opts.Images.Stream(ctx, c.GetImageUri(), auth, opts...)
		if err == nil {
			return rfs, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		why := "streaming failed"
		if errors.Is(err, streamfs.ErrNotEligible) {
			why = "the image cannot be streamed"
		}
		r.taskEvent(ctx, idx, imageStreamFallbackEvent(ri, why, err))
	}
	return s.opts.Images.Pull(ctx, c.GetImageUri(), auth)
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
