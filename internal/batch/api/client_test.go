package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/googleapis/gax-go/v2/apierror"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/genproto/googleapis/cloud/location"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/batch/store"
)

const parent = "projects/test-project/locations/us-central1"

// stepRunner is a scheduler stand-in driven by the test: it moves
// submitted jobs to RUNNING with their first task running, and stops a
// job only when the test releases it, so the in-progress states can be
// observed. It talks to the store exactly as the real scheduler must.
type stepRunner struct {
	st      *store.Store
	mu      sync.Mutex
	release map[string]chan struct{}
	done    sync.WaitGroup
}

func (r *stepRunner) Submit(ctx context.Context, jobName string) {
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		for _, s := range []batchpb.JobStatus_State{batchpb.JobStatus_SCHEDULED, batchpb.JobStatus_RUNNING} {
			if _, err := r.st.SetJobState(ctx, jobName, s, ""); err != nil {
				return
			}
		}
		r.st.SetTaskState(ctx, jobName+"/taskGroups/group0/tasks/0", batchpb.TaskStatus_RUNNING, store.TaskUpdate{})
	}()
}

func (r *stepRunner) gate(jobName string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.release == nil {
		r.release = map[string]chan struct{}{}
	}
	if r.release[jobName] == nil {
		r.release[jobName] = make(chan struct{})
	}
	return r.release[jobName]
}

func (r *stepRunner) Cancel(ctx context.Context, jobName string) {
	ch := r.gate(jobName)
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		<-ch
		r.st.FinishStop(ctx, jobName)
	}()
}

type fixture struct {
	st      *store.Store
	runner  *stepRunner
	srv     *api.Server
	httpURL string
	grpcAdr string
}

func newFixture(t *testing.T, withRunner bool) *fixture {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{Host: "riffle-test"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st}
	var runner api.Runner
	if withRunner {
		f.runner = &stepRunner{st: st}
		runner = f.runner
	}
	f.srv, err = api.New(st, runner, api.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(f.srv.HTTPHandler())
	f.httpURL = hs.URL
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(f.srv.GRPCServerOptions()...)
	f.srv.RegisterGRPC(g)
	go g.Serve(lis)
	f.grpcAdr = lis.Addr().String()
	t.Cleanup(func() {
		hs.Close()
		g.Stop()
		if f.runner != nil {
			f.runner.mu.Lock()
			for _, ch := range f.runner.release {
				select {
				case <-ch:
				default:
					close(ch)
				}
			}
			f.runner.mu.Unlock()
			f.runner.done.Wait()
		}
		st.Close()
	})
	return f
}

func (f *fixture) clients(t *testing.T) map[string]*batch.Client {
	t.Helper()
	ctx := context.Background()
	rest, err := batch.NewRESTClient(ctx, option.WithEndpoint(f.httpURL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	g, err := batch.NewClient(ctx, option.WithEndpoint(f.grpcAdr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rest.Close(); g.Close() })
	return map[string]*batch.Client{"rest": rest, "grpc": g}
}

// code is the canonical code of an error from either transport: gRPC
// carries it natively; over REST it is the envelope's "status" name.
func code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		var env struct {
			Error struct {
				Status string `json:"status"`
			} `json:"error"`
		}
		if json.Unmarshal([]byte(ge.Body), &env) == nil {
			for c := codes.OK; c <= codes.Unauthenticated; c++ {
				if strings.EqualFold(strings.ReplaceAll(c.String(), "Canceled", "Cancelled"), strings.ReplaceAll(env.Error.Status, "_", "")) {
					return c
				}
			}
		}
	}
	if ae, ok := apierror.FromError(err); ok && ae.GRPCStatus() != nil {
		return ae.GRPCStatus().Code()
	}
	return codes.Unknown
}

func scriptJob(taskCount int64) *batchpb.Job {
	return &batchpb.Job{
		Labels: map[string]string{"suite": "client"},
		TaskGroups: []*batchpb.TaskGroup{{
			TaskCount: taskCount,
			TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{
				Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{
					Command: &batchpb.Runnable_Script_Text{Text: "echo $BATCH_TASK_INDEX"},
				}},
			}}},
		}},
		LogsPolicy: &batchpb.LogsPolicy{Destination: batchpb.LogsPolicy_CLOUD_LOGGING},
	}
}

// TestOfficialClient drives the API with cloud.google.com/go/batch/apiv1
// over REST and over gRPC: create, get, list (paged), list and get tasks,
// cancel and delete with operation polling.
func TestOfficialClient(t *testing.T) {
	f := newFixture(t, true)
	for transport, c := range f.clients(t) {
		t.Run(transport, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			id := "hello-" + transport
			j, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, RequestId: "req-" + transport, Job: scriptJob(3)})
			if err != nil {
				t.Fatalf("CreateJob: %v", err)
			}
			name := parent + "/jobs/" + id
			g := j.GetTaskGroups()[0]
			if j.Name != name || j.Uid == "" || g.Name != name+"/taskGroups/group0" || g.TaskCount != 3 || g.Parallelism != 3 ||
				g.TaskSpec.ComputeResource.CpuMilli != 2000 || g.TaskSpec.ComputeResource.MemoryMib != 2000 ||
				j.Status.State != batchpb.JobStatus_QUEUED || j.CreateTime == nil || j.UpdateTime == nil {
				t.Errorf("created job lacks Batch's defaults: %v", j)
			}
			if len(j.Status.StatusEvents) != 2 || !strings.Contains(j.Status.StatusEvents[1].Description, "Cloud Logging ignored") {
				t.Errorf("events %v", j.Status.StatusEvents)
			}
			again, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, RequestId: "req-" + transport, Job: scriptJob(3)})
			if err != nil || again.Uid != j.Uid {
				t.Errorf("retry with the same requestId: %v %v", again.GetUid(), err)
			}
			_, err = c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: scriptJob(1)})
			if code(err) != codes.AlreadyExists {
				t.Errorf("duplicate job ID: %v", err)
			}
			_, err = c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "Bad_ID", Job: scriptJob(1)})
			if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "jobId") {
				t.Errorf("invalid job ID: %v", err)
			}
			// The runner moves it to RUNNING.
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: name})
				if err != nil {
					t.Fatalf("GetJob: %v", err)
				}
				if got.Status.State == batchpb.JobStatus_RUNNING && got.Status.TaskGroups["group0"].GetCounts()["RUNNING"] == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("job never RUNNING: %v", got.Status)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Generated ID.
			gen, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, Job: scriptJob(1)})
			if err != nil || !strings.HasPrefix(gen.GetName(), parent+"/jobs/job-") {
				t.Errorf("generated ID: %v %v", gen.GetName(), err)
			}
			for i := 0; i < 4; i++ {
				if _, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: fmt.Sprintf("%s-more-%d", transport, i), Job: scriptJob(1)}); err != nil {
					t.Fatal(err)
				}
			}
			// List, two per page.
			it := c.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: parent, PageSize: 2, Filter: fmt.Sprintf(`name:"/%s-" OR name="%s"`, transport, name), OrderBy: "name"})
			var names []string
			pages := 0
			pager := iterator.NewPager(it, 2, "")
			for {
				var page []*batchpb.Job
				next, err := pager.NextPage(&page)
				if err != nil {
					t.Fatalf("ListJobs: %v", err)
				}
				pages++
				for _, j := range page {
					names = append(names, j.Name[len(parent)+6:])
				}
				if next == "" {
					break
				}
			}
			want := []string{id, transport + "-more-0", transport + "-more-1", transport + "-more-2", transport + "-more-3"}
			sort.Strings(want)
			if strings.Join(names, ",") != strings.Join(want, ",") || pages != 3 {
				t.Errorf("listed %v in %d pages, want %v in 3", names, pages, want)
			}
			// Tasks.
			tit := c.ListTasks(ctx, &batchpb.ListTasksRequest{Parent: name + "/taskGroups/group0", PageSize: 2})
			var tasks []string
			for {
				task, err := tit.Next()
				if err == iterator.Done {
					break
				}
				if err != nil {
					t.Fatalf("ListTasks: %v", err)
				}
				tasks = append(tasks, task.Name[len(name)+1:]+"="+task.Status.State.String())
			}
			if got := strings.Join(tasks, ","); got != "taskGroups/group0/tasks/0=RUNNING,taskGroups/group0/tasks/1=PENDING,taskGroups/group0/tasks/2=PENDING" {
				t.Errorf("tasks %s", got)
			}
			task, err := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: name + "/taskGroups/group0/tasks/0"})
			if err != nil || task.Status.State != batchpb.TaskStatus_RUNNING ||
				task.Status.StatusEvents[0].Description != "Task state is updated from PENDING to RUNNING on riffle-test." {
				t.Errorf("GetTask: %v %v", task, err)
			}
			if _, err := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: name + "/taskGroups/group0/tasks/7"}); code(err) != codes.NotFound {
				t.Errorf("missing task: %v", err)
			}
			// Cancel: CANCELLATION_IN_PROGRESS until the runner is done, then CANCELLED.
			cop, err := c.CancelJob(ctx, &batchpb.CancelJobRequest{Name: name})
			if err != nil {
				t.Fatalf("CancelJob: %v", err)
			}
			if got, _ := c.GetJob(ctx, &batchpb.GetJobRequest{Name: name}); got.GetStatus().GetState() != batchpb.JobStatus_CANCELLATION_IN_PROGRESS {
				t.Errorf("state after cancel %v", got.GetStatus().GetState())
			}
			md, err := cop.Metadata()
			if err != nil || md.GetVerb() != "cancel" || md.GetTarget() != name {
				t.Errorf("cancel metadata %v %v", md, err)
			}
			close(f.runner.gate(name))
			if _, err := cop.Wait(ctx); err != nil {
				t.Fatalf("cancel Wait: %v", err)
			}
			got, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: name})
			if err != nil || got.Status.State != batchpb.JobStatus_CANCELLED {
				t.Fatalf("after cancel: %v %v", got.GetStatus(), err)
			}
			if counts := got.Status.TaskGroups["group0"].Counts; counts["FAILED"] != 1 || counts["UNEXECUTED"] != 2 {
				t.Errorf("counts after cancel %v", counts)
			}
			if got.Status.RunDuration == nil {
				t.Errorf("no runDuration")
			}
			// Delete a finished job: the runner is told, to remove what it
			// keeps of the job, and finishes it (its gate is open already).
			dop, err := c.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: name, Reason: "test"})
			if err != nil {
				t.Fatalf("DeleteJob: %v", err)
			}
			if err := dop.Wait(ctx); err != nil {
				t.Fatalf("delete Wait: %v", err)
			}
			if _, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: name}); code(err) != codes.NotFound {
				t.Errorf("deleted job: %v", err)
			}
			// Delete an active job: DELETION_IN_PROGRESS, then gone.
			other := parent + "/jobs/" + transport + "-more-0"
			dop, err = c.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: other})
			if err != nil {
				t.Fatalf("DeleteJob: %v", err)
			}
			if got, _ := c.GetJob(ctx, &batchpb.GetJobRequest{Name: other}); got.GetStatus().GetState() != batchpb.JobStatus_DELETION_IN_PROGRESS {
				t.Errorf("state after delete %v", got.GetStatus().GetState())
			}
			close(f.runner.gate(other))
			if err := dop.Wait(ctx); err != nil {
				t.Fatalf("delete Wait: %v", err)
			}
			if _, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: other}); code(err) != codes.NotFound {
				t.Errorf("deleted job: %v", err)
			}
			// Locations.
			loc, err := c.GetLocation(ctx, &location.GetLocationRequest{Name: parent})
			if err != nil || loc.LocationId != "us-central1" {
				t.Errorf("GetLocation: %v %v", loc, err)
			}
			lit := c.ListLocations(ctx, &location.ListLocationsRequest{Name: "projects/test-project"})
			l, err := lit.Next()
			if err != nil || l.LocationId != "local" {
				t.Errorf("ListLocations: %v %v", l, err)
			}
		})
	}
}

// TestNoRunner: without a scheduler jobs stay QUEUED and cancel completes
// at once.
func TestNoRunner(t *testing.T) {
	f := newFixture(t, false)
	c := f.clients(t)["rest"]
	ctx := context.Background()
	j, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "idle", Job: scriptJob(2)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if got, _ := c.GetJob(ctx, &batchpb.GetJobRequest{Name: j.Name}); got.GetStatus().GetState() != batchpb.JobStatus_QUEUED {
		t.Errorf("state %v", got.GetStatus().GetState())
	}
	op, err := c.CancelJob(ctx, &batchpb.CancelJobRequest{Name: j.Name})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.GetJob(ctx, &batchpb.GetJobRequest{Name: j.Name}); got.GetStatus().GetState() != batchpb.JobStatus_CANCELLED {
		t.Errorf("state %v", got.GetStatus().GetState())
	}
	if _, err := c.CancelJob(ctx, &batchpb.CancelJobRequest{Name: j.Name}); code(err) != codes.FailedPrecondition {
		t.Errorf("second cancel: %v", err)
	}
}

// TestAdmit: an admission hook's field error refuses the job naming the
// field, over the official client.
func TestAdmit(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := api.New(st, nil, api.Options{Admit: func(ctx context.Context, j *batchpb.Job) error {
		return &job.FieldError{Path: "taskGroups[0].taskSpec.runnables[0].container.imageUri", Msg: "manifest schema 1 is not supported; re-push the image with a current client"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.HTTPHandler())
	defer hs.Close()
	c, err := batch.NewRESTClient(context.Background(), option.WithEndpoint(hs.URL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.CreateJob(context.Background(), &batchpb.CreateJobRequest{Parent: parent, JobId: "old", Job: scriptJob(1)})
	if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "job.taskGroups[0].taskSpec.runnables[0].container.imageUri: manifest schema 1") {
		t.Errorf("admit: %v", err)
	}
	if _, err := st.GetJob(context.Background(), parent+"/jobs/old"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused job was stored: %v", err)
	}
}
