package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

// Sentinel errors; the API maps them to gRPC codes.
var (
	ErrNotFound           = errors.New("store: not found")
	ErrAlreadyExists      = errors.New("store: already exists")
	ErrInvalidArgument    = errors.New("store: invalid argument")
	ErrFailedPrecondition = errors.New("store: failed precondition")
)

// FileName is the database's name inside the data dir.
const FileName = "batch.db"

var (
	bJobs      = []byte("jobs")     // job name -> batchpb.Job
	bTasks     = []byte("tasks")    // job name \x00 uint64 index -> batchpb.Task
	bOps       = []byte("ops")      // operation name -> longrunningpb.Operation
	bJobOps    = []byte("jobops")   // job name \x00 op name -> "" (pending stops)
	bRequests  = []byte("requests") // kind \x00 scope \x00 request id -> resource name
	bRunning   = []byte("running")  // job name -> RFC 3339 time it last entered RUNNING
	bMeta      = []byte("meta")
	allBuckets = [][]byte{bJobs, bTasks, bOps, bJobOps, bRequests, bRunning, bMeta}
)

const schemaVersion = "1"

// Options configure a Store. The zero value is valid.
type Options struct {
	// Now is the clock; defaults to time.Now. Tests pin it.
	Now func() time.Time
	// Host names this machine in task status events ("Task state is
	// updated from ASSIGNED to RUNNING on HOST"); defaults to os.Hostname.
	Host string
	// LockTimeout bounds the wait for another process's lock on the
	// database; defaults to 2s, after which Open fails instead of hanging.
	LockTimeout time.Duration
}

// Store keeps Batch resources in one bbolt file. All methods are safe for
// concurrent use; every method that changes state is one transaction.
type Store struct {
	db   *bolt.DB
	now  func() time.Time
	host string
}

// Open opens (creating when needed) dataDir/batch.db.
func Open(dataDir string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Host == "" {
		opts.Host, _ = os.Hostname()
		if opts.Host == "" {
			opts.Host = "localhost"
		}
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = 2 * time.Second
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	path := filepath.Join(dataDir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bMeta)
		if v := m.Get([]byte("schema")); v != nil && string(v) != schemaVersion {
			return fmt.Errorf("schema version %s, this build reads %s", v, schemaVersion)
		}
		return m.Put([]byte("schema"), []byte(schemaVersion))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	return &Store{db: db, now: opts.Now, host: opts.Host}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Host is the machine name used in task events.
func (s *Store) Host() string { return s.host }

func taskKey(jobName string, index int64) []byte {
	k := make([]byte, 0, len(jobName)+9)
	k = append(k, jobName...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(index))
}

func taskPrefix(jobName string) []byte { return append([]byte(jobName), 0) }

// ParseTaskName splits ".../jobs/J/taskGroups/group0/tasks/N".
func ParseTaskName(name string) (jobName string, index int64, err error) {
	i := strings.Index(name, "/taskGroups/")
	if i < 0 {
		return "", 0, fmt.Errorf("%w: %q is not a task name (projects/P/locations/L/jobs/J/taskGroups/group0/tasks/N)", ErrInvalidArgument, name)
	}
	jobName = name[:i]
	rest := strings.Split(name[i+len("/taskGroups/"):], "/")
	if _, _, _, ok := job.SplitName(jobName); !ok || len(rest) != 3 || rest[1] != "tasks" {
		return "", 0, fmt.Errorf("%w: %q is not a task name (projects/P/locations/L/jobs/J/taskGroups/group0/tasks/N)", ErrInvalidArgument, name)
	}
	if rest[0] != job.TaskGroupID {
		return "", 0, fmt.Errorf("%w: task group %q (jobs have only %s)", ErrNotFound, rest[0], job.TaskGroupID)
	}
	index, perr := strconv.ParseInt(rest[2], 10, 64)
	if perr != nil || index < 0 || strconv.FormatInt(index, 10) != rest[2] {
		return "", 0, fmt.Errorf("%w: task %q (task IDs are 0, 1, ...)", ErrNotFound, rest[2])
	}
	return jobName, index, nil
}

func get[M proto.Message](b *bolt.Bucket, key []byte, m M) (M, bool, error) {
	v := b.Get(key)
	if v == nil {
		return m, false, nil
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return m, false, fmt.Errorf("store: corrupt record %q: %w", key, err)
	}
	return m, true, nil
}

func put(b *bolt.Bucket, key []byte, m proto.Message) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("store: encode %q: %w", key, err)
	}
	return b.Put(key, v)
}

func (s *Store) getJob(tx *bolt.Tx, name string) (*batchpb.Job, error) {
	j, ok, err := get(tx.Bucket(bJobs), []byte(name), new(batchpb.Job))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: job %q", ErrNotFound, name)
	}
	return j, nil
}

func requestKey(kind, scope, id string) []byte {
	return []byte(kind + "\x00" + scope + "\x00" + id)
}

// CreateJob stores a prepared job (see job.Prepare) and its tasks, all
// PENDING. With a requestID, a second call with the same parent and ID
// returns the job the first call created and created=false, as long as
// that job still exists. A job with the same name is ErrAlreadyExists.
func (s *Store) CreateJob(ctx context.Context, j *batchpb.Job, requestID string) (stored *batchpb.Job, created bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	project, location, _, ok := job.SplitName(j.GetName())
	if !ok || len(j.GetTaskGroups()) != 1 {
		return nil, false, fmt.Errorf("%w: job must be prepared (named, one task group) before it is stored", ErrInvalidArgument)
	}
	parent := "projects/" + project + "/locations/" + location
	err = s.db.Update(func(tx *bolt.Tx) error {
		if requestID != "" {
			if prev := tx.Bucket(bRequests).Get(requestKey("create", parent, requestID)); prev != nil {
				if pj, ok, err := get(tx.Bucket(bJobs), prev, new(batchpb.Job)); err != nil {
					return err
				} else if ok {
					stored = pj
					return nil
				}
			}
		}
		jobs := tx.Bucket(bJobs)
		if jobs.Get([]byte(j.Name)) != nil {
			return fmt.Errorf("%w: job %q already exists; pick another jobId or delete it first", ErrAlreadyExists, j.Name)
		}
		g := j.TaskGroups[0]
		n := g.GetTaskCount()
		if n <= 0 {
			n = 1
		}
		j = proto.Clone(j).(*batchpb.Job)
		if j.Status == nil {
			j.Status = &batchpb.JobStatus{State: batchpb.JobStatus_QUEUED}
		}
		j.Status.TaskGroups = map[string]*batchpb.JobStatus_TaskGroupStatus{
			job.TaskGroupID: {Counts: map[string]int64{batchpb.TaskStatus_PENDING.String(): n}},
		}
		tasks := tx.Bucket(bTasks)
		for i := int64(0); i < n; i++ {
			t := &batchpb.Task{
				Name:   job.TaskName(j.Name, i),
				Status: &batchpb.TaskStatus{State: batchpb.TaskStatus_PENDING},
			}
			if err := put(tasks, taskKey(j.Name, i), t); err != nil {
				return err
			}
		}
		if err := put(jobs, []byte(j.Name), j); err != nil {
			return err
		}
		if requestID != "" {
			if err := tx.Bucket(bRequests).Put(requestKey("create", parent, requestID), []byte(j.Name)); err != nil {
				return err
			}
		}
		stored, created = j, true
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return stored, created, nil
}

// GetJob returns the job named name, or ErrNotFound.
func (s *Store) GetJob(ctx context.Context, name string) (*batchpb.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var j *batchpb.Job
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		j, err = s.getJob(tx, name)
		if err == nil {
			s.liveRunDuration(tx, j)
		}
		return err
	})
	return j, err
}

// liveRunDuration adds the current RUNNING spell to a running job's
// runDuration for readers, as Batch shows it growing while a job runs.
func (s *Store) liveRunDuration(tx *bolt.Tx, j *batchpb.Job) {
	if j.GetStatus().GetState() != batchpb.JobStatus_RUNNING {
		return
	}
	since := tx.Bucket(bRunning).Get([]byte(j.Name))
	if since == nil {
		return
	}
	t, err := time.Parse(time.RFC3339Nano, string(since))
	if err != nil {
		return
	}
	if now := s.now(); now.After(t) {
		j.Status.RunDuration = durationpb.New(j.Status.GetRunDuration().AsDuration() + now.Sub(t))
	}
}

// GetTask returns the task named name, or ErrNotFound.
func (s *Store) GetTask(ctx context.Context, name string) (*batchpb.Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	jobName, index, err := ParseTaskName(name)
	if err != nil {
		return nil, err
	}
	var t *batchpb.Task
	err = s.db.View(func(tx *bolt.Tx) error {
		var ok bool
		var err error
		t, ok, err = get(tx.Bucket(bTasks), taskKey(jobName, index), new(batchpb.Task))
		if err != nil {
			return err
		}
		if !ok {
			if tx.Bucket(bJobs).Get([]byte(jobName)) == nil {
				return fmt.Errorf("%w: job %q", ErrNotFound, jobName)
			}
			return fmt.Errorf("%w: task %q", ErrNotFound, name)
		}
		return nil
	})
	return t, err
}

// JobsInState returns every job (in all projects and locations) whose
// state is one of states, in name order. The scheduler uses it to recover
// after a restart.
func (s *Store) JobsInState(ctx context.Context, states ...batchpb.JobStatus_State) ([]*batchpb.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	want := map[batchpb.JobStatus_State]bool{}
	for _, st := range states {
		want[st] = true
	}
	var out []*batchpb.Job
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bJobs).ForEach(func(k, v []byte) error {
			j := new(batchpb.Job)
			if err := proto.Unmarshal(v, j); err != nil {
				return fmt.Errorf("store: corrupt job %q: %w", k, err)
			}
			if want[j.GetStatus().GetState()] {
				out = append(out, j)
			}
			return nil
		})
	})
	return out, err
}

// Tasks returns all tasks of a job in index order.
func (s *Store) Tasks(ctx context.Context, jobName string) ([]*batchpb.Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*batchpb.Task
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bJobs).Get([]byte(jobName)) == nil {
			return fmt.Errorf("%w: job %q", ErrNotFound, jobName)
		}
		var err error
		out, err = scanTasks(tx, jobName)
		return err
	})
	return out, err
}

func scanTasks(tx *bolt.Tx, jobName string) ([]*batchpb.Task, error) {
	var out []*batchpb.Task
	prefix := taskPrefix(jobName)
	c := tx.Bucket(bTasks).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		t := new(batchpb.Task)
		if err := proto.Unmarshal(v, t); err != nil {
			return nil, fmt.Errorf("store: corrupt task %q: %w", k, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// terminal reports whether a job state is final.
func terminal(st batchpb.JobStatus_State) bool {
	switch st {
	case batchpb.JobStatus_SUCCEEDED, batchpb.JobStatus_FAILED, batchpb.JobStatus_CANCELLED:
		return true
	}
	return false
}

// Terminal reports whether a job in state st will never change again
// (except to be deleted).
func Terminal(st batchpb.JobStatus_State) bool { return terminal(st) }

// jobTransitionOK encodes the job life cycle: active jobs (QUEUED,
// SCHEDULED, RUNNING) move freely among themselves and to SUCCEEDED,
// FAILED, CANCELLATION_IN_PROGRESS or DELETION_IN_PROGRESS; a cancelling
// job only becomes CANCELLED (or starts deleting); final jobs only start
// deleting; a deleting job only disappears.
func jobTransitionOK(from, to batchpb.JobStatus_State) bool {
	if to == batchpb.JobStatus_STATE_UNSPECIFIED {
		return false
	}
	switch from {
	case batchpb.JobStatus_DELETION_IN_PROGRESS:
		return false
	case batchpb.JobStatus_CANCELLATION_IN_PROGRESS:
		return to == batchpb.JobStatus_CANCELLED || to == batchpb.JobStatus_DELETION_IN_PROGRESS
	}
	if terminal(from) {
		return to == batchpb.JobStatus_DELETION_IN_PROGRESS
	}
	return to != batchpb.JobStatus_CANCELLED
}

// setJobState changes j's state in tx, appending the Batch-style event and
// keeping runDuration: the time spent RUNNING, summed over RUNNING spells.
func (s *Store) setJobState(tx *bolt.Tx, j *batchpb.Job, to batchpb.JobStatus_State, note string, now time.Time) error {
	from := j.GetStatus().GetState()
	if !jobTransitionOK(from, to) {
		return fmt.Errorf("%w: job %s is %s and cannot become %s", ErrFailedPrecondition, j.Name, from, to)
	}
	if j.Status == nil {
		j.Status = &batchpb.JobStatus{}
	}
	ts := timestamppb.New(now)
	desc := job.JobStateDescription(j.Name, from, to)
	if note != "" {
		desc += " " + note
	}
	j.Status.State = to
	j.Status.StatusEvents = append(j.Status.StatusEvents, &batchpb.StatusEvent{
		Type: "STATUS_CHANGED", Description: desc, EventTime: ts,
	})
	j.UpdateTime = ts
	run := tx.Bucket(bRunning)
	if since := run.Get([]byte(j.Name)); since != nil && from == batchpb.JobStatus_RUNNING {
		if t, err := time.Parse(time.RFC3339Nano, string(since)); err == nil && now.After(t) {
			j.Status.RunDuration = durationpb.New(j.Status.GetRunDuration().AsDuration() + now.Sub(t))
		}
		if err := run.Delete([]byte(j.Name)); err != nil {
			return err
		}
	}
	if to == batchpb.JobStatus_RUNNING {
		if j.Status.RunDuration == nil {
			j.Status.RunDuration = durationpb.New(0)
		}
		if err := run.Put([]byte(j.Name), []byte(now.UTC().Format(time.RFC3339Nano))); err != nil {
			return err
		}
	}
	return nil
}

// SetJobState moves a job to state to, appending a status event worded as
// Batch's ("Job state is set from QUEUED to SCHEDULED for job NAME.")
// followed by note when note is not empty, and updating updateTime and
// runDuration. Setting the current state again is a no-op. A transition
// the life cycle forbids (e.g. RUNNING after CANCELLATION_IN_PROGRESS) is
// ErrFailedPrecondition: the scheduler must then stop, not retry.
//
// Entering CANCELLED also finishes the pending cancel operations, so the
// scheduler's last word on a cancel is SetJobState(..., CANCELLED, "").
// Use FinishStop instead when the job may be being deleted.
func (s *Store) SetJobState(ctx context.Context, name string, to batchpb.JobStatus_State, note string) (*batchpb.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *batchpb.Job
	err := s.db.Update(func(tx *bolt.Tx) error {
		j, err := s.getJob(tx, name)
		if err != nil {
			return err
		}
		if j.GetStatus().GetState() == to {
			out = j
			return nil
		}
		now := s.now()
		if err := s.setJobState(tx, j, to, note, now); err != nil {
			return err
		}
		if to == batchpb.JobStatus_CANCELLED {
			if err := s.finishTasks(tx, j, now, "Task was cancelled."); err != nil {
				return err
			}
			if err := s.finishOps(tx, name, now, ""); err != nil {
				return err
			}
		}
		out = j
		return put(tx.Bucket(bJobs), []byte(name), j)
	})
	return out, err
}

// AddJobEvent appends a status event to a job without changing its state,
// e.g. {Type: "IMAGE_PULLED", Description: "..."}.
func (s *Store) AddJobEvent(ctx context.Context, name, typ, description string) error {
	_, err := s.UpdateJob(ctx, name, func(j *batchpb.Job) error {
		j.Status.StatusEvents = append(j.Status.StatusEvents, &batchpb.StatusEvent{
			Type: typ, Description: description, EventTime: timestamppb.New(s.now()),
		})
		return nil
	})
	return err
}

// UpdateJob applies fn to the stored job in one transaction and stores
// the result (updateTime is set). fn must not change the name, state or
// task counts; use SetJobState and the task methods for those. An error
// from fn aborts the update and is returned as is.
func (s *Store) UpdateJob(ctx context.Context, name string, fn func(*batchpb.Job) error) (*batchpb.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *batchpb.Job
	err := s.db.Update(func(tx *bolt.Tx) error {
		j, err := s.getJob(tx, name)
		if err != nil {
			return err
		}
		if j.Status == nil {
			j.Status = &batchpb.JobStatus{}
		}
		state, counts := j.Status.State, proto.Clone(&batchpb.JobStatus{TaskGroups: j.Status.TaskGroups})
		if err := fn(j); err != nil {
			return err
		}
		if j.Name != name || j.GetStatus().GetState() != state || !proto.Equal(counts, &batchpb.JobStatus{TaskGroups: j.GetStatus().GetTaskGroups()}) {
			return fmt.Errorf("%w: UpdateJob may not change name, state or task counts of %s", ErrInvalidArgument, name)
		}
		j.UpdateTime = timestamppb.New(s.now())
		out = j
		return put(tx.Bucket(bJobs), []byte(name), j)
	})
	return out, err
}

// TaskUpdate carries the optional parts of a task state change.
type TaskUpdate struct {
	// ExitCode, when set, is recorded in the event's taskExecution and
	// named in its description ("... with exit code 1.").
	ExitCode *int32
	// Note is appended to the standard description, e.g. "Retrying (2/3)."
	Note string
}

// SetTaskState moves a task to state to, appending an event worded as
// Batch's ("Task state is updated from ASSIGNED to RUNNING on HOST.") and
// updating the job's per-state task counts in status.taskGroups, all in
// one transaction. Setting the current state again with no exit code is a
// no-op. Tasks of a job that is final or being deleted cannot change:
// ErrFailedPrecondition.
func (s *Store) SetTaskState(ctx context.Context, name string, to batchpb.TaskStatus_State, u TaskUpdate) (*batchpb.Task, error) {
	if to == batchpb.TaskStatus_STATE_UNSPECIFIED {
		return nil, fmt.Errorf("%w: task state must be set", ErrInvalidArgument)
	}
	return s.updateTask(ctx, name, func(t *batchpb.Task, now time.Time) error {
		from := t.GetStatus().GetState()
		if from == to && u.ExitCode == nil && u.Note == "" {
			return nil
		}
		desc := job.TaskStateDescription(from, to, s.host, u.ExitCode)
		if u.Note != "" {
			desc += " " + u.Note
		}
		ev := &batchpb.StatusEvent{Type: "STATUS_CHANGED", Description: desc, EventTime: timestamppb.New(now), TaskState: to}
		if u.ExitCode != nil {
			ev.TaskExecution = &batchpb.TaskExecution{ExitCode: *u.ExitCode}
		}
		t.Status.State = to
		t.Status.StatusEvents = append(t.Status.StatusEvents, ev)
		return nil
	})
}

// AddTaskEvent appends an event to a task without changing its state, e.g.
// how its image arrived: {Type: "IMAGE_STREAMED", Description: "..."}.
func (s *Store) AddTaskEvent(ctx context.Context, name, typ, description string) error {
	_, err := s.updateTask(ctx, name, func(t *batchpb.Task, now time.Time) error {
		t.Status.StatusEvents = append(t.Status.StatusEvents, &batchpb.StatusEvent{
			Type: typ, Description: description, EventTime: timestamppb.New(now), TaskState: t.Status.State,
		})
		return nil
	})
	return err
}

// UpdateTask applies fn to a task in one transaction; if fn changes the
// task's state the job's counts follow. Prefer SetTaskState, which writes
// the standard event.
func (s *Store) UpdateTask(ctx context.Context, name string, fn func(*batchpb.Task) error) (*batchpb.Task, error) {
	return s.updateTask(ctx, name, func(t *batchpb.Task, _ time.Time) error { return fn(t) })
}

func (s *Store) updateTask(ctx context.Context, name string, fn func(*batchpb.Task, time.Time) error) (*batchpb.Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	jobName, index, err := ParseTaskName(name)
	if err != nil {
		return nil, err
	}
	var out *batchpb.Task
	err = s.db.Update(func(tx *bolt.Tx) error {
		j, err := s.getJob(tx, jobName)
		if err != nil {
			return err
		}
		if st := j.GetStatus().GetState(); terminal(st) || st == batchpb.JobStatus_DELETION_IN_PROGRESS {
			return fmt.Errorf("%w: job %s is %s; its tasks no longer change", ErrFailedPrecondition, jobName, st)
		}
		tasks := tx.Bucket(bTasks)
		t, ok, err := get(tasks, taskKey(jobName, index), new(batchpb.Task))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: task %q", ErrNotFound, name)
		}
		if t.Status == nil {
			t.Status = &batchpb.TaskStatus{}
		}
		from := t.Status.State
		now := s.now()
		if err := fn(t, now); err != nil {
			return err
		}
		if t.Name != name {
			return fmt.Errorf("%w: a task update may not rename %s", ErrInvalidArgument, name)
		}
		if err := put(tasks, taskKey(jobName, index), t); err != nil {
			return err
		}
		out = t
		if to := t.GetStatus().GetState(); to != from {
			count(j, from, -1)
			count(j, to, +1)
			j.UpdateTime = timestamppb.New(now)
			return put(tx.Bucket(bJobs), []byte(jobName), j)
		}
		return nil
	})
	return out, err
}

// count adjusts the job's per-state task count for the (only) group.
func count(j *batchpb.Job, st batchpb.TaskStatus_State, d int64) {
	if j.Status == nil {
		j.Status = &batchpb.JobStatus{}
	}
	if j.Status.TaskGroups == nil {
		j.Status.TaskGroups = map[string]*batchpb.JobStatus_TaskGroupStatus{}
	}
	g := j.Status.TaskGroups[job.TaskGroupID]
	if g == nil {
		g = &batchpb.JobStatus_TaskGroupStatus{}
		j.Status.TaskGroups[job.TaskGroupID] = g
	}
	if g.Counts == nil {
		g.Counts = map[string]int64{}
	}
	k := st.String()
	g.Counts[k] += d
	if g.Counts[k] <= 0 {
		delete(g.Counts, k)
	}
}

// finishTasks settles the tasks of a job that is being cancelled: tasks
// that never ran become UNEXECUTED, tasks that were running FAILED.
func (s *Store) finishTasks(tx *bolt.Tx, j *batchpb.Job, now time.Time, note string) error {
	ts, err := scanTasks(tx, j.Name)
	if err != nil {
		return err
	}
	b := tx.Bucket(bTasks)
	for _, t := range ts {
		_, index, err := ParseTaskName(t.GetName())
		if err != nil {
			return err
		}
		from := t.GetStatus().GetState()
		var to batchpb.TaskStatus_State
		switch from {
		case batchpb.TaskStatus_PENDING, batchpb.TaskStatus_STATE_UNSPECIFIED:
			to = batchpb.TaskStatus_UNEXECUTED
		case batchpb.TaskStatus_ASSIGNED, batchpb.TaskStatus_RUNNING:
			to = batchpb.TaskStatus_FAILED
		default:
			continue
		}
		if t.Status == nil {
			t.Status = &batchpb.TaskStatus{}
		}
		t.Status.State = to
		t.Status.StatusEvents = append(t.Status.StatusEvents, &batchpb.StatusEvent{
			Type: "STATUS_CHANGED", TaskState: to, EventTime: timestamppb.New(now),
			Description: job.TaskStateDescription(from, to, s.host, nil) + " " + note,
		})
		count(j, from, -1)
		count(j, to, +1)
		if err := put(b, taskKey(j.Name, index), t); err != nil {
			return err
		}
	}
	return nil
}
