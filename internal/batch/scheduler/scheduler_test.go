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
	imgs  *scheduler.Images
}

// newEnv starts a store, runtime, image source, scheduler and API in dir
// (a fresh temp dir when empty). withRuntime needs root and runc.
func newEnv(t *testing.T, dir string, withRuntime bool) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := store.Open(dir, store.Options{Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, st: st}
	opts := scheduler.Options{DataDir: dir, StopGrace: time.Second, MaxParallelTasks: 4}
	if withRuntime {
		testutil.RequiresRoot(t)
		testutil.RequiresBinary(t, "runc")
		e.rt, err = runtime.New(runtime.Config{Root: filepath.Join(dir, "runtime"), StopGrace: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		e.imgs, err = scheduler.NewImages(scheduler.ImagesOptions{Dir: filepath.Join(dir, "images")})
		if err != nil {
			t.Fatal(err)
		}
		opts.Runtime, opts.Images = e.rt, e.imgs
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
		if !hasEvent(tevs, "IMAGE_STREAMED", "was streamed for runnable 0") {
			t.Errorf("task %d: no IMAGE_STREAMED event:\n%s", i, events(tevs))
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
	imgs, err := scheduler.NewImages(scheduler.ImagesOptions{Dir: filepath.Join(dir, "images"), NoBuildIndexes: true})
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
	s, err := scheduler.New(st, scheduler.Options{DataDir: dir, Runtime: rt, Images: imgs})
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
	for i, tk := range e.tasks(j.Name) {
		tevs := tk.GetStatus().GetStatusEvents()
		if !hasEvent(tevs, "IMAGE_STREAMING_FALLBACK", "cannot be streamed") || !hasEvent(tevs, "IMAGE_PULLED", "was pulled") {
			t.Errorf("task %d events:\n%s", i, events(tevs))
		}
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
	if out := e.logs(j1.Name, 0); out != "attempt=0\nattempt=1\nattempt=2\n" {
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
	if tevs := e.tasks(j2.Name)[0].GetStatus().GetStatusEvents(); !hasEvent(tevs, "STATUS_CHANGED", "with exit code 50005. The task exceeded its maxRunDuration") {
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
	imgs, err := scheduler.NewImages(scheduler.ImagesOptions{Dir: filepath.Join(dir, "images")})
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
	if out := e.logs(retried, 0); out != "ran-after-restart\n" {
		t.Errorf("retried logs %q (job %v)", out, jr.GetStatus().GetState())
	}

	e.waitState(failed, batchpb.JobStatus_FAILED, 30*time.Second)
	tevs = e.tasks(failed)[0].GetStatus().GetStatusEvents()
	if !hasEvent(tevs, "STATUS_CHANGED", "from RUNNING to FAILED on testhost with exit code 50003. Riffle restarted while the task was running; maxRetryCount is 0") {
		t.Errorf("failed task events:\n%s", events(tevs))
	}
	e.waitState(queued, batchpb.JobStatus_SUCCEEDED, 30*time.Second)
}
