package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

const parent = "projects/p/locations/l"

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

func open(t *testing.T, dir string, c *clock) *Store {
	t.Helper()
	s, err := Open(dir, Options{Now: c.now, Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newJob(t *testing.T, id string, tasks int64, c *clock) *batchpb.Job {
	t.Helper()
	j, err := job.Parse([]byte(fmt.Sprintf(`{"taskGroups":[{"taskCount":%d,"taskSpec":{"runnables":[{"script":{"text":"true"}}]}}],"labels":{"team":"%s"}}`, tasks, id[:1])), job.Strict)
	if err != nil {
		t.Fatal(err)
	}
	job.Prepare(j, parent, id, c.now(), nil)
	return j
}

func TestCreateSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, dir, c)
	j, created, err := s.CreateJob(ctx, newJob(t, "a1", 3, c), "req-1")
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if got := j.Status.TaskGroups["group0"].Counts["PENDING"]; got != 3 {
		t.Errorf("PENDING count %d", got)
	}
	// Same request ID: same job, not created again.
	again, created, err := s.CreateJob(ctx, newJob(t, "a2", 1, c), "req-1")
	if err != nil || created || again.Uid != j.Uid {
		t.Fatalf("idempotent create: %v %v %v", again.GetName(), created, err)
	}
	if _, _, err := s.CreateJob(ctx, newJob(t, "a1", 1, c), ""); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := s.SetTaskState(ctx, job.TaskName(j.Name, 1), batchpb.TaskStatus_RUNNING, TaskUpdate{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, c)
	defer s.Close()
	got, err := s.GetJob(ctx, j.Name)
	if err != nil || got.Uid != j.Uid {
		t.Fatalf("after reopen: %v %v", got, err)
	}
	if counts := got.Status.TaskGroups["group0"].Counts; counts["PENDING"] != 2 || counts["RUNNING"] != 1 {
		t.Errorf("counts after reopen %v", counts)
	}
	task, err := s.GetTask(ctx, job.TaskName(j.Name, 1))
	if err != nil || task.Status.State != batchpb.TaskStatus_RUNNING {
		t.Fatalf("task after reopen: %v %v", task, err)
	}
	if _, err := s.GetTask(ctx, job.TaskName(j.Name, 3)); !errors.Is(err, ErrNotFound) {
		t.Errorf("task 3: %v", err)
	}
	if _, _, err := s.CreateJob(ctx, newJob(t, "a3", 1, c), "req-1"); err != nil {
		t.Fatal(err)
	}
}

func TestLifecycleEventsCountsRunDuration(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, t.TempDir(), c)
	defer s.Close()
	j, _, err := s.CreateJob(ctx, newJob(t, "life", 2, c), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []batchpb.JobStatus_State{batchpb.JobStatus_SCHEDULED, batchpb.JobStatus_RUNNING} {
		if _, err := s.SetJobState(ctx, j.Name, st, ""); err != nil {
			t.Fatal(err)
		}
	}
	if live, err := s.GetJob(ctx, j.Name); err != nil || live.Status.GetRunDuration().AsDuration() <= 0 {
		t.Errorf("running job's runDuration does not grow: %v %v", live.GetStatus().GetRunDuration(), err)
	}
	code := int32(3)
	for i := int64(0); i < 2; i++ {
		tn := job.TaskName(j.Name, i)
		for _, st := range []batchpb.TaskStatus_State{batchpb.TaskStatus_ASSIGNED, batchpb.TaskStatus_RUNNING} {
			if _, err := s.SetTaskState(ctx, tn, st, TaskUpdate{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.SetTaskState(ctx, job.TaskName(j.Name, 0), batchpb.TaskStatus_SUCCEEDED, TaskUpdate{ExitCode: new(int32)}); err != nil {
		t.Fatal(err)
	}
	task, err := s.SetTaskState(ctx, job.TaskName(j.Name, 1), batchpb.TaskStatus_FAILED, TaskUpdate{ExitCode: &code})
	if err != nil {
		t.Fatal(err)
	}
	last := task.Status.StatusEvents[len(task.Status.StatusEvents)-1]
	if last.Description != "Task state is updated from RUNNING to FAILED on testhost with exit code 3." || last.TaskExecution.GetExitCode() != 3 || last.TaskState != batchpb.TaskStatus_FAILED {
		t.Errorf("task event %v", last)
	}
	if err := s.AddTaskEvent(ctx, job.TaskName(j.Name, 1), "IMAGE_PULLED", "Image pulled in 1s."); err != nil {
		t.Fatal(err)
	}
	got, err := s.SetJobState(ctx, j.Name, batchpb.JobStatus_FAILED, "")
	if err != nil {
		t.Fatal(err)
	}
	if counts := got.Status.TaskGroups["group0"].Counts; len(counts) != 2 || counts["SUCCEEDED"] != 1 || counts["FAILED"] != 1 {
		t.Errorf("counts %v", counts)
	}
	ev := got.Status.StatusEvents
	wantDesc := []string{
		"Job state is set from STATE_UNSPECIFIED to QUEUED for job projects/p/locations/l/jobs/life.",
		"Job state is set from QUEUED to SCHEDULED for job projects/p/locations/l/jobs/life.",
		"Job state is set from SCHEDULED to RUNNING for job projects/p/locations/l/jobs/life.",
		"Job state is set from RUNNING to FAILED for job projects/p/locations/l/jobs/life.",
	}
	if len(ev) != len(wantDesc) {
		t.Fatalf("events %v", ev)
	}
	for i, w := range wantDesc {
		if ev[i].Description != w {
			t.Errorf("event %d %q want %q", i, ev[i].Description, w)
		}
	}
	// runDuration is exactly the RUNNING spell.
	running := ev[2].EventTime.AsTime()
	if rd := got.Status.RunDuration.AsDuration(); rd != ev[3].EventTime.AsTime().Sub(running) || rd <= 0 {
		t.Errorf("runDuration %v", rd)
	}
	// Final: no more changes.
	if _, err := s.SetJobState(ctx, j.Name, batchpb.JobStatus_RUNNING, ""); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("FAILED -> RUNNING: %v", err)
	}
	if _, err := s.SetTaskState(ctx, job.TaskName(j.Name, 0), batchpb.TaskStatus_RUNNING, TaskUpdate{}); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("task of final job: %v", err)
	}
}

func TestCancelAndDelete(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, t.TempDir(), c)
	defer s.Close()
	j, _, _ := s.CreateJob(ctx, newJob(t, "cx", 3, c), "")
	if _, err := s.SetTaskState(ctx, job.TaskName(j.Name, 0), batchpb.TaskStatus_RUNNING, TaskUpdate{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetTaskState(ctx, job.TaskName(j.Name, 1), batchpb.TaskStatus_SUCCEEDED, TaskUpdate{}); err != nil {
		t.Fatal(err)
	}
	op, err := s.BeginStop(ctx, j.Name, VerbCancel, "r")
	if err != nil || op.Done {
		t.Fatalf("begin cancel: %v %v", op, err)
	}
	if op2, _ := s.BeginStop(ctx, j.Name, VerbCancel, "r"); op2.GetName() != op.Name {
		t.Errorf("same request ID, new operation %s", op2.GetName())
	}
	if got, _ := s.GetJob(ctx, j.Name); got.Status.State != batchpb.JobStatus_CANCELLATION_IN_PROGRESS {
		t.Errorf("state %v", got.Status.State)
	}
	if _, err := s.SetJobState(ctx, j.Name, batchpb.JobStatus_RUNNING, ""); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("RUNNING after cancel: %v", err)
	}
	if err := s.FinishStop(ctx, j.Name); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetJob(ctx, j.Name)
	if got.Status.State != batchpb.JobStatus_CANCELLED {
		t.Errorf("state %v", got.Status.State)
	}
	if counts := got.Status.TaskGroups["group0"].Counts; counts["FAILED"] != 1 || counts["SUCCEEDED"] != 1 || counts["UNEXECUTED"] != 1 {
		t.Errorf("counts %v", counts)
	}
	op, _ = s.GetOperation(ctx, op.Name)
	var resp batchpb.CancelJobResponse
	if !op.Done || op.GetResponse().UnmarshalTo(&resp) != nil {
		t.Errorf("cancel op %v", op)
	}
	if _, err := s.BeginStop(ctx, j.Name, VerbCancel, ""); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("cancel a cancelled job: %v", err)
	}
	del, err := s.BeginStop(ctx, j.Name, VerbDelete, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetJob(ctx, j.Name); got.Status.State != batchpb.JobStatus_DELETION_IN_PROGRESS {
		t.Errorf("state %v", got.Status.State)
	}
	if err := s.FinishStop(ctx, j.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetJob(ctx, j.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted job: %v", err)
	}
	if _, err := s.GetTask(ctx, job.TaskName(j.Name, 0)); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted task: %v", err)
	}
	del, _ = s.GetOperation(ctx, del.Name)
	if !del.Done || del.GetResponse().UnmarshalTo(&emptypb.Empty{}) != nil {
		t.Errorf("delete op %v", del)
	}
	ops, _, err := s.ListOperations(ctx, parent, ListQuery{})
	if err != nil || len(ops) != 2 {
		t.Errorf("ops %d %v", len(ops), err)
	}
}

func names(js []*batchpb.Job) string {
	var out []string
	for _, j := range js {
		_, _, id, _ := job.SplitName(j.Name)
		out = append(out, id)
	}
	return strings.Join(out, ",")
}

func TestListFilterOrderPage(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, t.TempDir(), c)
	defer s.Close()
	for _, id := range []string{"c", "a", "e", "b", "d"} {
		if _, _, err := s.CreateJob(ctx, newJob(t, id, 1, c), ""); err != nil {
			t.Fatal(err)
		}
	}
	s.SetJobState(ctx, parent+"/jobs/a", batchpb.JobStatus_SUCCEEDED, "")
	s.SetJobState(ctx, parent+"/jobs/b", batchpb.JobStatus_SUCCEEDED, "")
	s.SetJobState(ctx, parent+"/jobs/c", batchpb.JobStatus_FAILED, "")
	for _, tc := range []struct{ filter, order, want string }{
		{"", "", "a,b,c,d,e"},
		{"", "name desc", "e,d,c,b,a"},
		{"", "create_time", "c,a,e,b,d"},
		{"", "create_time desc", "d,b,e,a,c"},
		{`status.state="SUCCEEDED"`, "", "a,b"},
		{`status.state=SUCCEEDED OR status.state="FAILED"`, "", "a,b,c"},
		{`status.state!="QUEUED" AND name="projects/p/locations/l/jobs/c"`, "", "c"},
		{`NOT status.state=QUEUED AND (name:"/a" OR name:"/b")`, "", "a,b"},
		{`status.state=4`, "", "a,b"},
		{`labels.team="d"`, "", "d"},
		{`name="projects/p/locations/l/jobs/*"`, "name desc", "e,d,c,b,a"},
		{`create_time>"2026-01-01T00:00:02Z"`, "create_time", "e,b,d"},
	} {
		got, _, err := s.ListJobs(ctx, parent, ListQuery{Filter: tc.filter, OrderBy: tc.order})
		if err != nil {
			t.Errorf("%q %q: %v", tc.filter, tc.order, err)
			continue
		}
		if n := names(got); n != tc.want {
			t.Errorf("%q %q: got %s want %s", tc.filter, tc.order, n, tc.want)
		}
	}
	for _, bad := range []string{`foo="x"`, `status.state="DONE"`, `(status.state=QUEUED`, `name=`, `status.state>QUEUED`, `create_time>"yesterday"`, `name="x" AND`} {
		if _, _, err := s.ListJobs(ctx, parent, ListQuery{Filter: bad}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("filter %q: %v", bad, err)
		} else {
			t.Logf("%q: %v", bad, err)
		}
	}
	if _, _, err := s.ListJobs(ctx, parent, ListQuery{OrderBy: "uid"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("orderBy uid: %v", err)
	}
	// Paging by key: deleting an item already seen does not shift the rest.
	var pages []string
	q := ListQuery{PageSize: 2, OrderBy: "create_time"}
	for i := 0; ; i++ {
		js, next, err := s.ListJobs(ctx, parent, q)
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, names(js))
		if i == 0 {
			s.BeginStop(ctx, parent+"/jobs/c", VerbDelete, "")
			s.FinishStop(ctx, parent+"/jobs/c")
		}
		if next == "" {
			break
		}
		q.PageToken = next
	}
	if got := strings.Join(pages, "|"); got != "c,a|e,b|d" {
		t.Errorf("pages %s", got)
	}
	if _, _, err := s.ListJobs(ctx, parent, ListQuery{PageSize: 2, PageToken: "bogus"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad token: %v", err)
	}
	if js, _, _ := s.ListJobs(ctx, "projects/p/locations/-", ListQuery{}); len(js) != 4 {
		t.Errorf("location -: %d jobs", len(js))
	}
	if js, _, _ := s.ListJobs(ctx, "projects/p/locations/other", ListQuery{}); len(js) != 0 {
		t.Errorf("other location: %d jobs", len(js))
	}
}

func TestListTasks(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, t.TempDir(), c)
	defer s.Close()
	j, _, _ := s.CreateJob(ctx, newJob(t, "tasks", 12, c), "")
	s.SetTaskState(ctx, job.TaskName(j.Name, 10), batchpb.TaskStatus_RUNNING, TaskUpdate{})
	g := job.TaskGroupName(j.Name)
	var all []string
	q := ListQuery{PageSize: 5}
	for {
		ts, next, err := s.ListTasks(ctx, g, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, t := range ts {
			all = append(all, t.Name[strings.LastIndex(t.Name, "/")+1:])
		}
		if next == "" {
			break
		}
		q.PageToken = next
	}
	if got := strings.Join(all, ","); got != "0,1,2,3,4,5,6,7,8,9,10,11" {
		t.Errorf("tasks %s", got)
	}
	for _, f := range []string{"State=RUNNING", `status.state="RUNNING"`} {
		ts, _, err := s.ListTasks(ctx, g, ListQuery{Filter: f})
		if err != nil || len(ts) != 1 || ts[0].Name != job.TaskName(j.Name, 10) {
			t.Errorf("%s: %v %v", f, ts, err)
		}
	}
	if _, _, err := s.ListTasks(ctx, j.Name+"/taskGroups/group1", ListQuery{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("group1: %v", err)
	}
	if _, _, err := s.ListTasks(ctx, parent+"/jobs/nope/taskGroups/group0", ListQuery{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing job: %v", err)
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, &clock{})
	defer s.Close()
	start := time.Now()
	if _, err := Open(dir, Options{LockTimeout: 200 * time.Millisecond}); err == nil {
		t.Fatal("second open succeeded")
	}
	if time.Since(start) > 2*time.Second {
		t.Error("second open hung")
	}
}
