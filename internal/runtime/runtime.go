package runtime

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
)

// IDPrefix starts every container ID Riffle creates.
const IDPrefix = "riffle-"

// ErrStart marks a container that runc could not start (a missing
// executable, a bad mount, a cgroup failure). Check it with errors.Is; the
// concrete *StartError carries the exit code Docker would report.
var ErrStart = errors.New("runtime: container did not start")

// StartError says why runc could not start a container.
type StartError struct {
	// ExitCode is what `docker run` exits with for the same failure: 127
	// when the executable does not exist, 126 when it cannot be executed,
	// 125 for any other failure to start.
	ExitCode int
	// Message is runc's own error message.
	Message string
}

func (e *StartError) Error() string { return "runtime: container did not start: " + e.Message }

// Unwrap makes errors.Is(err, ErrStart) hold.
func (e *StartError) Unwrap() error { return ErrStart }

// Config configures a Runtime.
type Config struct {
	// Root is the directory the runtime owns, inside Riffle's data dir. runc
	// keeps its state in Root/runc (runc --root) and every task gets a
	// directory in Root/tasks. Required.
	Root string
	// Runc is the runc binary. Default: "runc" found on PATH.
	Runc string
	// StopGrace is the default wait between SIGTERM and SIGKILL. Default 10s.
	StopGrace time.Duration
	// CgroupParent is the cgroup (relative to Riffle's own cgroup in each
	// hierarchy) under which containers get theirs. Relative, so a Riffle
	// run inside a limited cgroup keeps its containers inside it. Default
	// "riffle".
	CgroupParent string
	// Logger receives debug and warning records. Default: none.
	Logger *slog.Logger
}

// Runtime starts containers under one runc root.
type Runtime struct {
	cfg   Config
	runc  *runc.Runc
	tasks string
	log   *slog.Logger
}

// New returns a Runtime rooted at cfg.Root, creating its directories. It does
// not clean up after a previous process; call Cleanup for that before
// starting containers.
func New(cfg Config) (*Runtime, error) {
	if cfg.Root == "" || !filepath.IsAbs(cfg.Root) {
		return nil, fmt.Errorf("runtime: Config.Root %q must be an absolute directory", cfg.Root)
	}
	if cfg.Runc == "" {
		cfg.Runc = "runc"
	}
	p, err := exec.LookPath(cfg.Runc)
	if err != nil {
		return nil, fmt.Errorf("runtime: runc binary: %w; install runc (Debian package runc)", err)
	}
	cfg.Runc = p
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "riffle"
	}
	cfg.CgroupParent = strings.Trim(cfg.CgroupParent, "/")
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rt := &Runtime{cfg: cfg, tasks: filepath.Join(cfg.Root, "tasks"), log: log}
	rt.runc = rt.newRunc("")
	for _, d := range []string{rt.runc.Root, rt.tasks} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
	}
	return rt, nil
}

func (r *Runtime) newRunc(logFile string) *runc.Runc {
	rc := &runc.Runc{
		Command: r.cfg.Runc,
		Root:    filepath.Join(r.cfg.Root, "runc"),
		// A process group of its own: a Ctrl-C at Riffle's terminal must not
		// reach containers behind Riffle's back; Riffle stops them itself.
		Setpgid: true,
	}
	if logFile != "" {
		rc.Log, rc.LogFormat = logFile, runc.JSON
	}
	return rc
}

// Container is one running (or finished) container.
type Container struct {
	id, dir string
	rt      *Runtime
	pid     int
	grace   time.Duration

	done     chan struct{}
	exitCode int
	err      error
}

// ID returns the runc container ID ("riffle-...").
func (c *Container) ID() string { return c.id }

// Pid returns the host PID of the container's first process.
func (c *Container) Pid() int { return c.pid }

// UpperDir returns the overlay's upper directory, where the container's
// writes land; it is removed when the container ends.
func (c *Container) UpperDir() string { return filepath.Join(c.dir, "upper") }

// Done is closed once the container has exited and its mounts and
// directories are gone.
func (c *Container) Done() <-chan struct{} { return c.done }

// Wait waits for the container to exit and its resources to be released, and
// returns its exit status (128+n when a signal n killed it). It returns early
// with ctx's error if ctx ends first; the container keeps running.
func (c *Container) Wait(ctx context.Context) (int, error) {
	select {
	case <-c.done:
		return c.exitCode, c.err
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// Signal sends sig to the container's first process; with all set, to every
// process in its cgroup.
func (c *Container) Signal(ctx context.Context, sig syscall.Signal, all bool) error {
	err := c.rt.runc.Kill(ctx, c.id, int(sig), &runc.KillOpts{All: all})
	if err == nil {
		return nil
	}
	// The container may have exited between our check and runc's; runc run
	// then deletes it, so a failure right at the end is not an error.
	select {
	case <-c.done:
		return nil
	case <-time.After(2 * time.Second):
		return fmt.Errorf("runtime: signal %v to %s: %w", sig, c.id, err)
	}
}

// Stop sends SIGTERM, waits up to the grace period (Spec.StopGrace,
// --stop-timeout or Config.StopGrace), then SIGKILLs every process of the
// container, and returns once it has exited and been cleaned up. If ctx
// ends during the grace period, it SIGKILLs at once.
func (c *Container) Stop(ctx context.Context) error {
	select {
	case <-c.done:
		return nil
	default:
	}
	if err := c.Signal(ctx, syscall.SIGTERM, false); err != nil {
		c.rt.log.Warn("runtime: SIGTERM failed", "container", c.id, "err", err)
	}
	t := time.NewTimer(c.grace)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := c.Signal(kctx, syscall.SIGKILL, true); err != nil {
		return err
	}
	select {
	case <-c.done:
		return nil
	case <-kctx.Done():
		// A process blocked in the kernel (a hung FUSE read) ignores SIGKILL
		// until the request ends; Done still closes when it does.
		return fmt.Errorf("runtime: %s did not exit 30s after SIGKILL", c.id)
	}
}

// Run starts a container and waits for it. When ctx ends (cancel or a
// deadline: the runnable's timeout) the container is stopped, SIGTERM then
// SIGKILL after the grace period, and Run returns its exit status together
// with ctx's error. A container that could not start returns the code Docker
// would (see StartError) and an error wrapping ErrStart.
func (r *Runtime) Run(ctx context.Context, spec *Spec, stdout, stderr io.Writer) (int, error) {
	c, err := r.Start(ctx, spec, stdout, stderr)
	if err != nil {
		var se *StartError
		if errors.As(err, &se) {
			return se.ExitCode, err
		}
		return -1, err
	}
	select {
	case <-c.done:
		return c.exitCode, c.err
	case <-ctx.Done():
	}
	if err := c.Stop(context.WithoutCancel(ctx)); err != nil {
		return -1, errors.Join(fmt.Errorf("runtime: %s stopped: %w", c.id, ctx.Err()), err)
	}
	return c.exitCode, fmt.Errorf("runtime: %s stopped: %w", c.id, ctx.Err())
}

// newID makes a unique, recognisable container ID from a name hint.
func newID(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
		if b.Len() >= 40 {
			break
		}
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	s := strings.Trim(b.String(), "-.")
	if s == "" {
		return IDPrefix + hex.EncodeToString(rnd[:])
	}
	return IDPrefix + s + "-" + hex.EncodeToString(rnd[:])
}

// Start prepares the root filesystem and bundle and starts the container,
// returning once its process runs. stdout and stderr receive the container's
// output (nil discards); an *os.File is handed to the container directly,
// anything else is fed through a pipe. When both are the same writer the
// output is interleaved through one pipe, so the writer needs no locking.
// The context bounds only the start itself; use Stop, or Run with a context,
// to end the container.
//
// Three steps, each undone by the one owner of what it made: the bundle
// (directory, overlay, config.json; bundle.Close), the output pipes
// (output), and `runc run` (launch). After a failed start they are undone
// in reverse order here; after a start, monitor undoes them once runc
// exits.
func (r *Runtime) Start(ctx context.Context, spec *Spec, stdout, stderr io.Writer) (*Container, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("runtime: start: %w", err)
	}
	id := newID(spec.Name)
	res, err := resolve(id, spec)
	if err != nil {
		return nil, err
	}
	b, err := newBundle(filepath.Join(r.tasks, id), spec.Lower, res, r.cfg.CgroupParent+"/"+id)
	if err != nil {
		return nil, err
	}
	out, err := newOutput(stdout, stderr)
	if err != nil {
		r.closeBundle(id, b)
		return nil, err
	}
	l, err := r.launch(ctx, id, b, out)
	if err != nil {
		out.close() // runc has exited: the pipes reach EOF
		r.closeBundle(id, b)
		return nil, err
	}
	c := &Container{id: id, dir: b.dir, rt: r, pid: l.pid, grace: r.stopGrace(spec), done: make(chan struct{})}
	go r.monitor(c, l, out, b)
	return c, nil
}

// stopGrace is the container's SIGTERM-to-SIGKILL wait: --stop-timeout,
// else Spec.StopGrace, else Config.StopGrace.
func (r *Runtime) stopGrace(spec *Spec) time.Duration {
	grace := r.cfg.StopGrace
	if spec.StopGrace > 0 {
		grace = spec.StopGrace
	}
	if o, err := ParseOptions(spec.Options); err == nil && o.StopGrace > 0 { // validated by resolve
		grace = o.StopGrace
	}
	return grace
}

func (r *Runtime) closeBundle(id string, b *bundle) {
	if err := b.Close(); err != nil {
		r.log.Warn("runtime: cleanup after failed start", "container", id, "err", err)
	}
}

// output feeds a container's stdout and stderr to the caller's writers:
// an *os.File is handed to the container as is, any other writer gets a
// pipe whose read end a copier goroutine drains.
type output struct {
	stdout, stderr *os.File // what the container gets
	childEnds      []*os.File
	readEnds       []*os.File
	copiers        sync.WaitGroup
}

func newOutput(stdout, stderr io.Writer) (*output, error) {
	o := &output{}
	var err error
	if o.stdout, err = o.sink(stdout); err != nil {
		return nil, err
	}
	o.stderr = o.stdout
	if stdout == nil || !sameWriter(stdout, stderr) {
		if o.stderr, err = o.sink(stderr); err != nil {
			o.closeChildEnds()
			o.close()
			return nil, err
		}
	}
	return o, nil
}

func (o *output) sink(w io.Writer) (*os.File, error) {
	if w == nil {
		w = io.Discard
	}
	if f, ok := w.(*os.File); ok {
		return f, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	o.readEnds = append(o.readEnds, pr)
	o.childEnds = append(o.childEnds, pw)
	o.copiers.Add(1)
	go func() {
		defer o.copiers.Done()
		_, _ = io.Copy(w, pr) // ends at EOF, or when close cuts it off
	}()
	return pw, nil
}

// closeChildEnds closes our copies of the container's ends, once runc has
// forked: then EOF comes when the container's last process exits.
func (o *output) closeChildEnds() {
	for _, p := range o.childEnds {
		_ = p.Close()
	}
	o.childEnds = nil
}

// close waits for the copiers to drain and closes the read ends.
func (o *output) close() {
	o.copiers.Wait()
	o.closeReadEnds()
}

// drain is close with a bound: with --pid=host a daemon the container
// started may hold the pipes open forever, so after wait the read ends
// are closed under the copiers.
func (o *output) drain(wait time.Duration) {
	drained := make(chan struct{})
	go func() { o.copiers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(wait):
		o.closeReadEnds()
		<-drained
	}
	o.closeReadEnds()
}

func (o *output) closeReadEnds() {
	for _, p := range o.readEnds {
		_ = p.Close() // a second close only reports os.ErrClosed
	}
}

// runResult is how `runc run` ended.
type runResult struct {
	status int
	err    error
}

// launched is a `runc run` whose container process runs.
type launched struct {
	pid    int
	exited chan runResult // receives runc's result once
}

// launch runs `runc run` in the background and returns once the
// container's process runs. On an error runc has exited and nothing of
// the container is left in runc's state.
func (r *Runtime) launch(ctx context.Context, id string, b *bundle, out *output) (*launched, error) {
	pidFile := filepath.Join(b.dir, "pid")
	logFile := filepath.Join(b.dir, "runc.log")
	rc := r.newRunc(logFile)
	started := make(chan int, 1)
	l := &launched{exited: make(chan runResult, 1)}
	go func() {
		// Not ctx: runc must outlive the call that started it, and killing
		// runc would orphan the container rather than stop it.
		status, err := rc.Run(context.Background(), id, b.dir, &runc.CreateOpts{
			IO:      &fileIO{stdout: out.stdout, stderr: out.stderr},
			PidFile: pidFile,
			Started: started,
		})
		l.exited <- runResult{status, err}
	}()
	<-started // runc has forked (or failed to); the child holds its own copies
	out.closeChildEnds()

	// runc writes the pid file only once the container's process runs, and
	// exits without it when the start fails.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if l.pid = readPid(pidFile); l.pid > 0 {
			return l, nil
		}
		select {
		case res := <-l.exited:
			if l.pid = readPid(pidFile); l.pid > 0 {
				l.exited <- res // ran and exited before we looked: monitor gets it
				return l, nil
			}
			return nil, startError(logFile, res.err)
		case <-ctx.Done():
			if l.pid = readPid(pidFile); l.pid > 0 {
				// Its process runs already: the start succeeded, and the
				// caller stops it as any running container (with the grace).
				return l, nil
			}
			r.killStarting(id, l.exited)
			return nil, fmt.Errorf("runtime: start %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

func readPid(pidFile string) int {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return n
}

// killStarting ends a start given up on. runc cannot be interrupted
// mid-start without orphaning what it made, so the container is killed as
// soon as it exists, until runc exits; then its state is deleted.
func (r *Runtime) killStarting(id string, exited <-chan runResult) {
	for {
		_ = r.runc.Kill(context.Background(), id, int(syscall.SIGKILL), &runc.KillOpts{All: true}) // fails until it exists
		select {
		case <-exited:
			_ = r.runc.Delete(context.Background(), id, &runc.DeleteOpts{Force: true}) // runc run usually deleted it
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// monitor waits for runc to exit, then releases what Start acquired in
// reverse order: the output (once drained), runc's state, the bundle; and
// only then reports the container done.
func (r *Runtime) monitor(c *Container, l *launched, out *output, b *bundle) {
	res := <-l.exited
	// The pipes reach EOF when the last process holding them exits: with
	// a private PID namespace that is when init exits.
	out.drain(5 * time.Second)
	c.exitCode = res.status
	if res.status < 0 {
		c.err = fmt.Errorf("runtime: runc for %s died: %w", c.id, res.err)
	}
	// runc run deletes the container itself; force it in case runc was
	// killed, so neither state nor cgroups stay behind.
	_ = r.runc.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true})
	if err := b.Close(); err != nil {
		c.err = errors.Join(c.err, err)
		r.log.Warn("runtime: cleanup", "container", c.id, "err", err)
	}
	close(c.done)
}

// sameWriter reports whether a and b are the same writer; comparing
// interfaces panics for uncomparable dynamic types, which are never the same.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// fileIO hands files to runc as its stdio, which the container inherits.
type fileIO struct{ stdout, stderr *os.File }

func (f *fileIO) Close() error           { return nil }
func (f *fileIO) Stdin() io.WriteCloser  { return nil }
func (f *fileIO) Stdout() io.ReadCloser  { return nil }
func (f *fileIO) Stderr() io.ReadCloser  { return nil }
func (f *fileIO) Set(cmd *exec.Cmd)      { cmd.Stdout, cmd.Stderr = f.stdout, f.stderr }
func (f *fileIO) CloseAfterStart() error { return nil }

var _ runc.IO = (*fileIO)(nil)

// startError reads runc's JSON log for the reason a start failed.
func startError(logFile string, runErr error) error {
	msg := ""
	if f, err := os.Open(logFile); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var rec struct{ Level, Msg string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && (rec.Level == "error" || rec.Level == "fatal") {
				msg = rec.Msg
			}
		}
		_ = f.Close()
	}
	if msg == "" && runErr != nil {
		msg = runErr.Error()
	}
	if msg == "" {
		msg = "runc exited without starting it"
	}
	code := 125
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory") && strings.Contains(msg, "exec"):
		code = 127
	case strings.Contains(msg, "permission denied") && strings.Contains(msg, "exec"):
		code = 126
	}
	return &StartError{ExitCode: code, Message: msg}
}

// Cleanup removes what a previous Riffle process left behind when it died
// without stopping its containers: it SIGKILLs and deletes every container
// in the runtime's runc root, then unmounts and removes every task directory.
// Call it at start-up, before this Runtime starts anything: it does not spare
// running containers.
func (r *Runtime) Cleanup(ctx context.Context) error {
	var errs []error
	list, err := r.runc.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("runtime: runc list: %w", err))
	}
	for _, c := range list {
		if !strings.HasPrefix(c.ID, IDPrefix) {
			continue
		}
		r.log.Info("runtime: removing leftover container", "container", c.ID, "status", c.Status)
		_ = r.runc.Kill(ctx, c.ID, int(syscall.SIGKILL), &runc.KillOpts{All: true})
		if err := r.runc.Delete(ctx, c.ID, &runc.DeleteOpts{Force: true}); err != nil {
			// An orphaned `runc run` may have deleted it first.
			if _, serr := r.runc.State(ctx, c.ID); serr != nil {
				continue
			}
			errs = append(errs, fmt.Errorf("runtime: delete leftover container %s: %w", c.ID, err))
		}
	}
	mounts, err := mountsUnder(r.tasks)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range mounts {
		if m == r.tasks {
			continue
		}
		if err := unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	entries, err := os.ReadDir(r.tasks)
	if err != nil {
		errs = append(errs, fmt.Errorf("runtime: %w", err))
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(r.tasks, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("runtime: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup is Runtime.Cleanup for the runtime rooted at root, with runc from
// PATH: what `riffle serve` calls at start-up.
func Cleanup(ctx context.Context, root string) error {
	rt, err := New(Config{Root: root})
	if err != nil {
		return err
	}
	return rt.Cleanup(ctx)
}
