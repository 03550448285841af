package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/api/option"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestServeRunsStreamedJob is the README's main flow inside one test: push
// an image to `riffle serve`, submit a Batch job that streams it, and read
// the job's states, events and logs back through the API.
func TestServeRunsStreamedJob(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	testutil.RequiresBinary(t, "fusermount3")
	ctx, srv, addr := startServer(t, "")
	tok := adminToken(t, srv)

	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	ref := addr + "/demo/images/busybox:v1"
	if err := registryClient(tok).Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}

	c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{
		TaskCount: 2, Parallelism: 2,
		TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{
			ImageUri:             ref,
			EnableImageStreaming: true,
			Commands:             []string{"sh", "-c", "echo task $BATCH_TASK_INDEX; cat /data/hello.txt"},
		}}}}},
	}}}
	got := runJob(t, ctx, c, "projects/demo/locations/us-central1", "hello", job)
	if got.GetStatus().GetState() != batchpb.JobStatus_SUCCEEDED {
		t.Fatalf("job ended %v; events: %v", got.GetStatus().GetState(), got.GetStatus().GetStatusEvents())
	}
	task, err := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: got.GetName() + "/taskGroups/group0/tasks/1"})
	if err != nil {
		t.Fatal(err)
	}
	var streamed bool
	for _, e := range task.GetStatus().GetStatusEvents() {
		if strings.Contains(strings.ToLower(e.GetDescription()), "stream") && !strings.Contains(e.GetDescription(), "cannot") {
			streamed = true
		}
	}
	if !streamed {
		t.Errorf("task 1 events do not say its image was streamed: %v", task.GetStatus().GetStatusEvents())
	}

	resp := get(t, "http://"+addr+"/riffle/v1/logs/"+got.GetName(), tok)

	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"task 0: task 0", "task 1: task 1", "hello from a streamed image"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("logs lack %q:\n%s", want, b)
		}
	}
	// The node's streaming counters are on /metrics (the mount's own go
	// with it once the image settles).
	resp = get(t, "http://"+addr+"/metrics", tok)

	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"riffle_node_streamed_wire_bytes_total", `riffle_node_image_starts_total{method="streamed"}`, "riffle_cache_", "riffle_index_layers_built_total"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	resp = get(t, "http://"+addr+"/riffle/v1/logs/"+got.GetName()+"?task=7", tok)

	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "tasks 0 to 1") {
		t.Errorf("logs of task 7 of 2: %s %s, want 404 naming the range", resp.Status, b)
	}
	resp = get(t, "http://"+addr+"/riffle/v1/logs/projects/demo/locations/us-central1/jobs/nope", tok)

	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("logs of a missing job: %s, want 404", resp.Status)
	}
}
