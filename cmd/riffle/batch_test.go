package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/riffle-dev/riffle/internal/batch/api"
	"github.com/riffle-dev/riffle/internal/batch/job"
	"github.com/riffle-dev/riffle/internal/batch/store"
	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// batchFixture is the real Batch API (store + REST handler) in-process,
// plus a stand-in for riffle serve's logs endpoint.
type batchFixture struct {
	addr string
	st   *store.Store
}

func newBatchFixture(t *testing.T) *batchFixture { return newBatchFixtureRunner(t, nil) }

func newBatchFixtureRunner(t *testing.T, runner func(*store.Store) api.Runner) *batchFixture {
	t.Helper()
	// The CLI reads these; the test must not depend on the caller's shell.
	for _, v := range []string{"RIFFLE_SERVER", "RIFFLE_PROJECT", "CLOUDSDK_CORE_PROJECT", "RIFFLE_LOCATION", "CLOUDSDK_BATCH_LOCATION"} {
		t.Setenv(v, "")
	}
	st, err := store.Open(t.TempDir(), store.Options{Host: "riffle-test"})
	if err != nil {
		t.Fatal(err)
	}
	var r api.Runner
	if runner != nil {
		r = runner(st)
	}
	srv, err := api.New(st, r, api.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", srv.HTTPHandler())
	mux.Handle(batchLogsPath, &testLogsHandler{st: st})
	hs := httptest.NewServer(mux)
	t.Cleanup(func() { hs.Close(); st.Close() })
	return &batchFixture{addr: strings.TrimPrefix(hs.URL, "http://"), st: st}
}

// run runs `riffle batch ARGS --server ADDR` in-process.
func (f *batchFixture) run(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(append(append([]string{"batch"}, args...), "--server", f.addr))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// ok is run that fails the test on an error.
func (f *batchFixture) ok(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := f.run(t, stdin, args...)
	if err != nil {
		t.Fatalf("riffle batch %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// fail is run that expects an error and returns its message.
func (f *batchFixture) fail(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, _, err := f.run(t, stdin, args...)
	if err == nil {
		t.Fatalf("riffle batch %s succeeded, want an error; stdout:\n%s", strings.Join(args, " "), out)
	}
	return err.Error()
}

// describe returns the job as the CLI prints it in JSON.
func (f *batchFixture) describe(t *testing.T, name string) *batchpb.Job {
	t.Helper()
	out := f.ok(t, "", "jobs", "describe", name, "--format", "json")
	j := new(batchpb.Job)
	if err := protojson.Unmarshal([]byte(out), j); err != nil {
		t.Fatalf("describe --format json is not a Job: %v\n%s", err, out)
	}
	return j
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBatchSubmitConfigFile(t *testing.T) {
	f := newBatchFixture(t)
	cfg := writeFile(t, "job.json", `{
	  "taskGroups": [{
	    "taskCount": "4", "parallelism": 2,
	    "taskSpec": {
	      "runnables": [{"container": {"imageUri": "busybox", "entrypoint": "/bin/sh", "commands": ["-c", "echo $BATCH_TASK_INDEX"]}}],
	      "computeResource": {"cpuMilli": 500, "memoryMib": 64},
	      "maxRunDuration": "3600s"
	    }
	  }],
	  "labels": {"env": "dev"},
	  "logsPolicy": {"destination": "CLOUD_LOGGING"}
	}`)
	out, errOut, err := f.run(t, "", "jobs", "submit", "hello", "--location", "us-central1", "--config", cfg)
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "Job hello was successfully submitted.") {
		t.Errorf("stderr %q lacks the submitted message", errOut)
	}
	// Default output is the job as YAML, as gcloud prints it.
	var y map[string]any
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || y["name"] != "projects/default/locations/us-central1/jobs/hello" {
		t.Fatalf("submit output is not the job in YAML (%v):\n%s", err, out)
	}
	j := f.describe(t, "hello")
	g := j.GetTaskGroups()[0]
	if g.GetTaskCount() != 4 || g.GetParallelism() != 2 || j.GetLabels()["env"] != "dev" ||
		g.GetTaskSpec().GetRunnables()[0].GetContainer().GetCommands()[1] != "echo $BATCH_TASK_INDEX" ||
		g.GetTaskSpec().GetMaxRunDuration().GetSeconds() != 3600 {
		t.Errorf("stored job differs from the config: %v", j)
	}
	if j.GetStatus().GetState() != batchpb.JobStatus_QUEUED || j.GetUid() == "" {
		t.Errorf("server defaults missing: state %v uid %q", j.GetStatus().GetState(), j.GetUid())
	}
	// The same job by full name, and a duplicate ID.
	if j2 := f.describe(t, "projects/default/locations/us-central1/jobs/hello"); j2.GetUid() != j.GetUid() {
		t.Errorf("describe by full name found another job")
	}
	msg := f.fail(t, "", "jobs", "submit", "hello", "--config", cfg)
	if !strings.Contains(msg, "ALREADY_EXISTS") || !strings.Contains(msg, "hello") {
		t.Errorf("duplicate submit error %q does not say ALREADY_EXISTS", msg)
	}
}

func TestBatchSubmitYAMLStdinLenient(t *testing.T) {
	f := newBatchFixture(t)
	// snake_case keys, single values where the schema wants lists
	// (task_groups, runnables, commands, volumes), an int as a string:
	// all accepted by gcloud, so by Riffle.
	cfg := `
task_groups:
  task_count: "2"
  task_spec:
    runnables:
      container:
        image_uri: busybox
        commands: "echo hi"
        volumes: /tmp:/data:ro
    environment:
      variables:
        GREETING: hello
allocation_policy:
  instances:
    policy:
      machine_type: e2-standard-4
logs_policy:
  destination: CLOUD_LOGGING
`
	name := "projects/proj-a/locations/europe-west1/jobs/yaml-job"
	f.ok(t, cfg, "jobs", "submit", name, "--config", "-")
	j := f.describe(t, name)
	g := j.GetTaskGroups()[0]
	c := g.GetTaskSpec().GetRunnables()[0].GetContainer()
	if g.GetTaskCount() != 2 || len(c.GetCommands()) != 1 || c.GetCommands()[0] != "echo hi" ||
		len(c.GetVolumes()) != 1 || g.GetTaskSpec().GetEnvironment().GetVariables()["GREETING"] != "hello" {
		t.Errorf("lenient YAML not decoded as gcloud does: %v", j)
	}
	// The ignored machine type is recorded in the job's events.
	var events []string
	for _, e := range j.GetStatus().GetStatusEvents() {
		events = append(events, e.GetDescription())
	}
	if !strings.Contains(strings.Join(events, "\n"), "machineType") {
		t.Errorf("no status event about the ignored machineType: %q", events)
	}
}

func TestBatchSubmitQuickJobs(t *testing.T) {
	f := newBatchFixture(t)
	t.Setenv("RIFFLE_PROJECT", "quick-proj")
	out, errOut, err := f.run(t, "", "jobs", "submit", "--job-prefix", "quick", "--location", "local",
		"--script-text", "echo task $BATCH_TASK_INDEX", "--task-count", "3", "--parallelism", "2",
		"--machine-type", "e2-standard-4", "--format", "value(name)")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, errOut)
	}
	name := strings.TrimSpace(out)
	if !regexp.MustCompile(`^projects/quick-proj/locations/local/jobs/quick-\d{8}-\d{6}-[0-9a-f]{6}$`).MatchString(name) {
		t.Fatalf("generated name %q does not follow --job-prefix and RIFFLE_PROJECT", name)
	}
	if !strings.Contains(errOut, "WARNING: --machine-type is recorded but ignored") {
		t.Errorf("no warning about --machine-type: %q", errOut)
	}
	j := f.describe(t, name)
	g := j.GetTaskGroups()[0]
	if g.GetTaskCount() != 3 || g.GetParallelism() != 2 ||
		g.GetTaskSpec().GetRunnables()[0].GetScript().GetText() != "echo task $BATCH_TASK_INDEX" ||
		j.GetAllocationPolicy().GetInstances()[0].GetPolicy().GetMachineType() != "e2-standard-4" {
		t.Errorf("quick script job: %v", j)
	}

	cmds := writeFile(t, "cmds", "-c\necho one two\n")
	f.ok(t, "", "jobs", "submit", "ctr", "--container-image-uri", "busybox:latest",
		"--container-entrypoint", "/bin/sh", "--container-commands-file", cmds, "--priority", "7",
		"--provisioning-model", "spot")
	j = f.describe(t, "projects/quick-proj/locations/us-central1/jobs/ctr")
	c := j.GetTaskGroups()[0].GetTaskSpec().GetRunnables()[0].GetContainer()
	if c.GetImageUri() != "busybox:latest" || c.GetEntrypoint() != "/bin/sh" ||
		strings.Join(c.GetCommands(), "|") != "-c|echo one two" || j.GetPriority() != 7 ||
		j.GetAllocationPolicy().GetInstances()[0].GetPolicy().GetProvisioningModel() != batchpb.AllocationPolicy_SPOT {
		t.Errorf("quick container job: %v", j)
	}

	script := writeFile(t, "run.sh", "#!/bin/sh\necho hi\n")
	f.ok(t, "", "jobs", "submit", "scriptfile", "--script-file-path", script)
	if p := f.describe(t, "scriptfile").GetTaskGroups()[0].GetTaskSpec().GetRunnables()[0].GetScript().GetPath(); p != script {
		t.Errorf("script path %q, want %q", p, script)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", cmds, "--script-text", "x"}, "cannot be combined"},
		{[]string{"--container-image-uri", "busybox", "--script-text", "x"}, "not both"},
		{[]string{"--container-entrypoint", "/bin/sh"}, "need --container-image-uri"},
		{[]string{}, "nothing to run"},
		{[]string{"--script-text", "x", "--task-count", "0"}, "--task-count 0"},
		{[]string{"--script-text", "x", "--provisioning-model", "cheap"}, "--provisioning-model"},
		{[]string{"--script-text", "x", "--job-prefix", "Bad_Prefix"}, "--job-prefix"},
		{[]string{"Bad_ID", "--script-text", "x"}, "must start with a lowercase letter"},
	} {
		msg := f.fail(t, "", append([]string{"jobs", "submit"}, tc.args...)...)
		if !strings.Contains(msg, tc.want) {
			t.Errorf("submit %q: error %q lacks %q", tc.args, msg, tc.want)
		}
	}
}

func TestBatchListDescribeFormats(t *testing.T) {
	f := newBatchFixture(t)
	for _, id := range []string{"job-a", "job-b", "job-c"} {
		f.ok(t, "", "jobs", "submit", id, "--script-text", "true", "--location", "us-central1")
	}
	f.ok(t, `{"labels": {"env": "dev"}, "taskGroups": [{"taskSpec": {"runnables": [{"script": {"text": "true"}}]}}]}`,
		"jobs", "submit", "job-d", "--location", "local", "--config", "-")

	out := f.ok(t, "", "jobs", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || strings.Join(strings.Fields(lines[0]), " ") != "NAME LOCATION STATE" {
		t.Fatalf("list table:\n%s", out)
	}
	want := "projects/default/locations/local/jobs/job-d local QUEUED"
	if got := strings.Join(strings.Fields(lines[1]), " "); got != want {
		t.Errorf("first row %q, want %q (all locations, ordered by name)", got, want)
	}

	out = f.ok(t, "", "jobs", "list", "--location", "us-central1", "--sort-by", "~name", "--limit", "2", "--page-size", "1", "--format", "value(name)")
	if got := strings.Fields(out); strings.Join(got, " ") != "projects/default/locations/us-central1/jobs/job-c projects/default/locations/us-central1/jobs/job-b" {
		t.Errorf("--sort-by ~name --limit 2 --page-size 1: %q", got)
	}
	out = f.ok(t, "", "jobs", "list", "--filter", `labels.env="dev"`, "--format", "json")
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(out), &arr); err != nil || len(arr) != 1 {
		t.Fatalf("list --format json with filter: %v\n%s", err, out)
	}
	j := new(batchpb.Job)
	if err := protojson.Unmarshal(arr[0], j); err != nil || j.GetName() != "projects/default/locations/local/jobs/job-d" {
		t.Errorf("list json item: %v %v", err, j.GetName())
	}
	out = f.ok(t, "", "jobs", "list", "--format", "yaml", "--location", "us-central1")
	var ys []map[string]any
	if err := yaml.Unmarshal([]byte(out), &ys); err != nil || len(ys) != 3 {
		t.Errorf("list --format yaml: %v\n%s", err, out)
	}
	out = f.ok(t, "", "jobs", "describe", "job-a", "--format", "table")
	if !strings.Contains(out, "us-central1") || !strings.Contains(out, "QUEUED") {
		t.Errorf("describe --format table:\n%s", out)
	}
	out = f.ok(t, "", "jobs", "describe", "job-a")
	var y map[string]any
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || y["status"].(map[string]any)["state"] != "QUEUED" {
		t.Errorf("describe default YAML: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"jobs", "list", "--sort-by", "state"}, "cannot sort by"},
		{[]string{"jobs", "list", "--filter", "color=\"red\""}, "INVALID_ARGUMENT"},
		{[]string{"jobs", "list", "--format", "xml"}, "--format"},
		{[]string{"jobs", "describe", "nope"}, "NOT_FOUND"},
		{[]string{"jobs", "describe", "projects/x/jobs/y"}, "projects/PROJECT/locations/LOCATION/jobs/JOB"},
	} {
		if msg := f.fail(t, "", tc.args...); !strings.Contains(msg, tc.want) {
			t.Errorf("%q: error %q lacks %q", tc.args, msg, tc.want)
		}
	}
}

func TestBatchTasks(t *testing.T) {
	f := newBatchFixture(t)
	f.ok(t, "", "jobs", "submit", "tasks", "--script-text", "true", "--task-count", "3")
	out := f.ok(t, "", "tasks", "list", "--job", "tasks")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "NAME STATE" ||
		strings.Join(strings.Fields(lines[3]), " ") != "projects/default/locations/us-central1/jobs/tasks/taskGroups/group0/tasks/2 PENDING" {
		t.Errorf("tasks list:\n%s", out)
	}
	out = f.ok(t, "", "tasks", "list", "--job", "projects/default/locations/us-central1/jobs/tasks", "--limit", "1", "--format", "json")
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(out), &arr); err != nil || len(arr) != 1 {
		t.Errorf("tasks list --limit 1 --format json: %v\n%s", err, out)
	}
	out = f.ok(t, "", "tasks", "describe", "1", "--job", "tasks", "--format", "json")
	task := new(batchpb.Task)
	if err := protojson.Unmarshal([]byte(out), task); err != nil || !strings.HasSuffix(task.GetName(), "/tasks/1") || task.GetStatus().GetState() != batchpb.TaskStatus_PENDING {
		t.Errorf("tasks describe: %v\n%s", err, out)
	}
	full := "projects/default/locations/us-central1/jobs/tasks/taskGroups/group0/tasks/2"
	if out := f.ok(t, "", "tasks", "describe", full); !strings.Contains(out, "name: "+full) {
		t.Errorf("tasks describe by full name:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tasks", "list"}, "--job is required"},
		{[]string{"tasks", "describe", "1"}, "--job is required"},
		{[]string{"tasks", "describe", "x", "--job", "tasks"}, "task index"},
		{[]string{"tasks", "describe", "9", "--job", "tasks"}, "NOT_FOUND"},
	} {
		if msg := f.fail(t, "", tc.args...); !strings.Contains(msg, tc.want) {
			t.Errorf("%q: error %q lacks %q", tc.args, msg, tc.want)
		}
	}
}

func TestBatchCancelDelete(t *testing.T) {
	f := newBatchFixture(t)
	for _, id := range []string{"to-cancel", "to-delete", "to-delete-async"} {
		f.ok(t, "", "jobs", "submit", id, "--script-text", "sleep 100")
	}
	_, errOut, err := f.run(t, "", "jobs", "cancel", "to-cancel")
	if err != nil || !strings.Contains(errOut, "Cancelled job [projects/default/locations/us-central1/jobs/to-cancel]") {
		t.Fatalf("cancel: %v\n%s", err, errOut)
	}
	if st := f.describe(t, "to-cancel").GetStatus().GetState(); st != batchpb.JobStatus_CANCELLED {
		t.Errorf("state after cancel %v, want CANCELLED", st)
	}
	_, errOut, err = f.run(t, "", "jobs", "delete", "to-delete")
	if err != nil || !strings.Contains(errOut, "Deleted job [") {
		t.Fatalf("delete: %v\n%s", err, errOut)
	}
	if msg := f.fail(t, "", "jobs", "describe", "to-delete"); !strings.Contains(msg, "NOT_FOUND") {
		t.Errorf("describe after delete: %q", msg)
	}
	_, errOut, err = f.run(t, "", "jobs", "delete", "to-delete-async", "--async")
	if err != nil || !strings.Contains(errOut, "deletion is in progress") {
		t.Fatalf("delete --async: %v\n%s", err, errOut)
	}
	if msg := f.fail(t, "", "jobs", "delete", "never-was"); !strings.Contains(msg, "NOT_FOUND") {
		t.Errorf("delete of a missing job: %q", msg)
	}
	if msg := f.fail(t, "", "jobs", "cancel", "never-was"); !strings.Contains(msg, "NOT_FOUND") {
		t.Errorf("cancel of a missing job: %q", msg)
	}
}

// slowStopRunner stands in for the scheduler where only the timing of a
// stop matters: it finishes every cancel or delete after a delay, through
// the store, as the real scheduler must.
type slowStopRunner struct {
	st    *store.Store
	delay time.Duration
}

func (r *slowStopRunner) Submit(context.Context, string) {}

func (r *slowStopRunner) Cancel(ctx context.Context, jobName string) {
	time.AfterFunc(r.delay, func() { r.st.FinishStop(context.Background(), jobName) })
}

// TestBatchWaitsForStops checks that cancel and delete wait for the
// operation, not just for the request, and that --async does not.
func TestBatchWaitsForStops(t *testing.T) {
	f := newBatchFixtureRunner(t, func(st *store.Store) api.Runner { return &slowStopRunner{st: st, delay: 300 * time.Millisecond} })
	for _, id := range []string{"slow-cancel", "slow-delete", "slow-async"} {
		f.ok(t, "", "jobs", "submit", id, "--script-text", "true")
	}
	start := time.Now()
	f.ok(t, "", "jobs", "cancel", "slow-cancel")
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("cancel returned after %v, before the stop finished", el)
	}
	if st := f.describe(t, "slow-cancel").GetStatus().GetState(); st != batchpb.JobStatus_CANCELLED {
		t.Errorf("after cancel: %v, want CANCELLED", st)
	}
	f.ok(t, "", "jobs", "delete", "slow-delete")
	if msg := f.fail(t, "", "jobs", "describe", "slow-delete"); !strings.Contains(msg, "NOT_FOUND") {
		t.Errorf("describe after delete: %q", msg)
	}
	f.ok(t, "", "jobs", "delete", "slow-async", "--async")
	if st := f.describe(t, "slow-async").GetStatus().GetState(); st != batchpb.JobStatus_DELETION_IN_PROGRESS {
		t.Errorf("right after delete --async: %v, want DELETION_IN_PROGRESS", st)
	}
	time.Sleep(500 * time.Millisecond) // let the stop finish before the store closes
}

// TestBatchBadConfigErrors checks that both kinds of bad config, refused
// by the local parser or by the server, come back naming the field.
func TestBatchBadConfigErrors(t *testing.T) {
	f := newBatchFixture(t)
	for _, tc := range []struct {
		name, cfg string
		want      []string
	}{
		{"misspelt field", `{"taskGroups": [{"taskCont": 2, "taskSpec": {"runnables": [{"script": {"text": "true"}}]}}]}`,
			[]string{"--config (stdin)", "taskGroups[0].taskCont", "unknown field", "taskCount"}},
		{"wrong type", "taskGroups:\n- taskCount: many\n", []string{"taskGroups[0].taskCount"}},
		{"not a config", "", []string{"config is empty"}},
		// Shape is fine; the server's validation refuses it.
		{"no runnable", `{"taskGroups": [{"taskSpec": {"runnables": [{}]}}]}`,
			[]string{"INVALID_ARGUMENT", "job.taskGroups[0].taskSpec.runnables[0]"}},
		{"two violations", `{"taskGroups": [{"taskCount": 5, "parallelism": 0, "taskSpec": {"maxRetryCount": 99, "runnables": [{"script": {"text": "true"}}, {}]}}]}`,
			[]string{"INVALID_ARGUMENT: 2 problems:\n", "\n  - job.taskGroups[0].taskSpec.maxRetryCount", "\n  - job.taskGroups[0].taskSpec.runnables[1]"}},
		{"unsupported", `{"taskGroups": [{"taskSpec": {"runnables": [{"script": {"text": "true"}}], "volumes": [{"gcs": {"remotePath": "b/p"}, "mountPath": "/mnt/b"}]}}]}`,
			[]string{"INVALID_ARGUMENT", "job.taskGroups[0].taskSpec.volumes[0].gcs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := f.fail(t, tc.cfg, "jobs", "submit", "bad", "--config", "-")
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%s", w, msg)
				}
			}
		})
	}
	if msg := f.fail(t, "", "jobs", "submit", "bad", "--config", filepath.Join(t.TempDir(), "missing.json")); !strings.Contains(msg, "no such file") {
		t.Errorf("missing config file: %q", msg)
	}
	// Through the real binary's path: cobra prints the error and main exits 1.
	_, errOut, err := f.run(t, `{"taskGroups": [{"taskSpec": {"runnables": [{}]}}]}`, "jobs", "submit", "bad", "--config", "-")
	if err == nil || !strings.Contains(errOut, "Error: batch: submit projects/default/locations/us-central1/jobs/bad: INVALID_ARGUMENT: ") {
		t.Errorf("stderr for a refused job:\n%s", errOut)
	}
}

func TestBatchServerUnreachable(t *testing.T) {
	t.Setenv("RIFFLE_SERVER", "")
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	// A port nothing listens on: the fixture's server, closed.
	hs := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(hs.URL, "http://")
	hs.Close()
	cmd.SetArgs([]string{"batch", "jobs", "list", "--server", addr})
	err := cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot reach riffle serve at "+addr) || !strings.Contains(err.Error(), "--server") {
		t.Errorf("unreachable server: %v", err)
	}
}

// sampleEnv fills the samples' ${VAR} placeholders as their scripts do
// with envsubst. Variables the samples read at run time
// (BATCH_TASK_INDEX, ...) are left as written.
var sampleEnv = map[string]string{
	"PROJECT_ID": "riffle-test", "ProjectID": "riffle-test", "HOST_PROJECT_ID": "riffle-host",
	"Location": "local", "REGION": "local", "ALLOWED_REGION": "regions/local",
	"ALLOWED_ZONE": "zones/local-a", "ALLOWED_LOCATION": "regions/local", "ALLOWED_LOCATIONS": "regions/local",
	"IMAGE": "127.0.0.1:5000/busybox:latest", "Image": "127.0.0.1:5000/busybox:latest",
	"CONTAINER_IMAGE": "127.0.0.1:5000/busybox:latest", "CONTAINER_IMAGE_URI": "127.0.0.1:5000/busybox:latest",
	"RepositoryName": "riffle", "CONTAINER_COMMAND": "echo hello",
	"MACHINE_TYPE": "e2-standard-4", "CPU_MILLI": "1000", "MEMORY_MIB": "512",
	"BOOT_DISK_SIZE_GB": "50", "BootDiskImage": "batch-debian", "BootDiskSize": "50", "BootDiskType": "pd-balanced",
	"DEVICE_NAME": "scratch", "MOUNT_PATH": "/mnt/disks/share", "MOUNT_OPTIONS": "rw,async",
	"REMOTE_PATH": "/share", "SERVER": "127.0.0.1", "BUCKET": "riffle-bucket", "BUCKET_PATH": "riffle-bucket/data",
	"LOCAL_SSD_SIZE": "375", "NEW_DISK_SIZE": "100", "NEW_DISK_TYPE": "pd-balanced",
	"EXT_DISK_SELF_LINK": "projects/riffle-test/zones/local-a/disks/data",
	"GPU_TYPE":           "nvidia-l4", "GPU_COUNT": "1", "INSTALL_GPU_DRIVERS": "true",
	"NETWORK": "global/networks/default", "SUBNET": "regions/local/subnetworks/default",
	"NO_EXTERNAL_IP_ADDRESS": "true", "BLOCK_EXTERNAL_NETWORK": "true",
	"ServiceAccountEmail":         "batch@riffle-test.iam.gserviceaccount.com",
	"BATCH_SERVICE_ACCOUNT_EMAIL": "batch@riffle-test.iam.gserviceaccount.com",
	"InstanceTemplateWithSA":      "projects/riffle-test/global/instanceTemplates/with-sa",
	"JobStateTopic":               "job-state", "TaskStateTopic": "task-state",
	"LOGS_DESTINATION": "CLOUD_LOGGING", "PARALLELISM": "2", "TASK_COUNT": "4", "TASK_COUNT_PER_NODE": "1",
	"RESERVATION": "projects/riffle-test/reservations/r1", "SHM_SIZE": "1g",
	"FOLLOWING_SCRIPT": "echo next", "HF_TOKEN_SECRET": "projects/riffle-test/secrets/hf/versions/1",
	"WANDB_API_KEY_SECRET": "projects/riffle-test/secrets/wandb/versions/1",
}

var samplePlaceholder = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// sampleAngles fills the <...> placeholders some samples carry, which
// their users replace by hand before submitting.
var sampleAngles = map[string]string{
	"<CUSTOM_BOOT_DISK_SIZE>": "50", "<CUSTOM_BOOT_IMAGE>": "batch-debian", "<CUSTOM_GPU_TYPE>": "nvidia-l4",
	"<SELECTED_ZONE>": "local-a", "<SRUN_COMMAND>": "hostname",
	"<YOUR FILESTORE IP ADDRESS>": "127.0.0.1", "<YOUR FILESTORE PATH>": "/share",
	"<YOUR FILESTORE SHARE PATH, e.g. /share>": "/share", "<YOUR PROJECT ID>": "riffle-test",
	"<your Filestore IP address>": "127.0.0.1", "<your Filestore share path, e.g. /share>": "/share",
	"<your project>": "riffle-test", "<your repo>": "riffle", "<your image name>": "busybox",
}

func fillSampleEnv(s string) string {
	s = samplePlaceholder.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := sampleEnv[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
	for k, v := range sampleAngles {
		s = strings.ReplaceAll(s, k, v)
	}
	return s
}

// TestBatchSubmitSamples submits every real Batch config in
// ../shared/batch-samples that the lenient parser accepts, as a user
// would after envsubst: each is accepted, or refused by the server with
// INVALID_ARGUMENT naming every unsupported field.
func TestBatchSubmitSamples(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "batch-samples")
	if _, err := os.Stat(dir); err != nil {
		if testutil.InCI() {
			t.Fatalf("batch samples missing at %s: %v", dir, err)
		}
		t.Skipf("batch samples missing at %s", dir)
	}
	f := newBatchFixture(t)
	var accepted, refused, unparsable int
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".json") || strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		filled := fillSampleEnv(string(data))
		j, err := job.Parse([]byte(filled), job.Lenient)
		if err != nil {
			unparsable++
			return nil // malformed samples; the job package's tests cover their errors
		}
		// What the server will say, computed with the same rules.
		var refusedPaths []string
		wantOK := job.Validate(j) == nil
		if wantOK {
			if _, err := job.CheckSupport(j); err != nil {
				wantOK = false
				var ue *job.UnsupportedError
				if errors.As(err, &ue) {
					for _, ft := range ue.Features {
						refusedPaths = append(refusedPaths, "job."+ft.Path)
					}
				}
			}
		}
		t.Run(rel, func(t *testing.T) {
			id := fmt.Sprintf("sample-%d", accepted+refused)
			cfg := writeFile(t, filepath.Base(p), filled)
			out, errOut, err := f.run(t, "", "jobs", "submit", id, "--location", "local", "--config", cfg, "--format", "json")
			if wantOK {
				accepted++
				if err != nil {
					t.Fatalf("refused: %v\n%s", err, errOut)
				}
				got := new(batchpb.Job)
				if err := protojson.Unmarshal([]byte(out), got); err != nil || got.GetName() != "projects/default/locations/local/jobs/"+id {
					t.Errorf("submit output: %v\n%s", err, out)
				}
				return
			}
			refused++
			if err == nil {
				t.Fatalf("accepted, but the job package refuses it")
			}
			if !strings.Contains(err.Error(), "INVALID_ARGUMENT") {
				t.Errorf("refusal is not INVALID_ARGUMENT: %v", err)
			}
			for _, p := range refusedPaths {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("refusal does not name %s:\n%v", p, err)
				}
			}
			t.Logf("refused as expected: %v", err)
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if accepted == 0 || refused == 0 {
		t.Errorf("%d samples accepted, %d refused: expected some of each", accepted, refused)
	}
	t.Logf("%d samples accepted, %d refused by the server, %d not parsable", accepted, refused, unparsable)
}

// testLogsHandler stands in for riffle serve's logs endpoint (owned by the
// server, see batchLogsPath) with the same contract: every task of an
// existing job wrote "line K of task N" for K = 0, 1; with follow, one more
// line per task arrives later and the stream then ends as the job does.
type testLogsHandler struct {
	st *store.Store
}

func (h *testLogsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, batchLogsPath)
	j, err := h.st.GetJob(r.Context(), name)
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		msg, _ := json.Marshal(fmt.Sprintf("job %q not found", name))
		fmt.Fprintf(w, `{"error":{"code":404,"message":%s,"status":"NOT_FOUND"}}`, msg)
		return
	}
	n := j.GetTaskGroups()[0].GetTaskCount()
	tasks := []int64{}
	if ts := r.URL.Query().Get("task"); ts != "" {
		k, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || k < 0 || k >= n {
			http.Error(w, fmt.Sprintf("task %q: the job has tasks 0 to %d", ts, n-1), http.StatusBadRequest)
			return
		}
		tasks = append(tasks, k)
	} else {
		for k := int64(0); k < n; k++ {
			tasks = append(tasks, k)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	write := func(line int) {
		for _, k := range tasks {
			if len(tasks) > 1 || r.URL.Query().Get("task") == "" {
				fmt.Fprintf(w, "task %d: ", k)
			}
			fmt.Fprintf(w, "line %d of task %d\n", line, k)
		}
		w.(http.Flusher).Flush()
	}
	write(0)
	write(1)
	if r.URL.Query().Get("follow") == "true" {
		time.Sleep(50 * time.Millisecond)
		write(2)
	}
}

func TestBatchLogs(t *testing.T) {
	f := newBatchFixture(t)
	f.ok(t, "", "jobs", "submit", "logged", "--script-text", "echo", "--task-count", "2")
	out := f.ok(t, "", "jobs", "logs", "logged")
	want := "task 0: line 0 of task 0\ntask 1: line 0 of task 1\ntask 0: line 1 of task 0\ntask 1: line 1 of task 1\n"
	if out != want {
		t.Errorf("logs:\n%s\nwant:\n%s", out, want)
	}
	out = f.ok(t, "", "jobs", "logs", "projects/default/locations/us-central1/jobs/logged", "--task", "1")
	if out != "line 0 of task 1\nline 1 of task 1\n" {
		t.Errorf("logs --task 1:\n%s", out)
	}
	out = f.ok(t, "", "jobs", "logs", "logged", "--task", "0", "--follow")
	if out != "line 0 of task 0\nline 1 of task 0\nline 2 of task 0\n" {
		t.Errorf("logs --task 0 --follow:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"jobs", "logs", "missing"}, `NOT_FOUND: job "projects/default/locations/us-central1/jobs/missing" not found`},
		{[]string{"jobs", "logs", "logged", "--task", "5"}, "HTTP 400: task \"5\""},
		{[]string{"jobs", "logs", "logged", "--task", "-1"}, "--task -1"},
	} {
		if msg := f.fail(t, "", tc.args...); !strings.Contains(msg, tc.want) {
			t.Errorf("%q: error %q lacks %q", tc.args, msg, tc.want)
		}
	}
}

// TestBatchAgainstRiffleServe drives the CLI against the real riffle serve
// (internal/server), found the way a user's CLI finds it: through the
// address file in its data directory, with no --server.
func TestBatchAgainstRiffleServe(t *testing.T) {
	for _, v := range []string{"RIFFLE_SERVER", "RIFFLE_PROJECT", "CLOUDSDK_CORE_PROJECT", "RIFFLE_LOCATION", "CLOUDSDK_BATCH_LOCATION"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DataDir: dir, Listen: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if a, err := server.ReadAddr(dir); err == nil && a == ln.Addr().String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve.addr not written")
		}
	}
	run := func(args ...string) (string, error) {
		cmd := newRootCmd()
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(append(append([]string{"batch"}, args...), "--data-dir", dir))
		err := cmd.ExecuteContext(ctx)
		if err != nil {
			return errOut.String(), err
		}
		return out.String(), nil
	}
	if out, err := run("jobs", "submit", "e2e", "--script-text", "echo $BATCH_TASK_INDEX", "--task-count", "2", "--format", "value(name)"); err != nil || strings.TrimSpace(out) != "projects/default/locations/us-central1/jobs/e2e" {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	out, err := run("jobs", "list")
	if err != nil || !strings.Contains(out, "projects/default/locations/us-central1/jobs/e2e") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = run("tasks", "list", "--job", "e2e", "--format", "value(name)")
	if err != nil || len(strings.Fields(out)) != 2 {
		t.Fatalf("tasks list: %v\n%s", err, out)
	}
	// The job runs on this machine; its logs come back through the CLI.
	// The executor may need root (cgroups) even for script runnables.
	t.Run("run and logs", func(t *testing.T) {
		testutil.RequiresRoot(t)
		waitAndReadLogs(t, run)
	})
	if out, err := run("jobs", "delete", "e2e"); err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if _, err := run("jobs", "describe", "e2e"); err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("describe after delete: %v", err)
	}
}

func waitAndReadLogs(t *testing.T, run func(...string) (string, error)) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err := run("jobs", "describe", "e2e", "--format", "json")
		if err != nil {
			t.Fatalf("describe: %v\n%s", err, out)
		}
		j := new(batchpb.Job)
		if err := protojson.Unmarshal([]byte(out), j); err != nil {
			t.Fatal(err)
		}
		if st := j.GetStatus().GetState(); st == batchpb.JobStatus_SUCCEEDED {
			break
		} else if st == batchpb.JobStatus_FAILED || time.Now().After(deadline) {
			t.Fatalf("job did not succeed (%v):\n%s", st, out)
		}
	}
	if out, err := run("jobs", "logs", "e2e", "--task", "1"); err != nil || out != "1\n" {
		t.Errorf("logs --task 1: %v %q, want \"1\\n\"", err, out)
	}
	if out, err := run("jobs", "logs", "e2e", "--follow"); err != nil || !strings.Contains(out, "0\n") || !strings.Contains(out, "1\n") {
		t.Errorf("logs --follow of a finished job: %v %q", err, out)
	}
}
