package server_test

import (
	"strings"
	"testing"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/imagegen"
)

// TestBatchAPIOnePort proves that the official Batch client reaches `riffle
// serve` over REST and over gRPC on the same port.
func TestBatchAPIOnePort(t *testing.T) {
	ctx, srv, addr := startServer(t, "")
	tok := adminToken(t, srv)

	rest, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	defer rest.Close()
	g, err := batch.NewClient(ctx, option.WithEndpoint(addr), option.WithoutAuthentication(), withPlainBearer(tok),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	parent := "projects/p/locations/us-central1"
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{
		Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{
			Command: &batchpb.Runnable_Script_Text{Text: "echo hi"}}}}},
	}}}}
	created, err := rest.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "over-rest", Job: job})
	if err != nil {
		t.Fatalf("REST create: %v", err)
	}
	got, err := g.GetJob(ctx, &batchpb.GetJobRequest{Name: created.GetName()})
	if err != nil {
		t.Fatalf("gRPC get of a job made over REST: %v", err)
	}
	if got.GetUid() != created.GetUid() {
		t.Fatalf("gRPC saw uid %q, REST made %q", got.GetUid(), created.GetUid())
	}
	if _, err := g.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "over-grpc", Job: job}); err != nil {
		t.Fatalf("gRPC create: %v", err)
	}
	it := rest.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: parent})
	n := 0
	for {
		if _, err := it.Next(); err != nil {
			break
		}
		n++
	}
	if n != 2 {
		t.Fatalf("REST list saw %d jobs, want 2", n)
	}
}

// TestSubmitChecksImages: a bad image fails the create, naming the runnable.
func TestSubmitChecksImages(t *testing.T) {
	ctx, srv, addr := startServer(t, "")
	tok := adminToken(t, srv)
	rest, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	defer rest.Close()

	spec, _ := imagegen.Busybox("/bin/busybox")
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := registryClient(tok).Push(ctx, addr+"/p/r/busybox:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	mk := func(uris ...string) *batchpb.Job {
		var rs []*batchpb.Runnable
		for _, u := range uris {
			rs = append(rs, &batchpb.Runnable{Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{ImageUri: u}}})
		}
		return &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{Runnables: rs}}}}
	}
	parent := "projects/p/locations/us-central1"
	if _, err := rest.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "good", Job: mk(addr + "/p/r/busybox:v1")}); err != nil {
		t.Fatalf("existing image refused: %v", err)
	}
	for id, tc := range map[string]struct {
		uris []string
		want string
	}{
		"missing":   {[]string{addr + "/p/r/busybox:v1", addr + "/p/r/nope:v1"}, "runnables[1].container.imageUri: image " + addr + "/p/r/nope:v1 does not exist"},
		"malformed": {[]string{addr + "/p/R/UPPER::x"}, "runnables[0].container.imageUri"},
	} {
		_, err := rest.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: mk(tc.uris...)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want INVALID_ARGUMENT containing %q", id, err, tc.want)
		}
	}
}
