package runtime

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/testutil"
)

// busyboxRoot builds a tiny image root filesystem from Debian's static
// busybox: every applet as a symlink, plus a passwd and group file.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	bb := testutil.RequiresBinary(t, "busybox")
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if ef, err := elf.Open(bb); err != nil {
		t.Fatal(err)
	} else {
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatalf("%s is dynamically linked; install busybox-static", bb)
			}
		}
		_ = ef.Close()
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "tmp", "home/alice", "data"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	must(t, os.Chmod(filepath.Join(root, "tmp"), 0o1777))
	must(t, os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755))
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.ContainsAny(applet, "/[") {
			continue
		}
		must(t, os.Symlink("busybox", filepath.Join(root, "bin", applet)))
	}
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "data/image-file"), []byte("from the image\n"), 0o644))
	return root
}

type fixture struct {
	rt    *Runtime
	root  string // Config.Root
	lower string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	f := &fixture{root: t.TempDir(), lower: busyboxRoot(t)}
	rt, err := New(Config{Root: f.root, StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	t.Cleanup(func() {
		// Nothing may be left: no container, no mount.
		if list, err := rt.runc.List(context.Background()); err == nil && len(list) > 0 {
			t.Errorf("containers left behind: %d", len(list))
		}
		if m, _ := mountsUnder(f.root); len(m) > 0 {
			t.Errorf("mounts left behind: %q", m)
		}
		_ = rt.Cleanup(context.Background())
	})
	return f
}

func (f *fixture) spec(cmd string) *Spec {
	return &Spec{
		Name:     "test",
		Lower:    []string{f.lower},
		Image:    ocispec.ImageConfig{Entrypoint: []string{"/bin/sh", "-c"}, Env: []string{"PATH=/bin"}},
		Commands: []string{cmd},
	}
}

// run runs s and returns its exit code and combined output.
func (f *fixture) run(t *testing.T, s *Spec) (int, string) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := f.rt.Run(ctx, s, &out, &out)
	if err != nil {
		t.Fatalf("Run: %v (output %q)", err, out.String())
	}
	return code, out.String()
}

func TestRunEnvEntrypointCommandsWorkdirUser(t *testing.T) {
	f := newFixture(t)
	s := &Spec{
		Lower: []string{f.lower},
		Image: ocispec.ImageConfig{
			Entrypoint: []string{"/bin/sh", "-c"},
			Cmd:        []string{"echo image-cmd"},
			Env:        []string{"PATH=/bin", "FOO=image", "BAR=image"},
			WorkingDir: "/data",
			User:       "alice",
		},
		Env:      []string{"FOO=group", "FOO=runnable", "BATCH_TASK_INDEX=3"},
		Commands: []string{`echo "$FOO $BAR $BATCH_TASK_INDEX $(pwd) $(id -u):$(id -g) $(id -G) $HOME $(hostname)"`},
		Hostname: "box",
	}
	code, out := f.run(t, s)
	if want := "runnable image 3 /data 1000:1000 1000 50 /home/alice box\n"; code != 0 || out != want {
		t.Errorf("got %d %q, want 0 %q", code, out, want)
	}

	// The image's own ENTRYPOINT and CMD.
	s.Commands = nil
	if code, out := f.run(t, s); code != 0 || out != "image-cmd\n" {
		t.Errorf("image CMD: got %d %q", code, out)
	}
	// entrypoint replaces ENTRYPOINT and clears CMD.
	s.Entrypoint = "/bin/echo"
	if code, out := f.run(t, s); code != 0 || out != "\n" {
		t.Errorf("entrypoint only: got %d %q", code, out)
	}
	s.Commands = []string{"a", "b c"}
	if code, out := f.run(t, s); code != 0 || out != "a b c\n" {
		t.Errorf("entrypoint+commands: got %d %q", code, out)
	}
	// Options override the image's user, workdir and env.
	s = f.spec(`echo "$(id -u):$(id -g) $(pwd) $X"`)
	s.Options = `-u 4242:4343 -w /new/dir -e X=opt`
	if code, out := f.run(t, s); code != 0 || out != "4242:4343 /new/dir opt\n" {
		t.Errorf("options: got %d %q", code, out)
	}
}

func TestRunExitCodesAndStartErrors(t *testing.T) {
	f := newFixture(t)
	if code, _ := f.run(t, f.spec("exit 3")); code != 3 {
		t.Errorf("exit 3: got %d", code)
	}
	if code, _ := f.run(t, f.spec("exit 255")); code != 255 {
		t.Errorf("exit 255: got %d", code)
	}
	s := f.spec("")
	s.Entrypoint, s.Commands = "/no/such/program", nil
	code, err := f.rt.Run(context.Background(), s, nil, nil)
	if code != 127 || !errors.Is(err, ErrStart) || !strings.Contains(err.Error(), "/no/such/program") {
		t.Errorf("missing executable: got %d, %v; want 127 and ErrStart naming it", code, err)
	}
	s.Entrypoint = "/data/image-file" // not executable
	if code, err := f.rt.Run(context.Background(), s, nil, nil); code != 126 || !errors.Is(err, ErrStart) {
		t.Errorf("non-executable: got %d, %v; want 126 and ErrStart", code, err)
	}
	s = f.spec("true")
	s.Options = "--gpus all"
	if _, err := f.rt.Run(context.Background(), s, nil, nil); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "--gpus") {
		t.Errorf("bad option: %v", err)
	}
	s = f.spec("true")
	s.Volumes = []string{"relative:/x"}
	if _, err := f.rt.Run(context.Background(), s, nil, nil); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "relative:/x") {
		t.Errorf("bad volume: %v", err)
	}
}

func TestRunStdoutStderr(t *testing.T) {
	f := newFixture(t)
	var out, errb bytes.Buffer
	code, err := f.rt.Run(context.Background(), f.spec("echo to-out; echo to-err >&2; seq 1 20000 | tail -n1"), &out, &errb)
	if err != nil || code != 0 || out.String() != "to-out\n20000\n" || errb.String() != "to-err\n" {
		t.Errorf("got %d %v out=%q err=%q", code, err, out.String(), errb.String())
	}

	logs, err := OpenLogFiles(t.TempDir(), "task0-runnable0")
	must(t, err)
	code, err = f.rt.Run(context.Background(), f.spec("echo file-out; echo file-err >&2"), logs.Stdout, logs.Stderr)
	must(t, err)
	must(t, logs.Close())
	o, _ := os.ReadFile(logs.Stdout.Name())
	e, _ := os.ReadFile(logs.Stderr.Name())
	if code != 0 || string(o) != "file-out\n" || string(e) != "file-err\n" {
		t.Errorf("log files: %d %q %q", code, o, e)
	}
}

func TestRunVolumes(t *testing.T) {
	f := newFixture(t)
	rw, ro := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(ro, "in"), []byte("input\n"), 0o644))
	s := f.spec(`cat /ro/in; echo written > /rw/out; if echo x 2>/dev/null >/ro/out; then echo ro-writable; fi; echo opt > /ov/o`)
	ov := t.TempDir()
	s.Volumes = []string{rw + ":/rw", ro + ":/ro:ro"}
	s.Options = "-v " + ov + ":/ov:rw"
	code, out := f.run(t, s)
	if code != 0 || out != "input\n" {
		t.Errorf("got %d %q", code, out)
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "out")); string(b) != "written\n" {
		t.Errorf("rw volume: %q", b)
	}
	if _, err := os.Stat(filepath.Join(ro, "out")); err == nil {
		t.Error("wrote through a read-only volume")
	}
	if b, _ := os.ReadFile(filepath.Join(ov, "o")); string(b) != "opt\n" {
		t.Errorf("options volume: %q", b)
	}
}

func TestRunResourceLimits(t *testing.T) {
	f := newFixture(t)
	s := f.spec(`cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; ` +
		`cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d" " -f1 /sys/fs/cgroup/cpu.max`)
	s.MemoryMiB, s.CPUMilli = 64, 500
	code, out := f.run(t, s)
	if want := fmt.Sprintf("%d\n%d\n", 64<<20, 50000); code != 0 || out != want {
		t.Errorf("got %d %q, want %q", code, out, want)
	}
	s.Options = "--memory 32m --cpus 0.25"
	if code, out := f.run(t, s); code != 0 || out != fmt.Sprintf("%d\n%d\n", 32<<20, 25000) {
		t.Errorf("options limits: got %d %q", code, out)
	}
}

func TestRunCapabilities(t *testing.T) {
	f := newFixture(t)
	s := f.spec(`grep CapEff /proc/self/status | cut -f2`)
	held := heldCaps()
	want := func(names ...string) string {
		var m uint64
		for i, c := range allCaps {
			for _, n := range names {
				if n == c && held[c] {
					m |= 1 << i
				}
			}
		}
		return fmt.Sprintf("%016x\n", m)
	}
	if code, out := f.run(t, s); code != 0 || out != want(defaultCaps...) {
		t.Errorf("default caps: got %d %q, want %q", code, out, want(defaultCaps...))
	}
	s.Options = "--cap-drop ALL --cap-add NET_ADMIN --cap-add chown"
	if code, out := f.run(t, s); code != 0 || out != want("CAP_NET_ADMIN", "CAP_CHOWN") {
		t.Errorf("cap-add/drop: got %d %q", code, out)
	}
	s.Options = "--privileged --pid=host --ipc=host"
	if code, out := f.run(t, s); code != 0 || out != want(allCaps...) {
		t.Errorf("privileged: got %d %q, want %q", code, out, want(allCaps...))
	}
	s.Options, s.Image.User = "", "alice"
	if code, out := f.run(t, s); code != 0 || out != want() {
		t.Errorf("non-root user: got %d %q, want no effective caps", code, out)
	}
}

func TestRunNetwork(t *testing.T) {
	f := newFixture(t)
	s := f.spec(`tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' '; cat /sys/class/net/lo/flags`)
	s.BlockExternalNetwork = true
	// 0x9 is IFF_UP|IFF_LOOPBACK: runc brings lo up in a new namespace.
	if code, out := f.run(t, s); code != 0 || out != "lo 0x9\n" {
		t.Errorf("blockExternalNetwork: got %d %q, want only lo, up", code, out)
	}
	s.BlockExternalNetwork = false
	s.Options = "--network=none"
	if code, out := f.run(t, s); code != 0 || out != "lo 0x9\n" {
		t.Errorf("--network=none: got %d %q", code, out)
	}
	// Default: the host's network namespace.
	s.Options = ""
	host, err := os.ReadFile("/proc/net/dev")
	must(t, err)
	_, out := f.run(t, s)
	if n, hn := len(strings.Fields(out))-1, len(strings.Split(strings.TrimSpace(string(host)), "\n"))-2; n != hn {
		t.Errorf("host network: container sees %d interfaces (%q), host has %d", n, out, hn)
	}
	s.BlockExternalNetwork, s.Options = true, "--network host"
	if _, err := f.rt.Run(context.Background(), s, nil, nil); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("conflict accepted: %v", err)
	}
}

func TestRunReadOnlyAndUpperDir(t *testing.T) {
	f := newFixture(t)
	s := f.spec(`echo new > /data/new; echo changed > /data/image-file; cat /data/image-file`)
	if code, out := f.run(t, s); code != 0 || out != "changed\n" {
		t.Errorf("got %d %q", code, out)
	}
	if b, _ := os.ReadFile(filepath.Join(f.lower, "data/image-file")); string(b) != "from the image\n" {
		t.Errorf("lower dir modified: %q", b)
	}
	if _, err := os.Stat(filepath.Join(f.lower, "data/new")); err == nil {
		t.Error("write reached the lower dir")
	}
	s.Options = "--read-only --tmpfs /scratch"
	s.Commands = []string{`echo x > /scratch/ok && echo scratch-ok; echo x 2>/dev/null >/data/new || echo read-only`}
	if code, out := f.run(t, s); code != 0 || out != "scratch-ok\nread-only\n" {
		t.Errorf("--read-only: got %d %q", code, out)
	}
}

// TestBackgroundUpperDirAndStop starts a background container, sees its
// writes land in the upper dir, and stops it: SIGTERM is honoured.
func TestBackgroundUpperDirAndStop(t *testing.T) {
	f := newFixture(t)
	var out syncBuffer
	s := f.spec(`trap 'echo got-term; exit 7' TERM; echo hi > /written; echo ready; while :; do sleep 0.05; done`)
	// A grace far longer than a loaded machine's stop, so waiting it out
	// cannot be mistaken for a slow stop.
	s.StopGrace = 30 * time.Second
	c, err := f.rt.Start(context.Background(), s, &out, &out)
	must(t, err)
	if !strings.HasPrefix(c.ID(), "riffle-test-") {
		t.Errorf("ID %q lacks the riffle- prefix and name", c.ID())
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
	if b, err := os.ReadFile(filepath.Join(c.UpperDir(), "written")); err != nil || string(b) != "hi\n" {
		t.Errorf("upper dir: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(f.lower, "written")); err == nil {
		t.Error("write reached the lower dir")
	}
	start := time.Now()
	must(t, c.Stop(context.Background()))
	code, err := c.Wait(context.Background())
	if code != 7 || err != nil || !strings.Contains(out.String(), "got-term") {
		t.Errorf("after Stop: %d %v %q", code, err, out.String())
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("Stop took %v although the container honours SIGTERM", d)
	}
	if _, err := os.Stat(c.UpperDir()); !os.IsNotExist(err) {
		t.Errorf("upper dir survives the container: %v", err)
	}
	if m, _ := mountsUnder(f.root); len(m) > 0 {
		t.Errorf("mounts left: %q", m)
	}
}

// TestRunTimeoutKills: when Run's context ends while the container runs
// (a runnable's timeout), a container that ignores SIGTERM is killed after
// the grace. The context ends once the container has printed and runc has
// written its pid file (the start is complete), not at a fixed time, so a
// slow start on a loaded machine cannot end it first.
func TestRunTimeoutKills(t *testing.T) {
	f := newFixture(t)
	s := f.spec(`trap '' TERM; echo started; sleep 60`)
	s.StopGrace = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &notifyBuffer{want: "started", seen: make(chan struct{})}
	go func() {
		select {
		case <-out.seen:
		case <-time.After(30 * time.Second):
			return
		}
		for ctx.Err() == nil {
			if m, _ := filepath.Glob(filepath.Join(f.root, "tasks", "*", "pid")); len(m) > 0 {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	code, err := f.rt.Run(ctx, s, out, out)
	stopped := time.Now()
	if !errors.Is(err, context.Canceled) || code != 137 {
		t.Errorf("got %d, %v; want 137 and the context's error", code, err)
	}
	if !strings.Contains(out.String(), "started") {
		t.Fatalf("output %q", out.String())
	}
	if d := stopped.Sub(out.at); d > 5*time.Second {
		t.Errorf("stopping took %v", d)
	}
}

// notifyBuffer closes seen, once, when its output first contains want.
type notifyBuffer struct {
	syncBuffer
	want string
	seen chan struct{}
	at   time.Time // when want was seen
	once sync.Once
}

func (n *notifyBuffer) Write(p []byte) (int, error) {
	w, err := n.syncBuffer.Write(p)
	if strings.Contains(n.String(), n.want) {
		n.once.Do(func() { n.at = time.Now(); close(n.seen) })
	}
	return w, err
}

// TestCleanupAfterCrash kills -9 a process that started a container and
// checks that Cleanup from a fresh Runtime leaves nothing behind.
func TestCleanupAfterCrash(t *testing.T) {
	f := newFixture(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), "RIFFLE_RUNTIME_CRASH_ROOT="+f.root, "RIFFLE_RUNTIME_CRASH_LOWER="+f.lower)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	var id string
	var pid int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "STARTED %s %d", &id, &pid); err == nil {
			break
		}
	}
	if id == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("helper did not start a container")
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	// The crash left a running container and a mounted overlay.
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("the container died with its parent; the crash was not simulated")
	}
	if m, _ := mountsUnder(f.root); len(m) == 0 {
		t.Fatal("no overlay mounted after the crash")
	}

	must(t, Cleanup(context.Background(), f.root))

	rc := &runc.Runc{Root: filepath.Join(f.root, "runc")}
	if list, err := rc.List(context.Background()); err != nil || len(list) > 0 {
		t.Errorf("after Cleanup: %d containers, %v", len(list), err)
	}
	waitFor(t, func() bool { return syscall.Kill(pid, 0) != nil })
	if m, _ := mountsUnder(f.root); len(m) > 0 {
		t.Errorf("mounts left: %q", m)
	}
	if e, _ := os.ReadDir(filepath.Join(f.root, "tasks")); len(e) > 0 {
		t.Errorf("task dirs left: %v", e)
	}
}

// TestCrashHelper is the process TestCleanupAfterCrash kills.
func TestCrashHelper(t *testing.T) {
	root := os.Getenv("RIFFLE_RUNTIME_CRASH_ROOT")
	if root == "" {
		t.Skip("helper for TestCleanupAfterCrash")
	}
	rt, err := New(Config{Root: root})
	must(t, err)
	s := &Spec{Name: "crash", Lower: []string{os.Getenv("RIFFLE_RUNTIME_CRASH_LOWER")},
		Image: ocispec.ImageConfig{Entrypoint: []string{"/bin/sleep", "600"}}}
	c, err := rt.Start(context.Background(), s, nil, nil)
	must(t, err)
	fmt.Printf("STARTED %s %d\n", c.ID(), c.Pid())
	time.Sleep(time.Minute)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFailedStartLeavesNothing: a start that fails after the bundle was
// made (the overlay mounted) or after runc ran leaves no task directory,
// mount or container (the fixture checks the last two).
func TestFailedStartLeavesNothing(t *testing.T) {
	f := newFixture(t)
	s := f.spec("true")
	s.Image.User = "nobody-here" // resolved inside the mounted overlay
	if _, err := f.rt.Start(context.Background(), s, nil, nil); err == nil || !strings.Contains(err.Error(), "nobody-here") {
		t.Errorf("unknown user: %v", err)
	}
	s = f.spec("")
	s.Entrypoint, s.Commands = "/no/such/program", nil
	var out bytes.Buffer
	if _, err := f.rt.Start(context.Background(), s, &out, &out); !errors.Is(err, ErrStart) {
		t.Errorf("missing executable: %v", err)
	}
	if ents, err := os.ReadDir(filepath.Join(f.root, "tasks")); err != nil || len(ents) != 0 {
		t.Errorf("task directories left: %v %v", ents, err)
	}
}
