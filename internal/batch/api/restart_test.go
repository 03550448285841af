package api_test

import (
	"context"
	"strings"
	"testing"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/store"
)

// TestRestart: jobs survive a restart of the store and API, and a delete
// left in progress by a runner that never finished is completed when the
// API comes back without one.
func TestRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := &stepRunner{st: st}
	srv, err := api.New(st, r, api.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"keep", "gone"} {
		if _, err := srv.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: scriptJob(2)}); err != nil {
			t.Fatal(err)
		}
	}
	r.done.Wait()
	op, err := srv.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: parent + "/jobs/gone"})
	if err != nil {
		t.Fatal(err)
	}
	st.Close() // the "crash": the runner never calls FinishStop
	close(r.gate(parent + "/jobs/gone"))
	r.done.Wait() // its late FinishStop fails on the closed store

	st, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err = api.New(st, nil, api.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j, err := srv.GetJob(ctx, &batchpb.GetJobRequest{Name: parent + "/jobs/keep"})
	if err != nil || j.Status.State != batchpb.JobStatus_RUNNING {
		t.Fatalf("kept job after restart: %v %v", j.GetStatus(), err)
	}
	if _, err := srv.GetJob(ctx, &batchpb.GetJobRequest{Name: parent + "/jobs/gone"}); status.Code(err) != codes.NotFound {
		t.Errorf("job deleted across restart: %v", err)
	}
	if got, err := st.GetOperation(ctx, op.Name); err != nil || !got.Done {
		t.Errorf("delete operation after restart: %v %v", got, err)
	}
}

// TestGRPCErrors: over gRPC, bad input is INVALID_ARGUMENT with a
// BadRequest detail naming the field, and oversized messages are refused.
func TestGRPCErrors(t *testing.T) {
	f := newFixture(t, false)
	conn, err := grpc.NewClient(f.grpcAdr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := batchpb.NewBatchServiceClient(conn)
	ctx := context.Background()
	bad := scriptJob(1)
	bad.TaskGroups[0].TaskSpec.Runnables = append(bad.TaskGroups[0].TaskSpec.Runnables, &batchpb.Runnable{
		Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{}},
	})
	_, err = c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "bad", Job: bad})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "job.taskGroups[0].taskSpec.runnables[1].container.imageUri: must not be empty") {
		t.Errorf("empty image: %v", err)
	}
	var field string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			field = br.FieldViolations[0].Field
		}
	}
	if field != "job.taskGroups[0].taskSpec.runnables[1].container.imageUri" {
		t.Errorf("field violation %q", field)
	}
	huge := scriptJob(1)
	huge.Labels = map[string]string{"x": strings.Repeat("a", 10<<20)}
	if _, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "huge", Job: huge}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("10 MB message: %v", err)
	}
	if _, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: parent + "/jobs/Nope"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad name: %v", err)
	}
	if _, err := c.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: parent}); err != nil {
		t.Errorf("server down after bad input: %v", err)
	}
}
