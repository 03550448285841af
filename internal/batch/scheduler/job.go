package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/logs"
	"github.com/riffle-dev/riffle/internal/batch/store"
)

// errJobFailed ends the running tasks of a job one of whose tasks failed
// for good.
var errJobFailed = errors.New("scheduler: another task of the job failed")

// jobRun is one job being run by this process.
type jobRun struct {
	s      *Scheduler
	name   string
	cancel context.CancelCauseFunc

	job     *batchpb.Job
	group   *batchpb.TaskGroup
	workDir string
	hosts   string // hosts file, when requireHostsFile
	logPath io.WriteCloser

	runningOnce sync.Once

	mu       sync.Mutex
	barriers map[int]*barrier
	failure  string // first task failure, for the job's event
	nfs      map[string]*nfsMount
}

func (r *jobRun) setJobState(ctx context.Context, to batchpb.JobStatus_State, note string) error {
	_, err := r.s.st.SetJobState(ctx, r.name, to, note)
	return err
}

// run runs the job to its end, or until ctx ends (a stop or shutdown).
func (r *jobRun) run(ctx context.Context) {
	s := r.s
	j, err := s.st.GetJob(ctx, r.name)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("scheduler: get job", "job", r.name, "err", err)
		}
		return
	}
	r.job = j
	switch j.GetStatus().GetState() {
	case batchpb.JobStatus_QUEUED:
		if err := r.setJobState(ctx, batchpb.JobStatus_SCHEDULED, ""); err != nil {
			return // being stopped: the caller finishes the stop
		}
	case batchpb.JobStatus_SCHEDULED, batchpb.JobStatus_RUNNING:
		// Resumed after a restart.
	default:
		return
	}
	if len(j.GetTaskGroups()) != 1 {
		r.fail(ctx, "the job must have exactly one task group")
		return
	}
	r.group = j.GetTaskGroups()[0]
	if r.workDir, err = s.jobWorkDir(r.name); err == nil {
		err = os.MkdirAll(r.workDir, 0o755)
	}
	if err != nil {
		r.fail(ctx, fmt.Sprintf("preparing its working directory: %v", err))
		return
	}
	defer os.RemoveAll(r.workDir)
	if r.group.GetRequireHostsFile() {
		r.hosts = filepath.Join(r.workDir, "hosts")
		// One machine: every task runs on this host.
		if err := os.WriteFile(r.hosts, []byte(s.opts.Host+"\n"), 0o644); err != nil {
			r.fail(ctx, fmt.Sprintf("writing the hosts file: %v", err))
			return
		}
	}
	if lp := j.GetLogsPolicy(); lp.GetDestination() == batchpb.LogsPolicy_PATH && lp.GetLogsPath() != "" {
		w, err := logs.PathWriter(lp.GetLogsPath())
		if err != nil {
			r.jobEvent(ctx, logsPathFailedEvent(err))
		} else {
			r.logPath = w
			defer w.Close()
		}
	}
	defer r.unmountVolumes()

	tasks, err := s.st.Tasks(ctx, r.name)
	if err != nil {
		s.log.Error("scheduler: tasks", "job", r.name, "err", err)
		return
	}
	r.barriers = map[int]*barrier{}
	for i, rn := range r.group.GetTaskSpec().GetRunnables() {
		if rn.GetBarrier() != nil {
			r.barriers[i] = newBarrier(int64(len(tasks)))
		}
	}
	conc := int(r.group.GetParallelism())
	if conc <= 0 || conc > len(tasks) {
		conc = len(tasks)
	}
	if r.group.GetSchedulingPolicy() == batchpb.TaskGroup_IN_ORDER {
		conc = 1
	}
	d := demandOf(r.group.GetTaskSpec())
	switch fit := int(min(s.pool.fit(d), int64(len(tasks)))); {
	case len(r.barriers) > 0 && conc < len(tasks):
		r.jobEvent(ctx, barrierWarningEvent(conc, len(tasks), "set parallelism to taskCount"))
	case len(r.barriers) > 0 && fit < len(tasks):
		r.jobEvent(ctx, barrierWarningEvent(fit, len(tasks), "that many fit this node's capacity; lower computeResource or raise capacity in riffle serve's config"))
	}
	if s.pool.exceeds(d) {
		r.jobEvent(ctx, taskExceedsNodeEvent(d, s.pool))
	}

	// Tasks that ended before a restart keep their outcome.
	var pending []int64
	for _, t := range tasks {
		idx := taskIndex(t.Name)
		switch t.GetStatus().GetState() {
		case batchpb.TaskStatus_FAILED:
			r.noteFailure(fmt.Sprintf("Task %d failed.", idx))
			r.leaveBarriers(idx)
		case batchpb.TaskStatus_SUCCEEDED, batchpb.TaskStatus_UNEXECUTED:
			r.leaveBarriers(idx)
		default:
			pending = append(pending, idx)
		}
	}

	tctx, cancelTasks := context.WithCancelCause(ctx)
	defer cancelTasks(nil)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var unrun []int64
	for n, idx := range pending {
		if !acquire(tctx, sem) {
			unrun = pending[n:]
			break
		}
		w, why := s.pool.enter(d)
		if why != "" {
			r.taskEvent(ctx, idx, waitingForCapacityEvent(idx, why))
			if s.pool.wait(tctx, w) != nil {
				<-sem
				unrun = pending[n:]
				break
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { s.pool.release(w); <-sem }()
			if !r.runTask(tctx, idx) {
				cancelTasks(errJobFailed)
			}
		}()
	}
	wg.Wait()

	switch cause := context.Cause(ctx); {
	case ctx.Err() != nil && cause == errShutdown:
		return // left as is for the next Start
	case ctx.Err() != nil:
		return // stopped: the caller finishes the stop
	}
	for _, idx := range unrun {
		r.leaveBarriers(idx)
		if r.setTask(ctx, idx, batchpb.TaskStatus_UNEXECUTED, store.TaskUpdate{Note: "The job failed before the task ran."}) == nil {
			r.taskDone(idx)
		}
	}
	r.mu.Lock()
	failure := r.failure
	r.mu.Unlock()
	if failure != "" {
		err = r.setJobState(ctx, batchpb.JobStatus_FAILED, failure)
	} else {
		if err = r.ensureRunning(ctx); err == nil {
			err = r.setJobState(ctx, batchpb.JobStatus_SUCCEEDED, "")
		}
	}
	if err != nil {
		s.logStore(ctx, "setting the job's final state", err, "job", r.name)
		return
	}
	s.jobDone(r.name)
	s.log.Info("scheduler: job finished", "job", r.name, "failed", failure != "")
}

// acquire takes a slot of sem unless ctx ends first. A slot won in a tie
// with ctx's end is given back: nothing new starts after a stop.
func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	if ctx.Err() != nil {
		<-sem
		return false
	}
	return true
}

// fail marks a job FAILED before any task ran.
func (r *jobRun) fail(ctx context.Context, why string) {
	tasks, err := r.s.st.Tasks(ctx, r.name)
	r.s.logStore(ctx, "listing tasks", err, "job", r.name)
	for _, t := range tasks {
		if t.GetStatus().GetState() == batchpb.TaskStatus_PENDING {
			r.setTask(ctx, taskIndex(t.Name), batchpb.TaskStatus_UNEXECUTED, store.TaskUpdate{Note: "The job failed before the task ran."}) //nolint:errcheck // logged by setTask
		}
	}
	if err := r.setJobState(ctx, batchpb.JobStatus_FAILED, "Riffle could not run the job: "+why); err != nil {
		r.s.logStore(ctx, "failing the job", err, "job", r.name)
		return
	}
	r.s.jobDone(r.name)
}

func (r *jobRun) noteFailure(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failure == "" {
		r.failure = s
	}
}

// ensureRunning moves the job to RUNNING once, when its first task runs.
func (r *jobRun) ensureRunning(ctx context.Context) error {
	var err error
	r.runningOnce.Do(func() {
		err = r.setJobState(ctx, batchpb.JobStatus_RUNNING, "")
	})
	return err
}

func taskName(jobName string, idx int64) string {
	return jobName + "/taskGroups/group0/tasks/" + strconv.FormatInt(idx, 10)
}

func taskIndex(name string) int64 {
	_, idx, err := store.ParseTaskName(name)
	if err != nil {
		return -1
	}
	return idx
}

// attemptsOf counts how many times a task has started running.
func attemptsOf(t *batchpb.Task) int {
	n := 0
	for _, e := range t.GetStatus().GetStatusEvents() {
		if e.GetType() == "STATUS_CHANGED" && e.GetTaskState() == batchpb.TaskStatus_RUNNING {
			n++
		}
	}
	return n
}

// lastExitCode is the exit code of the task's last recorded attempt.
func lastExitCode(t *batchpb.Task) int32 {
	evs := t.GetStatus().GetStatusEvents()
	for i := len(evs) - 1; i >= 0; i-- {
		if te := evs[i].GetTaskExecution(); te != nil {
			return te.GetExitCode()
		}
	}
	return 0
}

// shouldRetry applies maxRetryCount and lifecyclePolicies to a task that
// failed with code after attempts attempts; why explains a refusal.
//
// As Batch documents: a RETRY_TASK policy retries the exit codes it
// lists and fails the others; a FAIL_TASK policy fails the codes it lists
// and retries the others. The first policy listing the code decides; when
// none does, RETRY_TASK policies make it fail and otherwise it is retried.
func shouldRetry(spec *batchpb.TaskSpec, code, attempts int) (bool, string) {
	max := int(spec.GetMaxRetryCount())
	if attempts > max {
		if max == 0 {
			return false, "maxRetryCount is 0, so it is not retried."
		}
		return false, fmt.Sprintf("all %d attempts (maxRetryCount %d) were used.", max+1, max)
	}
	haveRetry := false
	for i, p := range spec.GetLifecyclePolicies() {
		codes := p.GetActionCondition().GetExitCodes()
		listed := slices.Contains(codes, int32(code))
		switch p.GetAction() {
		case batchpb.LifecyclePolicy_FAIL_TASK:
			if listed {
				return false, fmt.Sprintf("lifecyclePolicies[%d] fails the task on exit code %d.", i, code)
			}
		case batchpb.LifecyclePolicy_RETRY_TASK:
			haveRetry = true
			if listed {
				return true, ""
			}
		}
	}
	if haveRetry {
		return false, fmt.Sprintf("no RETRY_TASK lifecycle policy lists exit code %d.", code)
	}
	return true, ""
}

// runTask runs task idx with its retries; false means it failed for good.
func (r *jobRun) runTask(ctx context.Context, idx int64) bool {
	s := r.s
	name := taskName(r.name, idx)
	spec := r.group.GetTaskSpec()
	t, err := s.st.GetTask(ctx, name)
	if err != nil {
		s.logStore(ctx, "reading a task", err, "task", name)
		return ctx.Err() != nil
	}
	attempts := attemptsOf(t)
	prev := lastExitCode(t)
	for {
		if ctx.Err() != nil {
			return r.stopped(ctx, idx)
		}
		if err := r.setTask(ctx, idx, batchpb.TaskStatus_ASSIGNED, store.TaskUpdate{}); err != nil {
			return r.stopped(ctx, idx)
		}
		if err := r.ensureRunning(ctx); err != nil {
			s.logStore(ctx, "setting the job RUNNING", err, "job", r.name)
			return r.stopped(ctx, idx)
		}
		if err := r.setTask(ctx, idx, batchpb.TaskStatus_RUNNING, store.TaskUpdate{}); err != nil {
			return r.stopped(ctx, idx)
		}
		res := r.attempt(ctx, idx, attempts, prev)
		attempts++
		prev = int32(res.code)
		if ctx.Err() != nil {
			return r.stopped(ctx, idx)
		}
		code := int32(res.code)
		if res.code == 0 {
			r.leaveBarriers(idx)
			if r.setTask(ctx, idx, batchpb.TaskStatus_SUCCEEDED, store.TaskUpdate{ExitCode: &code}) == nil {
				r.taskDone(idx)
			}
			return true
		}
		retry, why := shouldRetry(spec, res.code, attempts)
		if retry {
			note := fmt.Sprintf("Retrying (attempt %d of %d).", attempts+1, spec.GetMaxRetryCount()+1)
			if res.note != "" {
				note = res.note + " " + note
			}
			if err := r.setTask(ctx, idx, batchpb.TaskStatus_PENDING, store.TaskUpdate{ExitCode: &code, Note: note}); err != nil {
				return r.stopped(ctx, idx)
			}
			continue
		}
		r.leaveBarriers(idx)
		note := "The task failed: " + why
		if res.note != "" {
			note = res.note + " " + note
		}
		r.noteFailure(fmt.Sprintf("Task %d failed with exit code %d.", idx, code))
		if r.setTask(ctx, idx, batchpb.TaskStatus_FAILED, store.TaskUpdate{ExitCode: &code, Note: note}) == nil {
			r.taskDone(idx)
		}
		return false
	}
}

// stopped handles a task whose context ended. After a cancel or delete
// the store settles its state (FinishStop) and at shutdown the next Start
// does; when another task failed it fails too, as the job does.
func (r *jobRun) stopped(ctx context.Context, idx int64) bool {
	r.leaveBarriers(idx)
	if context.Cause(ctx) != errJobFailed {
		return true
	}
	bg := context.WithoutCancel(ctx)
	t, err := r.s.st.GetTask(bg, taskName(r.name, idx))
	if err != nil {
		r.s.logStore(bg, "reading a stopped task", err, "job", r.name, "task", idx)
		return true
	}
	switch t.GetStatus().GetState() {
	case batchpb.TaskStatus_ASSIGNED, batchpb.TaskStatus_RUNNING:
		err = r.setTask(bg, idx, batchpb.TaskStatus_FAILED, store.TaskUpdate{Note: "Stopped because another task of the job failed."})
	case batchpb.TaskStatus_PENDING:
		err = r.setTask(bg, idx, batchpb.TaskStatus_UNEXECUTED, store.TaskUpdate{Note: "The job failed before the task ran."})
	default:
		return true
	}
	if err == nil {
		r.taskDone(idx)
	}
	return true
}

// barrier holds the tasks of a group until every one has reached it (or
// can no longer reach it: it ended).
type barrier struct {
	mu      sync.Mutex
	need    int64
	arrived map[int64]bool
	open    chan struct{}
}

func newBarrier(n int64) *barrier {
	b := &barrier{need: n, arrived: map[int64]bool{}, open: make(chan struct{})}
	if n <= 0 {
		close(b.open)
	}
	return b
}

func (b *barrier) arrive(idx int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.arrived[idx] {
		return
	}
	b.arrived[idx] = true
	if int64(len(b.arrived)) == b.need {
		close(b.open)
	}
}

func (b *barrier) wait(ctx context.Context, idx int64) error {
	b.arrive(idx)
	select {
	case <-b.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// leaveBarriers counts a task that will not reach the barriers (it ended)
// as arrived, so the others are not held forever.
func (r *jobRun) leaveBarriers(idx int64) {
	for _, b := range r.barriers {
		b.arrive(idx)
	}
}

// KernelHasNFS reports whether the running kernel can mount NFS.
func KernelHasNFS() bool {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return true // unknown: let mount's own message speak
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && (f[len(f)-1] == "nfs" || f[len(f)-1] == "nfs4") {
			return true
		}
	}
	return false
}

// nfsMount is one NFS volume mounted for the job.
type nfsMount struct {
	once sync.Once
	err  error
	path string
}

// mountNFS mounts an NFS volume at its mountPath once per job.
func (r *jobRun) mountNFS(ctx context.Context, v *batchpb.Volume) error {
	r.mu.Lock()
	if r.nfs == nil {
		r.nfs = map[string]*nfsMount{}
	}
	m := r.nfs[v.GetMountPath()]
	if m == nil {
		m = &nfsMount{path: v.GetMountPath()}
		r.nfs[v.GetMountPath()] = m
	}
	r.mu.Unlock()
	m.once.Do(func() {
		n := v.GetNfs()
		if err := os.MkdirAll(v.GetMountPath(), 0o755); err != nil {
			m.err = err
			return
		}
		args := []string{"-t", "nfs"}
		if len(v.GetMountOptions()) > 0 {
			args = append(args, "-o", strings.Join(v.GetMountOptions(), ","))
		}
		args = append(args, n.GetServer()+":"+n.GetRemotePath(), v.GetMountPath())
		out, err := exec.CommandContext(ctx, "mount", args...).CombinedOutput()
		if err != nil {
			m.err = fmt.Errorf("mount %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			if !KernelHasNFS() {
				m.err = fmt.Errorf("%w (this node's kernel has no NFS client: nfs is not in /proc/filesystems; run the job on a node whose kernel has NFS, or copy the data to a host path and use mountPath with a local volume)", m.err)
			}
			m.path = ""
		}
	})
	return m.err
}

func (r *jobRun) unmountVolumes() {
	r.mu.Lock()
	ms := r.nfs
	r.nfs = nil
	r.mu.Unlock()
	for _, m := range ms {
		if m.err == nil && m.path != "" {
			if out, err := exec.Command("umount", m.path).CombinedOutput(); err != nil {
				_ = exec.Command("umount", "-l", m.path).Run()
				r.s.log.Warn("scheduler: unmounting NFS volume", "path", m.path, "err", err, "output", string(out))
			}
		}
	}
}
