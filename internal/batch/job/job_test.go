package job

import (
	"errors"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
)

func TestParseStrictErrorsNameTheField(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"unknown field", `{"taskGroups":[{"taskSpec":{"runables":[]}}]}`, `taskGroups[0].taskSpec.runables: unknown field; did you mean "runnables"?`},
		{"wrong type", `{"taskGroups":[{"taskCount":"four"}]}`, `taskGroups[0].taskCount: must be an integer, not the string "four"`},
		{"single value for list", `{"taskGroups":{"taskCount":1}}`, `taskGroups: must be a list ([...]), not an object`},
		{"bad enum", `{"logsPolicy":{"destination":"STDOUT"}}`, `logsPolicy.destination: unknown value "STDOUT"; use one of CLOUD_LOGGING, PATH`},
		{"bad enum number", `{"logsPolicy":{"destination":7}}`, `logsPolicy.destination: 7 is not a value of Destination`},
		{"bad duration", `{"taskGroups":[{"taskSpec":{"maxRunDuration":"1h"}}]}`, `taskGroups[0].taskSpec.maxRunDuration: "1h" is not a duration`},
		{"two oneof members", `{"taskGroups":[{"taskSpec":{"runnables":[{"script":{"text":"x"},"barrier":{}}]}}]}`, `taskGroups[0].taskSpec.runnables[0].script: cannot be set together with taskGroups[0].taskSpec.runnables[0].barrier`},
		{"malformed", `{"taskGroups":[}`, `malformed JSON: line 1, column 16`},
		{"not an object", `[1,2]`, `config must be a JSON object`},
		{"trailing data", `{} {}`, `unexpected data after`},
		{"empty", `   `, `config is empty`},
		{"yaml in strict", "taskGroups: []", `not YAML`},
		{"int overflow", `{"taskGroups":[{"taskSpec":{"maxRetryCount":99999999999}}]}`, `maxRetryCount: 99999999999 is out of range for a int32`},
		{"duplicate name", `{"taskGroups":[],"task_groups":[]}`, `given twice`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.in), Strict)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not match ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q\ndoes not contain %q", err, c.want)
			}
		})
	}
}

func TestParseProtoJSONForms(t *testing.T) {
	// What the official client sends: enums as numbers, int64 as strings,
	// snake_case accepted as protojson does.
	in := `{"task_groups":[{"task_count":"3","parallelism":2,"task_spec":{"max_run_duration":"3600.5s",
		"compute_resource":{"cpu_milli":"500"},"runnables":[{"script":{"text":"true"}}]}}],
		"logsPolicy":{"destination":2},"priority":"5"}`
	j, err := Parse([]byte(in), Strict)
	if err != nil {
		t.Fatal(err)
	}
	g := j.TaskGroups[0]
	if g.TaskCount != 3 || g.Parallelism != 2 || g.TaskSpec.ComputeResource.CpuMilli != 500 || j.Priority != 5 {
		t.Errorf("parsed %v", j)
	}
	if j.LogsPolicy.Destination != batchpb.LogsPolicy_PATH {
		t.Errorf("destination %v", j.LogsPolicy.Destination)
	}
	if d := g.TaskSpec.MaxRunDuration.AsDuration(); d != 3600*time.Second+500*time.Millisecond {
		t.Errorf("maxRunDuration %v", d)
	}
}

func TestParseLenient(t *testing.T) {
	in := `
task_groups:
  task_count: 2
  task_spec:
    runnables:
      container:
        image_uri: busybox
        commands: "echo hi"
        volumes: /tmp:/tmp
        block_external_network: "true"
    environment:
      variables:
        N: 8
logs_policy:
  destination: cloud_logging
`
	j, err := Parse([]byte(in), Lenient)
	if err != nil {
		t.Fatal(err)
	}
	c := j.TaskGroups[0].TaskSpec.Runnables[0].GetContainer()
	if len(c.Commands) != 1 || c.Commands[0] != "echo hi" || len(c.Volumes) != 1 || !c.BlockExternalNetwork {
		t.Errorf("container %v", c)
	}
	if v := j.TaskGroups[0].TaskSpec.Environment.Variables["N"]; v != "8" {
		t.Errorf("N = %q", v)
	}
	if j.LogsPolicy.Destination != batchpb.LogsPolicy_CLOUD_LOGGING {
		t.Errorf("destination %v", j.LogsPolicy.Destination)
	}
	// Unknown fields stay errors in lenient mode.
	if _, err := Parse([]byte("taskGroups:\n- tasksCount: 2\n"), Lenient); err == nil || !strings.Contains(err.Error(), "taskGroups[0].tasksCount: unknown field") {
		t.Errorf("err = %v", err)
	}
}

func TestValidate(t *testing.T) {
	j, err := Parse([]byte(`{"labels":{"riffle-background-stream":"no"},"taskGroups":[{"taskCount":-1,"taskSpec":{"maxRetryCount":11,"runnables":[
		{"script":{"text":"true"}},{"container":{"imageUri":"","volumes":["tmp:/tmp"]}},{"timeout":"0s"}],
		"volumes":[{"mountPath":"rel","nfs":{"server":"s"}}]}}]}`), Strict)
	if err != nil {
		t.Fatal(err)
	}
	err = Validate(j)
	var fes FieldErrors
	if !errors.As(err, &fes) {
		t.Fatalf("err %T %v", err, err)
	}
	for _, want := range []string{
		"taskGroups[0].taskCount: -1 is out of range",
		"taskGroups[0].taskSpec.maxRetryCount: 11 is out of range; use 0 to 10",
		"taskGroups[0].taskSpec.runnables[1].container.imageUri: must not be empty",
		`taskGroups[0].taskSpec.runnables[1].container.volumes[0]: "tmp:/tmp" must use absolute paths`,
		"taskGroups[0].taskSpec.runnables[2]: must set one of container, script or barrier",
		"taskGroups[0].taskSpec.runnables[2].timeout: must be a positive duration",
		`taskGroups[0].taskSpec.volumes[0].mountPath: "rel" must be an absolute path`,
		"taskGroups[0].taskSpec.volumes[0].nfs.remotePath: must not be empty",
		`labels["riffle-background-stream"]: is "no"; use "off" to stream only what the tasks read, or "on" (the default)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in\n%v", want, err)
		}
	}
	if err := Validate(&batchpb.Job{}); err == nil || !strings.Contains(err.Error(), "taskGroups: must have one task group") {
		t.Errorf("empty job: %v", err)
	}
}

func TestJobID(t *testing.T) {
	for _, ok := range []string{"a", "job-1", "a" + strings.Repeat("b", 62)} {
		if err := ValidateJobID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for id, why := range map[string]string{
		"": "must not be empty", "1job": "must start with a lowercase letter", "job-": "must not end with a hyphen",
		"Job": "must start with a lowercase letter", "jOb": "must be lowercase", "a" + strings.Repeat("b", 63): "the limit is 63",
		"job_1": "must match",
	} {
		err := ValidateJobID(id)
		if err == nil || !strings.Contains(err.Error(), "jobId: ") || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want %q", id, err, why)
		}
	}
	now := time.Now()
	for _, p := range []string{"", "nightly", strings.Repeat("x", 70)} {
		if id := NewJobID(p, now); ValidateJobID(id) != nil {
			t.Errorf("NewJobID(%q) = %q is invalid", p, id)
		}
	}
}

func TestPrepareDefaults(t *testing.T) {
	j, err := Parse([]byte(`{"taskGroups":[{"taskSpec":{"runnables":[{"script":{"text":"true"}}]}}],"status":{"state":"SUCCEEDED"},"uid":"mine"}`), Strict)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	Prepare(j, "projects/p/locations/l", "j1", now, nil)
	g := j.TaskGroups[0]
	switch {
	case j.Name != "projects/p/locations/l/jobs/j1":
		t.Errorf("name %q", j.Name)
	case g.Name != "projects/p/locations/l/jobs/j1/taskGroups/group0":
		t.Errorf("group %q", g.Name)
	case g.TaskCount != 1 || g.Parallelism != 1:
		t.Errorf("count %d parallelism %d", g.TaskCount, g.Parallelism)
	case g.TaskSpec.ComputeResource.CpuMilli != 2000 || g.TaskSpec.ComputeResource.MemoryMib != 2000:
		t.Errorf("compute %v", g.TaskSpec.ComputeResource)
	case j.Status.State != batchpb.JobStatus_QUEUED || len(j.Status.StatusEvents) != 1:
		t.Errorf("status %v", j.Status)
	case !strings.HasPrefix(j.Uid, "j1-") || j.Uid == "mine":
		t.Errorf("uid %q", j.Uid)
	case !j.CreateTime.AsTime().Equal(now) || !j.UpdateTime.AsTime().Equal(now):
		t.Errorf("times %v %v", j.CreateTime, j.UpdateTime)
	}
	if d := j.Status.StatusEvents[0].Description; d != "Job state is set from STATE_UNSPECIFIED to QUEUED for job projects/p/locations/l/jobs/j1." {
		t.Errorf("event %q", d)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"taskGroups":[{"taskSpec":{"runnables":[{"container":{"imageUri":"busybox","commands":["echo","hi"]}}]},"taskCount":"4"}]}`,
		`{"taskGroups":{"task_spec":{"runnables":{"script":{"text":"x"}}}},"logsPolicy":{"destination":1}}`,
		"taskGroups:\n- taskSpec:\n    runnables:\n    - barrier: {}\n",
		`{"labels":{"a":"b"},"priority":1e2,"allocationPolicy":{"instances":[{"policy":{"accelerators":[{"count":"1"}]}}]}}`,
		`{"taskGroups":[{"taskSpec":{"maxRunDuration":"1.5s","lifecyclePolicies":[{"action":"RETRY_TASK","actionCondition":{"exitCodes":[1]}}]}}]}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, lenient bool) {
		mode := Strict
		if lenient {
			mode = Lenient
		}
		j, err := Parse(data, mode)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		if Validate(j) == nil {
			ign, _ := CheckSupport(j)
			Prepare(j, "projects/p/locations/l", "fuzz", time.Now(), ign)
		}
	})
}
