package scheduler_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/batch/logs"
	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/runtime"
	"github.com/riffle-dev/riffle/internal/testutil"
)

const parent = "projects/p/locations/local"

var (
	regOnce sync.Once
	regRef  string
	regErr  error
	// regCleanup stops the shared registry and removes its directory;
	// TestMain calls it when every test is done.
	regCleanup = func() {}
)

// busyboxRef pushes the busybox test image to an in-process registry once
// per test binary and returns its reference.
func busyboxRef(t *testing.T) string {
	t.Helper()
	testutil.RequiresBinary(t, "busybox")
	regOnce.Do(func() {
		dir, err := os.MkdirTemp("", "riffle-sched-reg-")
		if err != nil {
			regErr = err
			return
		}
		reg, err := registry.New(context.Background(), registry.Options{RootDir: dir})
		if err != nil {
			os.RemoveAll(dir)
			regErr = err
			return
		}
		srv := httptest.NewServer(reg) // lives as long as the test binary
		regCleanup = func() { srv.Close(); reg.Close(); os.RemoveAll(dir) }
		spec, err := imagegen.Busybox("/bin/busybox")
		if err != nil {
			regErr = err
			return
		}
		img, err := imagegen.Build(spec)
		if err != nil {
			regErr = err
			return
		}
		ref := strings.TrimPrefix(srv.URL, "http://") + "/test/busybox:latest"
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			regErr = err
			return
		}
		regErr = ggcrremote.Write(r, img)
		regRef = ref
	})
	if regErr != nil {
		t.Fatal(regErr)
	}
	return regRef
}

type env struct {
	t     *testing.T
	dir   string
	st    *store.Store
	sched *scheduler.Scheduler
	api   *api.Server
	rt    *runtime.Runtime
	imgs  *node.Node
}

// newEnv starts a store, runtime, image source, scheduler and API in dir
// (a fresh temp dir when empty). withRuntime needs root and runc.
func newEnv(t *testing.T, dir string, withRuntime bool, mods ...func(*scheduler.Options)) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := store.Open(dir, store.Options{Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, st: st}
	// Room for every test job's default computeResource (2000 mCPU,
	// 2000 MiB a task) to run at once; capacity tests set their own.
	opts := scheduler.Options{DataDir: dir, StopGrace: time.Second, Capacity: scheduler.Capacity{CPUMilli: 64000, MemoryMiB: 64 << 10}}
	if withRuntime {
		testutil.RequiresRoot(t)
		testutil.RequiresBinary(t, "runc")
		e.rt, err = runtime.New(runtime.Config{Root: filepath.Join(dir, "runtime"), StopGrace: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		e.imgs, err = node.New(node.Options{Layout: node.Layout{Root: dir}})
		if err != nil {
			t.Fatal(err)
		}
		opts.Runtime, opts.Images = e.rt, e.imgs
	}
	for _, m := range mods {
		m(&opts)
	}
	e.sched, err = scheduler.New(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	e.api, err = api.New(st, e.sched, api.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.sched.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if e.sched == nil {
		return
	}
	e.sched.Close()
	if e.imgs != nil {
		e.imgs.Close()
	}
	e.st.Close()
	e.sched = nil
}

func (e *env) submit(id string, j *batchpb.Job) *batchpb.Job {
	e.t.Helper()
	out, err := e.api.CreateJob(context.Background(), &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: j})
	if err != nil {
		e.t.Fatalf("create %s: %v", id, err)
	}
	return out
}

// wait polls the job until cond holds.
func (e *env) wait(jobName string, timeout time.Duration, cond func(*batchpb.Job) bool) *batchpb.Job {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j, err := e.st.GetJob(context.Background(), jobName)
		if err == nil && cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s: condition not met in %v; last: %v (%v)", jobName, timeout, j.GetStatus(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) waitState(jobName string, want batchpb.JobStatus_State, timeout time.Duration) *batchpb.Job {
	e.t.Helper()
	j := e.wait(jobName, timeout, func(j *batchpb.Job) bool {
		return store.Terminal(j.GetStatus().GetState()) || j.GetStatus().GetState() == want
	})
	if got := j.GetStatus().GetState(); got != want {
		e.t.Fatalf("job %s is %v, want %v; events:\n%s\ntasks:\n%s", jobName, got, want, events(j.GetStatus().GetStatusEvents()), e.taskDump(jobName))
	}
	return j
}

func (e *env) tasks(jobName string) []*batchpb.Task {
	e.t.Helper()
	ts, err := e.st.Tasks(context.Background(), jobName)
	if err != nil {
		e.t.Fatal(err)
	}
	return ts
}

func (e *env) taskDump(jobName string) string {
	var b strings.Builder
	ts, _ := e.st.Tasks(context.Background(), jobName)
	for _, t := range ts {
		fmt.Fprintf(&b, "%s %v\n%s", t.Name, t.GetStatus().GetState(), events(t.GetStatus().GetStatusEvents()))
	}
	var out bytes.Buffer
	_ = e.sched.Logs().Read(context.Background(), jobName, logs.ReadOptions{Task: logs.AllTasks, Prefix: true}, &out)
	b.WriteString("logs:\n" + out.String())
	return b.String()
}

func events(evs []*batchpb.StatusEvent) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "  [%s] %s\n", ev.GetType(), ev.GetDescription())
	}
	return b.String()
}

func hasEvent(evs []*batchpb.StatusEvent, typ, substr string) bool {
	for _, ev := range evs {
		if (typ == "" || ev.GetType() == typ) && strings.Contains(ev.GetDescription(), substr) {
			return true
		}
	}
	return false
}

func (e *env) logs(jobName string, task int64) string {
	e.t.Helper()
	var out bytes.Buffer
	if err := e.sched.Logs().Read(context.Background(), jobName, logs.ReadOptions{Task: task}, &out); err != nil {
		e.t.Fatal(err)
	}
	return out.String()
}

func script(text string) *batchpb.Runnable {
	return &batchpb.Runnable{Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{Command: &batchpb.Runnable_Script_Text{Text: text}}}}
}

func container(ref string, cmd ...string) *batchpb.Runnable {
	return &batchpb.Runnable{Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{ImageUri: ref, Commands: cmd}}}
}

func barrierRunnable() *batchpb.Runnable {
	return &batchpb.Runnable{Executable: &batchpb.Runnable_Barrier_{Barrier: &batchpb.Runnable_Barrier{Name: "b"}}}
}

func newJob(count, parallelism int64, rs ...*batchpb.Runnable) *batchpb.Job {
	return &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{
		TaskCount: count, Parallelism: parallelism,
		TaskSpec: &batchpb.TaskSpec{Runnables: rs},
	}}}
}

// TestEndToEndStreamed is the acceptance test: taskCount 4, parallelism 2,
// a streamed container printing BATCH_TASK_INDEX and a file of the image.
func TestEndToEndStreamed(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	e := newEnv(t, "", true)
	r := container(ref, "sh", "-c", "echo index=$BATCH_TASK_INDEX count=$BATCH_TASK_COUNT; cat /data/hello.txt; echo oops >&2")
	r.GetContainer().EnableImageStreaming = true
	j := e.submit("e2e", newJob(4, 2, r))
	j = e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, 2*time.Minute)

	evs := j.GetStatus().GetStatusEvents()
	for _, want := range []string{
		"Job state is set from QUEUED to SCHEDULED for job " + j.Name + ".",
		"Job state is set from SCHEDULED to RUNNING for job " + j.Name + ".",
		"Job state is set from RUNNING to SUCCEEDED for job " + j.Name + ".",
	} {
		if !hasEvent(evs, "STATUS_CHANGED", want) {
			t.Errorf("job events lack %q:\n%s", want, events(evs))
		}
	}
	if got := j.GetStatus().GetTaskGroups()["group0"].GetCounts(); got["SUCCEEDED"] != 4 || len(got) != 1 {
		t.Errorf("task counts = %v, want 4 SUCCEEDED", got)
	}
	if j.GetStatus().GetRunDuration().AsDuration() <= 0 {
		t.Errorf("runDuration = %v", j.GetStatus().GetRunDuration())
	}
	for i, tk := range e.tasks(j.Name) {
		tevs := tk.GetStatus().GetStatusEvents()
		if tk.GetStatus().GetState() != batchpb.TaskStatus_SUCCEEDED {
			t.Errorf("task %d: %v", i, tk.GetStatus().GetState())
		}
		for _, want := range []string{
			"Task state is updated from PENDING to ASSIGNED on testhost.",
			"Task state is updated from ASSIGNED to RUNNING on testhost.",
			"Task state is updated from RUNNING to SUCCEEDED on testhost with exit code 0.",
		} {
			if !hasEvent(tevs, "STATUS_CHANGED", want) {
				t.Errorf("task %d events lack %q:\n%s", i, want, events(tevs))
			}
		}
		if i == 0 {
			t.Logf("task 0 events:\n%s", events(tevs))
		}
		// Once the image's layers have all arrived in the background,
		// later tasks get it settled (overlayfs over the layers).
		streamed := hasEvent(tevs, "IMAGE_STREAMED", "was streamed for runnable 0")
		if !streamed && (i == 0 || !hasEvent(tevs, "IMAGE_SETTLED", "was settled")) {
			t.Errorf("task %d: no IMAGE_STREAMED (or, after the first, IMAGE_SETTLED) event:\n%s", i, events(tevs))
		}
		out := e.logs(j.Name, int64(i))
		for _, want := range []string{fmt.Sprintf("index=%d count=4\n", i), "hello from a streamed image\n", "oops\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("task %d logs lack %q:\n%s", i, want, out)
			}
		}
	}
	// Every task's overlay and container is gone.
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "runtime", "tasks")); len(ents) != 0 {
		t.Errorf("task directories left: %v", ents)
	}
}

// TestPullFallback: an image that cannot be streamed (no indexes, and
// building them is off) is pulled, with an event saying why.
func TestPullFallback(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	dir := t.TempDir()
	imgs, err := node.New(node.Options{Layout: node.Layout{Root: dir}, NoBuildIndexes: true})
	if err != nil {
		t.Fatal(err)
	}
	defer imgs.Close()
	st, err := store.Open(dir, store.Options{Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rt, err := runtime.New(runtime.Config{Root: filepath.Join(dir, "runtime"), StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Both tasks start at once, before either pull settles the image.
	s, err := scheduler.New(st, scheduler.Options{DataDir: dir, Runtime: rt, Images: imgs, Capacity: scheduler.Capacity{CPUMilli: 64000, MemoryMiB: 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := api.New(st, s, api.Options{})
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, st: st, sched: s, api: a}
	r := container(ref, "cat", "/data/hello.txt")
	r.GetContainer().EnableImageStreaming = true
	j := e.submit("fallback", newJob(2, 2, r))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, time.Minute)
	sawFallback, sawBytes := false, false
	defer func() {
		if !sawFallback {
			t.Error("the first task did not fall back to a pull with a reason")
		}
		// The task whose node pulled the image (the other shared its
		// pull, or found it settled) says what the pull moved.
		if !sawBytes {
			t.Error("no task's IMAGE_PULLED event names the compressed and uncompressed bytes of its pull")
			for i, tk := range e.tasks(j.Name) {
				t.Logf("task %d:\n%s", i, events(tk.GetStatus().GetStatusEvents()))
			}
		}
	}()
	for i, tk := range e.tasks(j.Name) {
		tevs := tk.GetStatus().GetStatusEvents()
		// A task that starts after the pull finds the image's layers on
		// the node: settled, nothing to fall back from.
		fellBack := hasEvent(tevs, "IMAGE_STREAMING_FALLBACK", "cannot be streamed") && hasEvent(tevs, "IMAGE_PULLED", "was pulled")
		if !fellBack && !hasEvent(tevs, "IMAGE_SETTLED", "was settled") {
			t.Errorf("task %d events:\n%s", i, events(tevs))
		}
		if i == 0 {
			sawFallback = sawFallback || fellBack
		}
		sawBytes = sawBytes || (hasEvent(tevs, "IMAGE_PULLED", "compressed over the wire and") && !hasEvent(tevs, "IMAGE_PULLED", "and 0 bytes uncompressed"))
		if out := e.logs(j.Name, int64(i)); out != "hello from a streamed image\n" {
			t.Errorf("task %d logs %q", i, out)
		}
	}
	e.sched = nil // closed by the defers
}

// TestContainerRetry: a container that fails twice is retried per
// maxRetryCount; a FAIL_TASK policy on its exit code stops retries.
func TestContainerRetry(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	e := newEnv(t, "", true)
	cmd := `echo attempt=$BATCH_TASK_RETRY_ATTEMPT; [ $BATCH_TASK_RETRY_ATTEMPT -ge 2 ] || exit 3`

	ok := newJob(1, 1, container(ref, "sh", "-c", cmd))
	ok.TaskGroups[0].TaskSpec.MaxRetryCount = 2
	j1 := e.submit("retry-ok", ok)

	stop := newJob(1, 1, container(ref, "sh", "-c", cmd))
	stop.TaskGroups[0].TaskSpec.MaxRetryCount = 3
	stop.TaskGroups[0].TaskSpec.LifecyclePolicies = []*batchpb.LifecyclePolicy{{
		Action: batchpb.LifecyclePolicy_FAIL_TASK, ActionCondition: &batchpb.LifecyclePolicy_ActionCondition{ExitCodes: []int32{3}},
	}}
	j2 := e.submit("retry-fail", stop)

	e.waitState(j1.Name, batchpb.JobStatus_SUCCEEDED, time.Minute)
	tevs := e.tasks(j1.Name)[0].GetStatus().GetStatusEvents()
	for _, want := range []string{
		"Task state is updated from RUNNING to PENDING on testhost with exit code 3. Retrying (attempt 2 of 3).",
		"Task state is updated from RUNNING to PENDING on testhost with exit code 3. Retrying (attempt 3 of 3).",
		"Task state is updated from RUNNING to SUCCEEDED on testhost with exit code 0.",
	} {
		if !hasEvent(tevs, "STATUS_CHANGED", want) {
			t.Errorf("events lack %q:\n%s", want, events(tevs))
		}
	}
	retryLine := func(n int, code int) string {
		return fmt.Sprintf("riffle: retry: attempt %d of 3 of task 0 begins (BATCH_TASK_RETRY_ATTEMPT=%d); the previous attempt ended with exit code %d.\n", n+1, n, code)
	}
	if out := e.logs(j1.Name, 0); out != "attempt=0\n"+retryLine(1, 3)+"attempt=1\n"+retryLine(2, 3)+"attempt=2\n" {
		t.Errorf("logs %q", out)
	}

	jf := e.waitState(j2.Name, batchpb.JobStatus_FAILED, time.Minute)
	if !hasEvent(jf.GetStatus().GetStatusEvents(), "STATUS_CHANGED", "to FAILED for job "+j2.Name+". Task 0 failed with exit code 3.") {
		t.Errorf("job events:\n%s", events(jf.GetStatus().GetStatusEvents()))
	}
	tevs = e.tasks(j2.Name)[0].GetStatus().GetStatusEvents()
	if !hasEvent(tevs, "STATUS_CHANGED", "from RUNNING to FAILED on testhost with exit code 3. The task failed: lifecyclePolicies[0] fails the task on exit code 3.") {
		t.Errorf("events:\n%s", events(tevs))
	}
	if out := e.logs(j2.Name, 0); out != "attempt=0\n" {
		t.Errorf("logs %q", out)
	}
}

// TestCancel stops running containers promptly; the job ends CANCELLED.
func TestCancel(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	e := newEnv(t, "", true)
	j := e.submit("cancel", newJob(3, 2, container(ref, "sh", "-c", "echo started; exec sleep 300")))
	e.wait(j.Name, time.Minute, func(j *batchpb.Job) bool {
		return j.GetStatus().GetTaskGroups()["group0"].GetCounts()["RUNNING"] == 2 && strings.Contains(e.logs(j.Name, 0)+e.logs(j.Name, 1), "started\nstarted\n")
	})
	start := time.Now()
	if _, err := e.api.CancelJob(context.Background(), &batchpb.CancelJobRequest{Name: j.Name}); err != nil {
		t.Fatal(err)
	}
	e.waitState(j.Name, batchpb.JobStatus_CANCELLED, 30*time.Second)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancel took %v", d)
	}
	states := map[batchpb.TaskStatus_State]int{}
	for _, tk := range e.tasks(j.Name) {
		states[tk.GetStatus().GetState()]++
	}
	if states[batchpb.TaskStatus_FAILED] != 2 || states[batchpb.TaskStatus_UNEXECUTED] != 1 {
		t.Errorf("task states %v, want 2 FAILED, 1 UNEXECUTED", states)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "runtime", "tasks")); len(ents) != 0 {
		t.Errorf("containers left: %v", ents)
	}

	// Delete removes the job and its logs.
	if _, err := e.api.DeleteJob(context.Background(), &batchpb.DeleteJobRequest{Name: j.Name}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.st.GetJob(context.Background(), j.Name); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("job not deleted")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDeleteRunning stops a running script job and deletes it.
func TestDeleteRunning(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	j := e.submit("del", newJob(1, 1, script("echo up; sleep 300")))
	e.wait(j.Name, 30*time.Second, func(*batchpb.Job) bool { return e.logs(j.Name, 0) == "up\n" })
	if _, err := e.api.DeleteJob(context.Background(), &batchpb.DeleteJobRequest{Name: j.Name}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.st.GetJob(context.Background(), j.Name); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("job not deleted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	jd, _ := e.sched.Logs().JobDir(j.Name)
	if _, err := os.Stat(jd); !os.IsNotExist(err) {
		t.Errorf("logs left at %s: %v", jd, err)
	}
}

// TestBackgroundStopped: background runnables (a container and a script)
// are stopped once the foreground runnable ends; the job succeeds quickly.
func TestBackgroundStopped(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	e := newEnv(t, "", true)
	mark := filepath.Join(t.TempDir(), "bg")
	bgC := container(ref, "sh", "-c", "echo bg-container; exec sleep 300")
	bgC.Background = true
	bgS := script("echo bg-script; trap 'echo bg-term > " + mark + "; exit 0' TERM; while true; do sleep 0.1; done")
	bgS.Background = true
	fg := script("sleep 1.5; echo fg-done")
	start := time.Now()
	j := e.submit("bg", newJob(1, 1, bgC, bgS, fg))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, time.Minute)
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("job took %v", d)
	}
	out := e.logs(j.Name, 0)
	for _, want := range []string{"bg-container\n", "bg-script\n", "fg-done\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(mark); err != nil || string(b) != "bg-term\n" {
		t.Errorf("background script was not sent SIGTERM: %q %v", b, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "runtime", "tasks")); len(ents) != 0 {
		t.Errorf("containers left: %v", ents)
	}
}

// TestBarrier: no task passes the barrier before every task reached it.
func TestBarrier(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	dir := t.TempDir()
	before := script(fmt.Sprintf(`sleep 0.$(( BATCH_TASK_INDEX * 3 )); date +%%s%%N > %s/before-$BATCH_TASK_INDEX`, dir))
	after := script(fmt.Sprintf(`date +%%s%%N > %s/after-$BATCH_TASK_INDEX`, dir))
	j := e.submit("barrier", newJob(3, 3, before, barrierRunnable(), after))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, time.Minute)
	read := func(n string) int64 {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	var lastBefore, firstAfter int64 = 0, 1 << 62
	for i := 0; i < 3; i++ {
		lastBefore = max(lastBefore, read(fmt.Sprintf("before-%d", i)))
		firstAfter = min(firstAfter, read(fmt.Sprintf("after-%d", i)))
	}
	if firstAfter < lastBefore {
		t.Errorf("a task passed the barrier %v before the last one reached it", time.Duration(lastBefore-firstAfter))
	}
}

// TestScriptEnv: variables at group, task and runnable level (the
// runnable wins) and the BATCH_* variables, with a hosts file.
func TestScriptEnv(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	r := script(`echo "A=$A B=$B C=$C idx=$BATCH_TASK_INDEX n=$BATCH_TASK_COUNT job=$BATCH_JOB_ID try=$BATCH_TASK_RETRY_ATTEMPT"; cat "$BATCH_HOSTS_FILE"`)
	r.Environment = &batchpb.Environment{Variables: map[string]string{"C": "runnable"}}
	jb := newJob(2, 2, r)
	g := jb.TaskGroups[0]
	g.RequireHostsFile = true
	g.TaskSpec.Environment = &batchpb.Environment{Variables: map[string]string{"A": "group", "B": "group", "C": "group"}}
	g.TaskEnvironments = []*batchpb.Environment{
		{Variables: map[string]string{"B": "task0", "C": "task0"}},
		{Variables: map[string]string{"B": "task1"}},
	}
	j := e.submit("env", jb)
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
	for i := 0; i < 2; i++ {
		want := fmt.Sprintf("A=group B=task%d C=runnable idx=%d n=2 job=env try=0\n127.0.0.1\n", i, i)
		if out := e.logs(j.Name, int64(i)); out != want {
			t.Errorf("task %d logs %q, want %q", i, out, want)
		}
	}
}

// TestFailureUnexecuted: a failing task fails the job; tasks that never
// ran are UNEXECUTED; alwaysRun still runs, ignoreExitStatus ignores.
func TestFailureUnexecuted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	ignored := script("exit 9")
	ignored.IgnoreExitStatus = true
	always := script("echo cleanup")
	always.AlwaysRun = true
	jb := newJob(3, 1, ignored, script("echo work; exit 7"), script("echo never"), always)
	j := e.submit("fail", jb)
	jf := e.waitState(j.Name, batchpb.JobStatus_FAILED, 30*time.Second)
	if !hasEvent(jf.GetStatus().GetStatusEvents(), "", "Task 0 failed with exit code 7.") {
		t.Errorf("job events:\n%s", events(jf.GetStatus().GetStatusEvents()))
	}
	ts := e.tasks(j.Name)
	if got := []batchpb.TaskStatus_State{ts[0].GetStatus().GetState(), ts[1].GetStatus().GetState(), ts[2].GetStatus().GetState()}; got[0] != batchpb.TaskStatus_FAILED || got[1] != batchpb.TaskStatus_UNEXECUTED || got[2] != batchpb.TaskStatus_UNEXECUTED {
		t.Errorf("task states %v", got)
	}
	if out := e.logs(j.Name, 0); out != "work\ncleanup\n" {
		t.Errorf("logs %q", out)
	}
}

// TestTimeouts: a runnable timeout fails the runnable; maxRunDuration
// fails the task with exit code 50005.
func TestTimeouts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	r := script("sleep 30")
	r.Timeout = durationpb.New(300 * time.Millisecond)
	j1 := e.submit("rtimeout", newJob(1, 1, r))
	jb := newJob(1, 1, script("sleep 30"))
	jb.TaskGroups[0].TaskSpec.MaxRunDuration = durationpb.New(300 * time.Millisecond)
	j2 := e.submit("maxrun", jb)
	e.waitState(j1.Name, batchpb.JobStatus_FAILED, 30*time.Second)
	if tevs := e.tasks(j1.Name)[0].GetStatus().GetStatusEvents(); !hasEvent(tevs, "RUNNABLE_TIMEOUT", "Runnable 0 timed out after 300ms") {
		t.Errorf("events:\n%s", events(tevs))
	}
	e.waitState(j2.Name, batchpb.JobStatus_FAILED, 30*time.Second)
	if tevs := e.tasks(j2.Name)[0].GetStatus().GetStatusEvents(); !hasEvent(tevs, "STATUS_CHANGED", "with exit code 50005. The task reached its maxRunDuration") {
		t.Errorf("events:\n%s", events(tevs))
	}
}

// TestLogsPath: logsPolicy PATH writes every line to logsPath too.
func TestLogsPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	p := filepath.Join(t.TempDir(), "out", "job.log")
	jb := newJob(2, 2, script("echo line-$BATCH_TASK_INDEX"))
	jb.LogsPolicy = &batchpb.LogsPolicy{Destination: batchpb.LogsPolicy_PATH, LogsPath: p}
	j := e.submit("logspath", jb)
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); !strings.Contains(s, "line-0\n") || !strings.Contains(s, "line-1\n") {
		t.Errorf("logsPath holds %q", s)
	}
}

// TestFollowLogs: a follower sees output as it comes and stops when the
// job ends.
func TestFollowLogs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	j := e.submit("follow", newJob(1, 1, script("echo one; sleep 0.5; echo two")))
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.sched.Logs().Read(ctx, j.Name, logs.ReadOptions{Task: 0, Follow: true, Poll: 20 * time.Millisecond}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\ntwo\n" {
		t.Errorf("followed %q", out.String())
	}
}

// TestRestartRecovery: after a crash (simulated: tasks left RUNNING in
// the store and a container left running under the runtime root), Start
// removes the container, retries the task that may be retried, fails the
// one that may not, and finishes the jobs.
func TestRestartRecovery(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	dir := t.TempDir()
	ctx := context.Background()

	// The "previous process": jobs created and marked running, and a
	// container started under the runtime root and abandoned.
	st, err := store.Open(dir, store.Options{Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(id string, retries int32) string {
		jb := newJob(1, 1, script("echo ran-after-restart"))
		jb.TaskGroups[0].TaskSpec.MaxRetryCount = retries
		if err := job.Validate(jb); err != nil {
			t.Fatal(err)
		}
		job.Prepare(jb, parent, id, time.Now(), nil)
		stored, _, err := st.CreateJob(ctx, jb, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, to := range []batchpb.JobStatus_State{batchpb.JobStatus_SCHEDULED, batchpb.JobStatus_RUNNING} {
			if _, err := st.SetJobState(ctx, stored.Name, to, ""); err != nil {
				t.Fatal(err)
			}
		}
		tn := job.TaskName(stored.Name, 0)
		for _, to := range []batchpb.TaskStatus_State{batchpb.TaskStatus_ASSIGNED, batchpb.TaskStatus_RUNNING} {
			if _, err := st.SetTaskState(ctx, tn, to, store.TaskUpdate{}); err != nil {
				t.Fatal(err)
			}
		}
		return stored.Name
	}
	retried, failed := mk("retried", 1), mk("failed", 0)
	queued := func() string {
		jb := newJob(1, 1, script("echo queued-ran"))
		job.Prepare(jb, parent, "queued", time.Now(), nil)
		stored, _, err := st.CreateJob(ctx, jb, "")
		if err != nil {
			t.Fatal(err)
		}
		return stored.Name
	}()
	st.Close()

	rt, err := runtime.New(runtime.Config{Root: filepath.Join(dir, "runtime"), StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := node.New(node.Options{Layout: node.Layout{Root: dir}})
	if err != nil {
		t.Fatal(err)
	}
	rfs, err := imgs.Pull(ctx, ref, scheduler.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	leftover, err := rt.Start(ctx, &runtime.Spec{Name: "leftover", Lower: rfs.Lower, Image: rfs.Config, Commands: []string{"sleep", "300"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	imgs.Close()

	// The "new process".
	e := newEnv(t, dir, true)
	select {
	case <-leftover.Done():
	case <-time.After(20 * time.Second):
		t.Error("the leftover container was not removed at start")
	}

	jr := e.waitState(retried, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
	tevs := e.tasks(retried)[0].GetStatus().GetStatusEvents()
	if !hasEvent(tevs, "STATUS_CHANGED", "from RUNNING to PENDING on testhost with exit code 50003. Riffle restarted while the task was running; retrying (attempt 2 of 2).") {
		t.Errorf("retried task events:\n%s", events(tevs))
	}
	if out := e.logs(retried, 0); out != "riffle: retry: attempt 2 of 2 of task 0 begins (BATCH_TASK_RETRY_ATTEMPT=1); the previous attempt ended with exit code 50003.\nran-after-restart\n" {
		t.Errorf("retried logs %q (job %v)", out, jr.GetStatus().GetState())
	}

	e.waitState(failed, batchpb.JobStatus_FAILED, 30*time.Second)
	tevs = e.tasks(failed)[0].GetStatus().GetStatusEvents()
	if !hasEvent(tevs, "STATUS_CHANGED", "from RUNNING to FAILED on testhost with exit code 50003. Riffle restarted while the task was running; maxRetryCount is 0") {
		t.Errorf("failed task events:\n%s", events(tevs))
	}
	e.waitState(queued, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
}

// waitGone polls until the job is no longer in the store.
func (e *env) waitGone(jobName string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := e.st.GetJob(context.Background(), jobName); err != nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s not deleted in %v", jobName, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDeleteFinishedJobRemovesEverything: deleting a job that had already
// ended removes its logs and work directory; a new job with the same ID
// shows none of the old lines, and following its logs waits for it.
func TestDeleteFinishedJobRemovesEverything(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false)
	j := e.submit("same", newJob(2, 2, script("echo old-line-$BATCH_TASK_INDEX")))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
	if out := e.logs(j.Name, 0); out != "old-line-0\n" {
		t.Fatalf("logs before delete %q", out)
	}
	if _, err := e.api.DeleteJob(context.Background(), &batchpb.DeleteJobRequest{Name: j.Name}); err != nil {
		t.Fatal(err)
	}
	e.waitGone(j.Name, 10*time.Second)
	jd, _ := e.sched.Logs().JobDir(j.Name)
	work := filepath.Join(e.dir, "batch", "work", "p", "local", "same")
	for _, d := range []string{jd, work} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left after delete: %v", d, err)
		}
	}

	gate := filepath.Join(t.TempDir(), "go")
	j2 := e.submit("same", newJob(1, 1, script(fmt.Sprintf("while [ ! -e %s ]; do sleep 0.05; done; echo new-line", gate))))
	if j2.GetUid() == j.GetUid() {
		t.Fatal("same uid")
	}
	followed := make(chan string, 1)
	go func() {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := e.sched.Logs().Read(ctx, j2.Name, logs.ReadOptions{Task: logs.AllTasks, Follow: true, Prefix: true, Poll: 10 * time.Millisecond}, &out)
		if err != nil {
			out.WriteString("error: " + err.Error())
		}
		followed <- out.String()
	}()
	// The follower must still be waiting for the new job's output.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.waitState(j2.Name, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
	if got := <-followed; got != "task 0: new-line\n" {
		t.Errorf("following the new job gave %q, want only its own line", got)
	}
	if out := e.logs(j2.Name, 0); out != "new-line\n" {
		t.Errorf("new job's logs %q", out)
	}
}

// TestStartSweepsDeletedJobsLogs: logs of jobs the store no longer has
// (a crash between forgetting a job and removing its files) are removed
// at start; a kept job's logs stay.
func TestStartSweepsDeletedJobsLogs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := newEnv(t, dir, false)
	j := e.submit("kept", newJob(1, 1, script("echo kept")))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
	e.close()

	ghost := filepath.Join(dir, "batch", "logs", "p", "local", "ghost", "task-0")
	if err := os.MkdirAll(ghost, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ghost, "output.log"), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e = newEnv(t, dir, false)
	if _, err := os.Stat(filepath.Dir(ghost)); !os.IsNotExist(err) {
		t.Errorf("logs of a job the store does not have were kept: %v", err)
	}
	if out := e.logs(j.Name, 0); out != "kept\n" {
		t.Errorf("kept job's logs %q", out)
	}
}

// runTime is how long a task ran: from its last RUNNING event to the
// event that ended it.
func runTime(t *testing.T, tk *batchpb.Task) time.Duration {
	t.Helper()
	var start, end time.Time
	for _, ev := range tk.GetStatus().GetStatusEvents() {
		if ev.GetType() != "STATUS_CHANGED" {
			continue
		}
		switch ev.GetTaskState() {
		case batchpb.TaskStatus_RUNNING:
			start = ev.GetEventTime().AsTime()
		case batchpb.TaskStatus_FAILED, batchpb.TaskStatus_SUCCEEDED:
			end = ev.GetEventTime().AsTime()
		}
	}
	if start.IsZero() || end.IsZero() {
		t.Fatalf("task %s has no RUNNING and end events:\n%s", tk.Name, events(tk.GetStatus().GetStatusEvents()))
	}
	return end.Sub(start)
}

// TestMaxRunDurationIncludesGrace: a task whose runnables ignore SIGTERM
// ends at its maxRunDuration, not maxRunDuration plus the stop grace, and
// its event says how it was stopped. A script and a container.
func TestMaxRunDurationIncludesGrace(t *testing.T) {
	t.Parallel()
	const grace = 8 * time.Second
	ref := busyboxRef(t)
	e := newEnv(t, "", true, func(o *scheduler.Options) { o.StopGrace = grace })
	// Pulled before, so the limit is not spent fetching the image.
	if _, err := e.imgs.Pull(context.Background(), ref, scheduler.Auth{}); err != nil {
		t.Fatal(err)
	}
	jobs := map[string]time.Duration{}
	sj := newJob(1, 1, script("trap '' TERM; echo started; sleep 30 & wait; sleep 30"))
	sj.TaskGroups[0].TaskSpec.MaxRunDuration = durationpb.New(time.Second)
	jobs[e.submit("maxrun-script", sj).Name] = time.Second
	cj := newJob(1, 1, container(ref, "sh", "-c", "trap '' TERM; echo started; sleep 30"))
	cj.TaskGroups[0].TaskSpec.MaxRunDuration = durationpb.New(3 * time.Second)
	jobs[e.submit("maxrun-container", cj).Name] = 3 * time.Second
	for name, limit := range jobs {
		e.waitState(name, batchpb.JobStatus_FAILED, time.Minute)
		tk := e.tasks(name)[0]
		tevs := tk.GetStatus().GetStatusEvents()
		if !hasEvent(tevs, "STATUS_CHANGED", fmt.Sprintf("with exit code 50005. The task reached its maxRunDuration of %v and was stopped: SIGTERM at", limit)) ||
			!hasEvent(tevs, "STATUS_CHANGED", "stop grace is part of maxRunDuration") {
			t.Errorf("%s events:\n%s", name, events(tevs))
		}
		// Without the grace in the limit it would run limit+8s; half the
		// grace is room for a loaded machine.
		d := runTime(t, tk)
		t.Logf("%s ran %v", name, d)
		if d > limit+grace/2 {
			t.Errorf("%s ran %v with maxRunDuration %v", name, d, limit)
		}
		if out := e.logs(name, 0); !strings.HasPrefix(out, "started\n") || !strings.Contains(out, "riffle: The task reached its maxRunDuration") {
			t.Errorf("%s logs %q", name, out)
		}
	}
}

func withComputeResource(j *batchpb.Job, cpuMilli, memoryMib int64) *batchpb.Job {
	j.TaskGroups[0].TaskSpec.ComputeResource = &batchpb.ComputeResource{CpuMilli: cpuMilli, MemoryMib: memoryMib}
	return j
}

// TestParallelismFollowsCapacity: with the default capacity (this
// machine's CPUs and memory), 50 tasks of 10 mCPU run at once, however
// few CPUs the machine has: each task waits until all 50 have started.
func TestParallelismFollowsCapacity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false, func(o *scheduler.Options) { o.Capacity = scheduler.Capacity{} })
	dir := t.TempDir()
	// Shell builtins only, but for sleep: 50 waiting tasks stay cheap.
	sc := fmt.Sprintf(`touch %[1]s/s-$BATCH_TASK_INDEX
i=0
while [ $i -lt 200 ]; do
  set -- %[1]s/s-*
  [ $# -ge 50 ] && exit 0
  i=$((i+1)); sleep 0.3
done
echo "only $# tasks ran at once"; exit 1`, dir)
	j := e.submit("wide", withComputeResource(newJob(50, 50, script(sc)), 10, 10))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, 2*time.Minute)
}

// TestCapacityQueuesTasks: tasks whose computeResource does not fit wait,
// with an event saying so, and start as running tasks end; never more run
// at once than fit.
func TestCapacityQueuesTasks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "", false, func(o *scheduler.Options) {
		o.Capacity = scheduler.Capacity{CPUMilli: 1000, MemoryMiB: 1000}
	})
	dir := t.TempDir()
	gate := filepath.Join(t.TempDir(), "go")
	// Each task records how many tasks it saw running with it.
	sc := fmt.Sprintf(`touch %[1]s/run-$BATCH_TASK_INDEX
while [ ! -e %[2]s ]; do sleep 0.05; done
sleep 0.3
set -- %[1]s/run-*
echo $# > %[1]s/seen-$BATCH_TASK_INDEX
rm %[1]s/run-$BATCH_TASK_INDEX`, dir, gate)
	j := e.submit("narrow", withComputeResource(newJob(4, 4, script(sc)), 400, 100))
	// Two tasks fit; task 2 waits (and task 3 behind it, in index order).
	e.wait(j.Name, 30*time.Second, func(*batchpb.Job) bool {
		ts := e.tasks(j.Name)
		return hasEvent(ts[2].GetStatus().GetStatusEvents(), "WAITING_FOR_CAPACITY", "") &&
			ts[0].GetStatus().GetState() == batchpb.TaskStatus_RUNNING && ts[1].GetStatus().GetState() == batchpb.TaskStatus_RUNNING
	})
	ts := e.tasks(j.Name)
	want := "Task 2 waits for capacity on this node: it needs 400 mCPU and 100 MiB (taskSpec.computeResource, 2000 and 2000 when unset, as on Batch); this node offers 1000 mCPU and 1000 MiB (capacity 1000 mCPU, 1000 MiB, overcommit 1), of which 800 mCPU and 200 MiB are taken by 2 running task(s)."
	if tevs := ts[2].GetStatus().GetStatusEvents(); !hasEvent(tevs, "WAITING_FOR_CAPACITY", want) {
		t.Errorf("task 2 events lack %q:\n%s", want, events(tevs))
	}
	for i, st := range []batchpb.TaskStatus_State{ts[0].GetStatus().GetState(), ts[1].GetStatus().GetState(), ts[2].GetStatus().GetState(), ts[3].GetStatus().GetState()} {
		if want := map[bool]batchpb.TaskStatus_State{true: batchpb.TaskStatus_RUNNING, false: batchpb.TaskStatus_PENDING}[i < 2]; st != want {
			t.Errorf("task %d is %v before the gate opens, want %v", i, st, want)
		}
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, time.Minute)
	for i := 0; i < 4; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("seen-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n < 1 || n > 2 {
			t.Errorf("task %d saw %d tasks running at once; 2 fit", i, n)
		}
	}
}
