package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/logs"
	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/runtime"
)

// Options configure a Scheduler.
type Options struct {
	// DataDir is Riffle's data dir; the scheduler keeps task logs in
	// DataDir/batch/logs and task working files in DataDir/batch/work.
	// Required.
	DataDir string
	// Runtime runs container runnables. Nil makes them fail with an event
	// saying so (script jobs still run).
	Runtime *runtime.Runtime
	// Images provides container root filesystems. Nil makes container
	// runnables fail with an event saying so.
	Images ImageSource
	// Logger receives the scheduler's records; nil discards them.
	Logger *slog.Logger
	// Capacity is what this node offers tasks: tasks of all jobs run at
	// once while their computeResource fits (default: the machine's CPUs
	// and memory, no overcommit).
	Capacity Capacity
	// StopGrace is the wait between SIGTERM and SIGKILL when a runnable is
	// stopped (cancel, timeout, end of a background runnable). Default 10s.
	StopGrace time.Duration
	// Host is written into the hosts file of requireHostsFile jobs
	// (default 127.0.0.1: tasks share the host's network).
	Host string
	// Scripts says how script runnables run (confine.go). The zero value
	// runs them directly on the host; riffle serve confines them.
	Scripts ScriptPolicy
}

// errStopped is the cause of a job context ended by a cancel or delete;
// errShutdown by Close.
var (
	errStopped  = errors.New("scheduler: job stopped")
	errShutdown = errors.New("scheduler: shutting down")
)

// Scheduler runs Batch jobs from the store. It implements api.Runner.
type Scheduler struct {
	st   *store.Store
	opts Options
	log  *slog.Logger
	logs *logs.Dir
	work string
	pool *pool

	stopMu sync.Mutex // serialises finishStop

	mu      sync.Mutex
	started bool
	closed  bool
	ctx     context.Context
	cancel  context.CancelCauseFunc
	runs    map[string]*jobRun
	early   []string // submitted before Start finished
	wg      sync.WaitGroup
}

var _ api.Runner = (*Scheduler)(nil)

// New returns a Scheduler over st. It runs nothing until Start.
func New(st *store.Store, opts Options) (*Scheduler, error) {
	if st == nil {
		return nil, errors.New("scheduler: a store is required")
	}
	if opts.DataDir == "" || !filepath.IsAbs(opts.DataDir) {
		return nil, fmt.Errorf("scheduler: Options.DataDir %q must be an absolute directory", opts.DataDir)
	}
	opts.Capacity = opts.Capacity.withDefaults()
	if opts.StopGrace <= 0 {
		opts.StopGrace = 10 * time.Second
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ld, err := logs.New(filepath.Join(opts.DataDir, "batch", "logs"))
	if err != nil {
		return nil, err
	}
	work := filepath.Join(opts.DataDir, "batch", "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Scheduler{
		st: st, opts: opts, log: log, logs: ld, work: work,
		pool: newPool(opts.Capacity),
		ctx:  ctx, cancel: cancel, runs: map[string]*jobRun{},
	}, nil
}

// Logs returns the task logs, for the API and CLI to read
// (logs.Dir.Read with follow).
func (s *Scheduler) Logs() *logs.Dir { return s.logs }

// Start recovers from a previous process and starts running jobs: it
// removes containers and mounts a crashed process left (runtime.Cleanup),
// completes interrupted cancels and deletes, puts tasks left ASSIGNED or
// RUNNING back to PENDING (or FAILED when maxRetryCount allows no other
// attempt) with an event saying why, and runs every QUEUED, SCHEDULED and
// RUNNING job. Call it once, after the API is set up with this runner.
func (s *Scheduler) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		return errors.New("scheduler: Start called twice or after Close")
	}
	s.mu.Unlock()
	if s.opts.Runtime != nil {
		if err := s.opts.Runtime.Cleanup(ctx); err != nil {
			// Leftovers that cannot be removed do not stop new work.
			s.log.Warn("scheduler: cleaning up after the previous process", "err", err)
		}
	}
	// Scripts' scratch space of interrupted tasks: nothing in it survives.
	if err := os.RemoveAll(s.work); err != nil {
		s.log.Warn("scheduler: removing the previous process's work directories", "err", err)
	}
	if err := os.MkdirAll(s.work, 0o755); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if err := s.sweepOrphans(ctx); err != nil {
		s.log.Warn("scheduler: removing leftovers of deleted jobs", "err", err)
	}
	stopping, err := s.st.JobsInState(ctx, batchpb.JobStatus_CANCELLATION_IN_PROGRESS, batchpb.JobStatus_DELETION_IN_PROGRESS)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	for _, j := range stopping {
		s.finishStop(ctx, j.Name)
	}
	active, err := s.st.JobsInState(ctx, batchpb.JobStatus_QUEUED, batchpb.JobStatus_SCHEDULED, batchpb.JobStatus_RUNNING)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	sort.SliceStable(active, func(a, b int) bool {
		return active[a].GetCreateTime().AsTime().Before(active[b].GetCreateTime().AsTime())
	})
	for _, j := range active {
		if j.GetStatus().GetState() != batchpb.JobStatus_QUEUED {
			if err := s.recoverTasks(ctx, j); err != nil {
				s.log.Error("scheduler: recovering tasks", "job", j.Name, "err", err)
			}
		}
	}
	s.mu.Lock()
	s.started = true
	for _, j := range active {
		s.launchLocked(j.Name)
	}
	for _, name := range s.early {
		s.launchLocked(name) // a no-op for jobs already launched
	}
	s.early = nil
	s.mu.Unlock()
	return nil
}

// recoverTasks settles the tasks a previous process left ASSIGNED or
// RUNNING: they never finish by themselves.
func (s *Scheduler) recoverTasks(ctx context.Context, j *batchpb.Job) error {
	tasks, err := s.st.Tasks(ctx, j.Name)
	if err != nil {
		return err
	}
	spec := j.GetTaskGroups()[0].GetTaskSpec()
	for _, t := range tasks {
		switch t.GetStatus().GetState() {
		case batchpb.TaskStatus_ASSIGNED:
			_, err = s.st.SetTaskState(ctx, t.Name, batchpb.TaskStatus_PENDING, store.TaskUpdate{
				Note: "Riffle restarted before the task ran; it will run again.",
			})
		case batchpb.TaskStatus_RUNNING:
			attempts := attemptsOf(t)
			code := int32(ExitRestarted)
			if retry, why := shouldRetry(spec, int(code), attempts); retry {
				_, err = s.st.SetTaskState(ctx, t.Name, batchpb.TaskStatus_PENDING, store.TaskUpdate{
					ExitCode: &code,
					Note:     fmt.Sprintf("Riffle restarted while the task was running; retrying (attempt %d of %d).", attempts+1, spec.GetMaxRetryCount()+1),
				})
			} else {
				_, err = s.st.SetTaskState(ctx, t.Name, batchpb.TaskStatus_FAILED, store.TaskUpdate{
					ExitCode: &code,
					Note:     "Riffle restarted while the task was running; " + why,
				})
				if err == nil {
					if err := s.logs.MarkTaskDone(j.Name, taskIndex(t.Name)); err != nil {
						s.log.Warn("scheduler: marking task logs done", "task", t.Name, "err", err)
					}
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Close stops running tasks (they are left RUNNING in the store, so the
// next Start retries them as after a crash) and waits for the job
// goroutines. It does not close the store, runtime or image source.
func (s *Scheduler) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel(errShutdown)
	s.wg.Wait()
	return nil
}

// Submit starts running a newly created job. It returns at once.
func (s *Scheduler) Submit(ctx context.Context, jobName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return // the next Start picks QUEUED jobs up
	}
	if !s.started {
		// Start may already have listed the QUEUED jobs; remember it.
		s.early = append(s.early, jobName)
		return
	}
	s.launchLocked(jobName)
}

// Cancel stops a job being cancelled or deleted and completes the stop
// (store.FinishStop). It returns at once.
func (s *Scheduler) Cancel(ctx context.Context, jobName string) {
	s.mu.Lock()
	r := s.runs[jobName]
	if r != nil {
		r.cancel(errStopped)
	}
	closed := s.closed
	s.mu.Unlock()
	if r != nil || closed {
		// The job's goroutine finishes the stop once its tasks ended; after
		// Close, the next Start does.
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.finishStop(context.WithoutCancel(ctx), jobName)
	}()
}

func (s *Scheduler) launchLocked(name string) {
	if s.runs[name] != nil {
		return
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	r := &jobRun{s: s, name: name, cancel: cancel}
	s.runs[name] = r
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		r.run(ctx)
		s.mu.Lock()
		delete(s.runs, name)
		s.mu.Unlock()
		cancel(nil)
		if context.Cause(ctx) == errShutdown {
			return
		}
		// A stop may have begun after the job's last look at its state;
		// finishing one twice is harmless.
		s.finishStop(context.Background(), name)
	}()
}

// finishStop completes a cancel or delete of a job whose tasks no longer
// run. A deleted job's logs and work files go before the store forgets
// the job: while it is DELETION_IN_PROGRESS no new job can take its ID,
// so what is removed is never a new job's. stopMu keeps two callers from
// both seeing the old job and one removing a successor's logs.
func (s *Scheduler) finishStop(ctx context.Context, name string) {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	j, err := s.st.GetJob(ctx, name)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Error("scheduler: finishing stop", "job", name, "err", err)
		}
		return // gone already
	}
	st := j.GetStatus().GetState()
	if st != batchpb.JobStatus_CANCELLATION_IN_PROGRESS && st != batchpb.JobStatus_DELETION_IN_PROGRESS {
		return
	}
	if st == batchpb.JobStatus_DELETION_IN_PROGRESS {
		// A failure here does not hold the delete: Start sweeps what is
		// left of jobs the store no longer knows.
		if err := s.removeJobFiles(name); err != nil {
			s.log.Warn("scheduler: removing a deleted job's files", "job", name, "err", err)
		}
	}
	if err := s.st.FinishStop(ctx, name); err != nil {
		s.log.Error("scheduler: finishing stop", "job", name, "err", err)
		return
	}
	if st == batchpb.JobStatus_CANCELLATION_IN_PROGRESS {
		s.jobDone(name)
		if d, err := s.jobWorkDir(name); err == nil {
			if err := os.RemoveAll(d); err != nil {
				s.log.Warn("scheduler: removing work directory", "job", name, "err", err)
			}
		}
	}
	s.log.Info("scheduler: job stopped", "job", name, "was", st)
}

// removeJobFiles removes everything the scheduler keeps of a job: its
// logs (done markers included) and its work directory.
func (s *Scheduler) removeJobFiles(name string) error {
	var errs []error
	if err := s.logs.Remove(name); err != nil {
		errs = append(errs, err)
	}
	d, err := s.jobWorkDir(name)
	if err == nil {
		err = os.RemoveAll(d)
		// Drop the now empty location and project directories, best effort.
		_ = os.Remove(filepath.Dir(d))
		_ = os.Remove(filepath.Dir(filepath.Dir(d)))
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("scheduler: %w", err))
	}
	return errors.Join(errs...)
}

// sweepOrphans removes the logs of jobs the store no longer has: left by
// a delete whose file removal failed, or by a Riffle that removed them
// only after forgetting the job and died in between.
func (s *Scheduler) sweepOrphans(ctx context.Context) error {
	names, err := s.logs.Jobs()
	if err != nil {
		return err
	}
	for _, name := range names {
		s.stopMu.Lock()
		_, err := s.st.GetJob(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			s.log.Info("scheduler: removing the logs of a job that no longer exists", "job", name)
			err = s.removeJobFiles(name)
		}
		s.stopMu.Unlock()
		if err != nil {
			return fmt.Errorf("scheduler: sweeping logs of deleted jobs: %w", err)
		}
	}
	return nil
}

func (s *Scheduler) jobWorkDir(name string) (string, error) {
	d, err := s.logs.JobDir(name)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(s.logs.Root(), d)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.work, rel), nil
}
