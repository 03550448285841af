package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

type envelope struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type            string `json:"@type"`
			FieldViolations []struct {
				Field       string `json:"field"`
				Description string `json:"description"`
			} `json:"fieldViolations"`
		} `json:"details"`
	} `json:"error"`
}

func do(t *testing.T, method, url string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

const okJob = `{"taskGroups":[{"taskSpec":{"runnables":[{"container":{"imageUri":"busybox","commands":["echo","hi"]}}]}}]}`

// TestRESTBadInput: each bad request gets the right HTTP code, a
// google.rpc.Status envelope whose message names the field, and the
// server keeps serving.
func TestRESTBadInput(t *testing.T) {
	f := newFixture(t, false)
	jobs := f.httpURL + "/v1/" + parent + "/jobs"
	if code, b := do(t, "POST", jobs+"?jobId=taken", strings.NewReader(okJob)); code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	big := `{"labels":{"x":"` + strings.Repeat("a", 10<<20) + `"}}`
	cases := []struct {
		name, method, url, body string
		code                    int
		status                  string
		contains                []string
		field                   string // a field violation expected in details
	}{
		{"malformed JSON", "POST", jobs + "?jobId=m1", `{"taskGroups":[{"taskSpec":}]}`, 400, "INVALID_ARGUMENT", []string{"malformed JSON: line 1, column 28"}, "job"},
		{"truncated JSON", "POST", jobs + "?jobId=m2", `{"taskGroups":[`, 400, "INVALID_ARGUMENT", []string{"malformed JSON", "unexpected end"}, "job"},
		{"wrong type", "POST", jobs + "?jobId=m3", `{"taskGroups":[{"taskCount":true,"taskSpec":{"runnables":[{"script":{"text":"x"}}]}}]}`, 400, "INVALID_ARGUMENT", []string{"job.taskGroups[0].taskCount: must be an integer, not true"}, "job.taskGroups[0].taskCount"},
		{"wrong type for object", "POST", jobs + "?jobId=m4", `{"taskGroups":[{"taskSpec":"echo"}]}`, 400, "INVALID_ARGUMENT", []string{"job.taskGroups[0].taskSpec: must be an object"}, "job.taskGroups[0].taskSpec"},
		{"unknown field", "POST", jobs + "?jobId=m5", `{"taskGroups":[{"taskSpec":{"runnables":[{"container":{"image":"busybox"}}]}}]}`, 400, "INVALID_ARGUMENT", []string{"job.taskGroups[0].taskSpec.runnables[0].container.image: unknown field", `did you mean "imageUri"`}, "job.taskGroups[0].taskSpec.runnables[0].container.image"},
		{"single value for list", "POST", jobs + "?jobId=m6", `{"taskGroups":{"taskSpec":{}}}`, 400, "INVALID_ARGUMENT", []string{"job.taskGroups: must be a list"}, "job.taskGroups"},
		{"empty image", "POST", jobs + "?jobId=m7", `{"taskGroups":[{"taskSpec":{"runnables":[{"script":{"text":"x"}},{"container":{"imageUri":""}}]}}]}`, 400, "INVALID_ARGUMENT", []string{"job.taskGroups[0].taskSpec.runnables[1].container.imageUri: must not be empty"}, "job.taskGroups[0].taskSpec.runnables[1].container.imageUri"},
		{"unsupported GPU", "POST", jobs + "?jobId=m8", `{"taskGroups":[{"taskSpec":{"runnables":[{"script":{"text":"x"}}]}}],"allocationPolicy":{"instances":[{"policy":{"accelerators":[{"type":"nvidia-l4","count":"1"}]}}]}}`, 400, "INVALID_ARGUMENT", []string{"job.allocationPolicy.instances[0].policy.accelerators[0]: GPU accelerators not supported"}, "job.allocationPolicy.instances[0].policy.accelerators[0]"},
		{"invalid job ID", "POST", jobs + "?jobId=Bad_Id", okJob, 400, "INVALID_ARGUMENT", []string{"jobId:", "must start with a lowercase letter"}, "jobId"},
		{"job ID too long", "POST", jobs + "?job_id=" + strings.Repeat("a", 64), okJob, 400, "INVALID_ARGUMENT", []string{"jobId:", "the limit is 63"}, "jobId"},
		{"job ID ending in hyphen", "POST", jobs + "?jobId=job-", okJob, 400, "INVALID_ARGUMENT", []string{"must not end with a hyphen"}, "jobId"},
		{"duplicate job ID", "POST", jobs + "?jobId=taken", okJob, 409, "ALREADY_EXISTS", []string{`job "projects/test-project/locations/us-central1/jobs/taken" already exists`}, ""},
		{"10 MB body", "POST", jobs + "?jobId=huge", big, 413, "INVALID_ARGUMENT", []string{"request body is larger than the 4194304-byte limit"}, "body"},
		{"empty body", "POST", jobs + "?jobId=empty", ``, 400, "INVALID_ARGUMENT", []string{"job: the request body must be the job"}, "job"},
		{"YAML body", "POST", jobs + "?jobId=yaml", "taskGroups: []", 400, "INVALID_ARGUMENT", []string{"not YAML"}, "job"},
		{"unknown query parameter", "GET", jobs + "?pageSise=3", ``, 400, "INVALID_ARGUMENT", []string{"pageSise: unknown query parameter"}, "pageSise"},
		{"bad pageSize", "GET", jobs + "?pageSize=ten", ``, 400, "INVALID_ARGUMENT", []string{"pageSize:", `"ten" is not an integer`}, "pageSize"},
		{"bad filter", "GET", jobs + "?filter=colour%3Dred", ``, 400, "INVALID_ARGUMENT", []string{`field "colour" is not supported`}, ""},
		{"bad orderBy", "GET", jobs + "?orderBy=uid", ``, 400, "INVALID_ARGUMENT", []string{`cannot order by "uid"`}, ""},
		{"bad page token", "GET", jobs + "?pageToken=xyz", ``, 400, "INVALID_ARGUMENT", []string{"pageToken is not from this query"}, ""},
		{"alt=proto", "GET", jobs + "?alt=proto", ``, 400, "INVALID_ARGUMENT", []string{`"proto" is not supported; use json`}, "alt"},
		{"missing job", "GET", jobs + "/nope", ``, 404, "NOT_FOUND", []string{`not found: job "projects/test-project/locations/us-central1/jobs/nope"`}, ""},
		{"missing task", "GET", jobs + "/taken/taskGroups/group0/tasks/5", ``, 404, "NOT_FOUND", []string{"tasks/5"}, ""},
		{"bad parent", "GET", f.httpURL + "/v1/projects/p/regions/r/jobs", ``, 404, "NOT_FOUND", []string{"no such method"}, ""},
		{"wrong method", "PUT", jobs + "/taken", okJob, 501, "UNIMPLEMENTED", []string{"PUT is not supported"}, ""},
		{"cancel body mismatch", "POST", jobs + "/taken:cancel", `{"name":"projects/x/locations/y/jobs/z"}`, 400, "INVALID_ARGUMENT", []string{"does not match"}, "name"},
		{"cancel body unknown field", "POST", jobs + "/taken:cancel", `{"force":true}`, 400, "INVALID_ARGUMENT", []string{"body.force: unknown field"}, "body.force"},
		{"missing operation", "GET", f.httpURL + "/v1/" + parent + "/operations/operation-1", ``, 404, "NOT_FOUND", []string{"operation"}, ""},
		{"outside /v1", "GET", f.httpURL + "/v2/" + parent + "/jobs", ``, 404, "NOT_FOUND", []string{"/v1/"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			}
			code, b := do(t, c.method, c.url, body)
			var env envelope
			if err := json.Unmarshal(b, &env); err != nil {
				t.Fatalf("%d, not a google.rpc.Status envelope: %s", code, b)
			}
			if code != c.code || env.Error.Code != c.code || env.Error.Status != c.status {
				t.Errorf("got %d/%d %s, want %d %s: %s", code, env.Error.Code, env.Error.Status, c.code, c.status, env.Error.Message)
			}
			for _, w := range c.contains {
				if !strings.Contains(env.Error.Message, w) {
					t.Errorf("message %q does not contain %q", env.Error.Message, w)
				}
			}
			if c.field != "" {
				found := false
				for _, d := range env.Error.Details {
					for _, v := range d.FieldViolations {
						found = found || (v.Field == c.field && d.Type == "type.googleapis.com/google.rpc.BadRequest")
					}
				}
				if !found {
					t.Errorf("no BadRequest field violation for %q: %s", c.field, b)
				}
			}
			// The server is still up and serving.
			if code, b := do(t, "GET", jobs+"/taken", nil); code != 200 {
				t.Fatalf("server no longer serves: %d %s", code, b)
			}
		})
	}
}

// TestRESTProtoJSONForms: what other clients send is accepted: int64 as
// numbers or strings, enums as names or numbers, durations, snake_case
// names and parameters, alt/$alt.
func TestRESTProtoJSONForms(t *testing.T) {
	f := newFixture(t, false)
	jobs := f.httpURL + "/v1/" + parent + "/jobs"
	body := `{"priority":"10","task_groups":[{"task_count":4,"parallelism":"2","taskSpec":{"maxRunDuration":"3600s",
		"runnables":[{"script":{"text":"true"},"timeout":"60.5s"}],"compute_resource":{"cpuMilli":"500","memoryMib":256}}}],
		"logsPolicy":{"destination":2,"logsPath":"/tmp/x"}}`
	code, b := do(t, "POST", jobs+"?job_id=forms&request_id=r1&$alt=json;enum-encoding=int", strings.NewReader(body))
	if code != 200 {
		t.Fatalf("create: %d %s", code, b)
	}
	var got map[string]any
	json.Unmarshal(b, &got)
	st := got["status"].(map[string]any)
	if st["state"] != float64(1) {
		t.Errorf("with enum-encoding=int the state is %v, want 1", st["state"])
	}
	g := got["taskGroups"].([]any)[0].(map[string]any)
	if g["taskCount"] != "4" || g["parallelism"] != "2" || got["priority"] != "10" {
		t.Errorf("int64 fields are not strings: %s", b)
	}
	if d := g["taskSpec"].(map[string]any)["maxRunDuration"]; d != "3600s" {
		t.Errorf("maxRunDuration %v", d)
	}
	code, b = do(t, "GET", jobs+"/forms?alt=json&prettyPrint=false", nil)
	if code != 200 || !bytes.Contains(b, []byte(`"state":"QUEUED"`)) || !bytes.Contains(b, []byte(`"destination":"PATH"`)) {
		t.Errorf("get: %d %s", code, b)
	}
	code, b = do(t, "GET", jobs+"?filter="+strings.ReplaceAll(`status.state="QUEUED"`, `"`, "%22")+"&order_by=create_time%20desc&page_size=1", nil)
	if code != 200 || !bytes.Contains(b, []byte(`"name":"projects/test-project/locations/us-central1/jobs/forms"`)) {
		t.Errorf("list: %d %s", code, b)
	}
	code, b = do(t, "GET", f.httpURL+"/v1/projects/test-project/locations", nil)
	if code != 200 || !bytes.Contains(b, []byte(`"locationId":"local"`)) {
		t.Errorf("locations: %d %s", code, b)
	}
	// Delete: the operation, then the job is gone.
	code, b = do(t, "DELETE", jobs+"/forms", nil)
	if code != 200 || !bytes.Contains(b, []byte(`"name":"projects/test-project/locations/us-central1/operations/operation-`)) {
		t.Fatalf("delete: %d %s", code, b)
	}
	var op struct{ Name string }
	json.Unmarshal(b, &op)
	code, b = do(t, "GET", f.httpURL+"/v1/"+op.Name, nil)
	if code != 200 || !bytes.Contains(b, []byte(`"done":true`)) || !bytes.Contains(b, []byte(`"verb":"delete"`)) || !bytes.Contains(b, []byte(`google.protobuf.Empty`)) {
		t.Errorf("operation: %d %s", code, b)
	}
	if code, _ := do(t, "GET", jobs+"/forms", nil); code != 404 {
		t.Errorf("deleted job: %d", code)
	}
}
