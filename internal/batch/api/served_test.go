package api_test

import (
	"context"
	"strings"
	"testing"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/store"
)

// TestServedLocationsAndProjects: a server that serves us-central1 refuses
// jobs in other locations and listing them, lists every location with
// "-", and refuses project IDs that cannot be one, naming the field.
func TestServedLocationsAndProjects(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(t.TempDir(), store.Options{Host: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := api.New(st, nil, api.Options{Locations: []string{"us-central1"}})
	if err != nil {
		t.Fatal(err)
	}
	newJob := func() *batchpb.Job {
		return &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{
			Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{Command: &batchpb.Runnable_Script_Text{Text: "true"}}},
		}}}}}}
	}
	refused := func(what string, err error, want ...string) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: err = %v, want INVALID_ARGUMENT", what, err)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: err = %v, want it to contain %q", what, err, w)
			}
		}
	}

	if _, err := srv.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "here", Job: newJob()}); err != nil {
		t.Fatalf("job in the served location: %v", err)
	}
	_, err = srv.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/mars", JobId: "there", Job: newJob()})
	refused("job in mars", err, "parent", `"mars"`, "us-central1", "--location")
	_, err = srv.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: "projects/p/locations/mars"})
	refused("list in mars", err, `"mars"`, "us-central1")
	resp, err := srv.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: "projects/p/locations/-"})
	if err != nil || len(resp.GetJobs()) != 1 {
		t.Fatalf("list in every location: %v, %v; want the one job", resp.GetJobs(), err)
	}

	for _, project := range []string{"..", ".", strings.Repeat("a", 5000), "a_b", "Upper"} {
		_, err := srv.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/" + project + "/locations/us-central1", JobId: "j", Job: newJob()})
		refused("project "+project[:min(len(project), 10)], err, "parent", "project", "lowercase letters")
		if err != nil && len(err.Error()) > 1000 {
			t.Errorf("project of %d characters: error of %d characters, want it clipped", len(project), len(err.Error()))
		}
	}
}
