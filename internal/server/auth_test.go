package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/server"
)

// outcome of one request: allowed, or refused as 401 or 403.
type outcome string

const (
	allowed outcome = "allowed"
	unauth  outcome = "401"
	denied  outcome = "403"
)

// caller is one identity of the role table.
type caller struct {
	name     string
	bindings []auth.Binding // nil: no valid token
	token    string
}

// role is the caller's role in project (or, with project "", anywhere).
func (c caller) role(project string) auth.Role {
	best := auth.RoleNone
	for _, b := range c.bindings {
		if project == "" || b.Project == project || b.Project == "*" {
			best = max(best, b.Role)
		}
	}
	return best
}

// authFixture is a real server with one token per row of the role table.
type authFixture struct {
	ctx     context.Context
	addr    string
	admin   string
	callers []caller
	digest  string // of the image p/r/base:v1
}

func newAuthFixture(t *testing.T) *authFixture {
	t.Helper()
	ctx, srv, addr := startServerWith(t, server.Config{Auth: server.AuthConfig{Metrics: server.MetricsToken}})
	f := &authFixture{ctx: ctx, addr: addr, admin: adminToken(t, srv)}
	mk := func(name string, bs ...auth.Binding) caller {
		var out struct {
			Secret string `json:"secret"`
		}
		f.adminCall(t, http.MethodPost, "/riffle/v1/auth/tokens", map[string]any{"name": name, "bindings": bs}, &out)
		return caller{name: name, bindings: bs, token: out.Secret}
	}
	revoked := mk("revoked-editor", auth.Binding{Project: "p", Role: auth.RoleEditor})
	f.adminCall(t, http.MethodDelete, "/riffle/v1/auth/tokens/revoked-editor", nil, &auth.Token{})
	revoked.bindings = nil
	f.callers = []caller{
		{name: "no-token"},
		{name: "bad-token", token: auth.NewSecret()},
		revoked,
		mk("viewer-p", auth.Binding{Project: "p", Role: auth.RoleViewer}),
		mk("editor-p", auth.Binding{Project: "p", Role: auth.RoleEditor}),
		mk("admin-p", auth.Binding{Project: "p", Role: auth.RoleAdmin}),
		mk("editor-other", auth.Binding{Project: "other", Role: auth.RoleEditor}),
		{name: "local-admin", token: f.admin, bindings: []auth.Binding{{Project: "*", Role: auth.RoleAdmin}}},
	}

	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := registryClient(f.admin).Push(ctx, addr+"/p/r/base:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.callers {
		if err := registryClient(f.admin).Push(ctx, addr+"/p/r/del-"+c.name+":v1", img, nil); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := img.Digest()
	f.digest = d.String()
	return f
}

func (f *authFixture) adminCall(t *testing.T, method, path string, body, out any) {
	t.Helper()
	resp := f.do(t, method, path, f.admin, body)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatal(err)
	}
}

func (f *authFixture) do(t *testing.T, method, path, tok string, body any) *http.Response {
	t.Helper()
	return request(t, f.ctx, method, "http://"+f.addr+path, tok, body)
}

// httpOutcome classifies a response; a 5xx fails the test.
func httpOutcome(t *testing.T, resp *http.Response, wantMsg string) (outcome, string) {
	t.Helper()
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode >= 500:
		t.Errorf("status %s: %s", resp.Status, raw)
	case resp.StatusCode == http.StatusUnauthorized:
		return unauth, string(raw)
	case resp.StatusCode == http.StatusForbidden:
		return denied, string(raw)
	}
	return allowed, string(raw)
}

func grpcOutcome(t *testing.T, err error) (outcome, string) {
	t.Helper()
	switch status.Code(err) {
	case codes.Unauthenticated:
		return unauth, err.Error()
	case codes.PermissionDenied:
		return denied, err.Error()
	case codes.Internal, codes.Unknown, codes.Unavailable:
		t.Errorf("gRPC error: %v", err)
	}
	return allowed, ""
}

// op is one request of an endpoint family and the role it needs.
type op struct {
	family, name string
	project      string // the project the role is needed in; "" anywhere
	need         auth.Role
	do           func(t *testing.T, f *authFixture, c caller) (outcome, string)
}

func httpOp(family, name, project string, need auth.Role, method, path string, body func(c caller) any) op {
	return op{family: family, name: name, project: project, need: need, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
		var b any
		if body != nil {
			b = body(c)
		}
		return httpOutcome(t, f.do(t, method, strings.ReplaceAll(path, "CALLER", c.name), c.token, b), "")
	}}
}

func scriptJob() *batchpb.Job {
	return &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{
		Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{
			Command: &batchpb.Runnable_Script_Text{Text: "true"}}}}},
	}}}}
}

func authOps(f *authFixture) []op {
	const parent = "projects/p/locations/us-central1"
	jobBody := func(c caller) any {
		return map[string]any{"taskGroups": []any{map[string]any{"taskSpec": map[string]any{"runnables": []any{map[string]any{"script": map[string]any{"text": "true"}}}}}}}
	}
	grpcClient := func(t *testing.T, f *authFixture, c caller) *batch.Client {
		opts := []option.ClientOption{option.WithEndpoint(f.addr), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials()))}
		if c.token != "" {
			opts = append(opts, withPlainBearer(c.token))
		}
		g, err := batch.NewClient(f.ctx, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		return g
	}
	return []op{
		httpOp("batch-rest", "list jobs", "p", auth.RoleViewer, "GET", "/v1/"+parent+"/jobs", nil),
		httpOp("batch-rest", "get job", "p", auth.RoleViewer, "GET", "/v1/"+parent+"/jobs/nope", nil),
		httpOp("batch-rest", "create job", "p", auth.RoleEditor, "POST", "/v1/"+parent+"/jobs?job_id=rest-CALLER", jobBody),
		httpOp("batch-rest", "delete job", "p", auth.RoleEditor, "DELETE", "/v1/"+parent+"/jobs/rest-CALLER", nil),
		httpOp("batch-rest", "list locations", "p", auth.RoleViewer, "GET", "/v1/projects/p/locations", nil),
		{family: "batch-grpc", name: "list jobs", project: "p", need: auth.RoleViewer, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			_, err := grpcClient(t, f, c).ListJobs(f.ctx, &batchpb.ListJobsRequest{Parent: parent}).Next()
			if err != nil && err.Error() == "no more items in iterator" {
				err = nil
			}
			return grpcOutcome(t, err)
		}},
		{family: "batch-grpc", name: "create job", project: "p", need: auth.RoleEditor, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			_, err := grpcClient(t, f, c).CreateJob(f.ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: "grpc-" + c.name, Job: scriptJob()})
			return grpcOutcome(t, err)
		}},
		{family: "batch-grpc", name: "delete job", project: "p", need: auth.RoleEditor, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			_, err := grpcClient(t, f, c).DeleteJob(f.ctx, &batchpb.DeleteJobRequest{Name: parent + "/jobs/grpc-" + c.name})
			return grpcOutcome(t, err)
		}},
		{family: "registry", name: "pull", project: "p", need: auth.RoleViewer, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			_, err := registryClient(c.token).Resolve(f.ctx, f.addr+"/p/r/base:v1", nil)
			return registryOutcome(t, err)
		}},
		{family: "registry", name: "push", project: "p", need: auth.RoleEditor, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "who", Data: []byte(c.name)}}}}})
			if err != nil {
				t.Fatal(err)
			}
			return registryOutcome(t, registryClient(c.token).Push(f.ctx, f.addr+"/p/r/pushed-"+c.name+":v1", img, nil))
		}},
		{family: "registry", name: "delete", project: "p", need: auth.RoleEditor, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			return registryHTTP(t, f, c, "DELETE", "/v2/p/r/del-"+c.name+"/manifests/"+f.digest)
		}},
		{family: "registry", name: "ping", project: "", need: auth.RoleViewer, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			return registryHTTP(t, f, c, "GET", "/v2/")
		}},
		{family: "registry", name: "catalog", project: "*", need: auth.RoleViewer, do: func(t *testing.T, f *authFixture, c caller) (outcome, string) {
			return registryHTTP(t, f, c, "GET", "/v2/_catalog")
		}},
		httpOp("logs", "read", "p", auth.RoleViewer, "GET", "/riffle/v1/logs/"+parent+"/jobs/nope", nil),
		// Whole indexes and windows are layer data: every project's
		// images, or viewer in the project of a repository of this
		// server named by ?repository= (another registry proves nothing).
		httpOp("index", "layer index", "*", auth.RoleViewer, "GET", "/index/v1/layers/sha256:"+strings.Repeat("0", 64), nil),
		httpOp("index", "layer index in repository", "p", auth.RoleViewer, "GET", "/index/v1/layers/sha256:"+strings.Repeat("0", 64)+"?repository="+f.addr+"/p/r/base", nil),
		httpOp("index", "layer index detached", "", auth.RoleViewer, "GET", "/index/v1/layers/sha256:"+strings.Repeat("0", 64)+"?windows=detached", nil),
		httpOp("index", "span window", "*", auth.RoleViewer, "GET", "/index/v1/layers/sha256:"+strings.Repeat("0", 64)+"/windows/1", nil),
		httpOp("index", "span window in repository", "p", auth.RoleViewer, "GET", "/index/v1/layers/sha256:"+strings.Repeat("0", 64)+"/windows/1?repository="+f.addr+"/p/r/base", nil),
		httpOp("index", "span window in another registry", "*", auth.RoleViewer, "GET", "/index/v1/layers/sha256:"+strings.Repeat("0", 64)+"/windows/1?repository=127.0.0.1:1/p/r/base", nil),
		httpOp("index", "index image", "p", auth.RoleEditor, "POST", "/index/v1/images", func(caller) any { return map[string]any{"image": f.addr + "/p/r/base:v1"} }),
		httpOp("index", "report profile", "p", auth.RoleEditor, "POST", "/index/v1/profiles/sha256:"+strings.Repeat("0", 64), func(caller) any {
			return map[string]any{"spans": []int{0}, "repository": f.addr + "/p/r/base"}
		}),
		httpOp("index", "read pack", "*", auth.RoleViewer, "GET", "/index/v1/packs/sha256:"+strings.Repeat("0", 64), nil),
		httpOp("metrics", "scrape", "*", auth.RoleViewer, "GET", "/metrics", nil),
		httpOp("tokens", "list", "*", auth.RoleAdmin, "GET", "/riffle/v1/auth/tokens", nil),
		httpOp("tokens", "create", "*", auth.RoleAdmin, "POST", "/riffle/v1/auth/tokens", func(c caller) any {
			return map[string]any{"name": "made-by-" + c.name, "bindings": []any{map[string]any{"project": "p", "role": "viewer"}}}
		}),
	}
}

// registryHTTP makes a registry request logging in as docker does: Basic
// auth with the token as password.
func registryHTTP(t *testing.T, f *authFixture, c caller, method, path string) (outcome, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(f.ctx, method, "http://"+f.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.token != "" {
		req.SetBasicAuth("oauth2accesstoken", c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusUnauthorized && !strings.Contains(resp.Header.Get("WWW-Authenticate"), `Basic realm=`) {
		t.Errorf("%s %s: 401 without a Basic challenge: %q", method, path, resp.Header.Get("WWW-Authenticate"))
	}
	return httpOutcome(t, resp, "")
}

func registryOutcome(t *testing.T, err error) (outcome, string) {
	t.Helper()
	switch {
	case err == nil:
		return allowed, ""
	case errors.Is(err, remote.ErrUnauthorized):
		return unauth, err.Error()
	case errors.Is(err, remote.ErrDenied):
		return denied, err.Error()
	}
	t.Errorf("registry: %v", err)
	return allowed, ""
}

// TestAccessControlTable: every endpoint family, every role and no, bad
// and revoked tokens, allowed and refused exactly per the role table, with
// a message that names the missing role, and counted in /metrics.
func TestAccessControlTable(t *testing.T) {
	f := newAuthFixture(t)
	for _, o := range authOps(f) {
		for _, c := range f.callers {
			t.Run(o.family+"/"+o.name+"/"+c.name, func(t *testing.T) {
				want := allowed
				switch {
				case c.bindings == nil:
					want = unauth
				case c.role(o.project) < o.need:
					want = denied
				}
				got, msg := o.do(t, f, c)
				if got != want {
					t.Fatalf("got %s, want %s (needs %s in %q); %s", got, want, o.need, o.project, msg)
				}
				switch {
				case strings.Contains(msg, "HEAD responses have no body"):
					// The registry client's HEAD probe was refused; HEAD
					// answers carry no message.
				case got == denied && !strings.Contains(msg, "needs "+o.need.String()):
					t.Errorf("refusal does not name the missing role %s: %s", o.need, msg)
				case got == unauth && c.name == "revoked-editor" && !strings.Contains(msg, "revoked") && o.family != "registry":
					t.Errorf("refusal of a revoked token does not say so: %s", msg)
				}
			})
		}
	}
	resp := get(t, "http://"+f.addr+"/metrics", f.admin)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`riffle_auth_refused_total{api="registry",reason="no_token"}`,
		`riffle_auth_refused_total{api="batch",reason="revoked_token"}`,
		`riffle_auth_refused_total{api="batch",reason="missing_role"}`,
	} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestDefaultOpenEndpoints: /healthz is open, /metrics is open from
// loopback by default, and everything else asks for a token.
func TestDefaultOpenEndpoints(t *testing.T) {
	_, _, addr := startServer(t, "")
	for _, c := range []struct {
		path string
		code int
	}{
		{"/healthz", http.StatusOK},
		{"/metrics", http.StatusOK},
		{"/v2/", http.StatusUnauthorized},
		{"/v1/projects/p/locations/us-central1/jobs", http.StatusUnauthorized},
		{"/index/v1/layers/sha256:" + strings.Repeat("0", 64), http.StatusUnauthorized},
		{"/index/v1/layers/sha256:" + strings.Repeat("0", 64) + "/windows/1", http.StatusUnauthorized},
		{"/riffle/v1/auth/tokens", http.StatusUnauthorized},
		// A path that would be classified under one project and routed
		// to another is refused before any token is looked at.
		{"/v2/p/../q/r/img/manifests/v1", http.StatusForbidden},
		{"/v2/p%2Fr/img/manifests/v1", http.StatusForbidden},
	} {
		resp := get(t, "http://"+addr+c.path, "")
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("GET %s without a token: %s, want %d", c.path, resp.Status, c.code)
		}
	}
}

// TestHostScriptsLabelOnlyForAdmins: the label that lets scripts run on
// the host is set by the server for admins when the config allows it, and
// removed from anyone else's job.
func TestHostScriptsLabelOnlyForAdmins(t *testing.T) {
	ctx, srv, addr := startServerWith(t, server.Config{Scripts: server.ScriptsConfig{UnconfinedForAdmin: true}})
	admin := adminToken(t, srv)
	editor := createToken(t, addr, admin, "ed", auth.Binding{Project: "p", Role: auth.RoleEditor})
	for _, tc := range []struct {
		tok, id string
		want    bool
	}{{editor, "by-editor", false}, {admin, "by-admin", true}} {
		c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(tc.tok))
		if err != nil {
			t.Fatal(err)
		}
		j := scriptJob()
		j.Labels = map[string]string{"riffle-host-scripts": "true"}
		got, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: tc.id, Job: j})
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if has := got.GetLabels()["riffle-host-scripts"] == "true"; has != tc.want {
			t.Errorf("%s: host-scripts label %v, want %v", tc.id, has, tc.want)
		}
	}
}

// lockedBuffer is a log sink safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

// TestAuditLog: allowed mutating calls and refused calls are logged with
// identity, project, method and resource; reads that are allowed are not.
func TestAuditLog(t *testing.T) {
	var buf lockedBuffer
	ctx, srv, addr := startServerLog(t, server.Config{}, slog.New(slog.NewJSONHandler(&buf, nil)))
	editor := createToken(t, addr, adminToken(t, srv), "auditee", auth.Binding{Project: "p", Role: auth.RoleEditor})
	c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(editor))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "audited", Job: scriptJob()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: "projects/p/locations/us-central1/jobs/audited"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: "projects/q/locations/us-central1/jobs/x"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delete in q: %v", err)
	}
	resp := get(t, "http://"+addr+"/v2/p/r/img/manifests/v1", "")
	resp.Body.Close()

	want := []map[string]any{
		{"outcome": "allowed", "identity": "local admin", "project": "*", "method": "POST", "resource": "/riffle/v1/auth/tokens"},
		{"outcome": "token created", "identity": "local admin", "name": "auditee"},
		{"outcome": "allowed", "identity": "auditee", "project": "p", "method": "POST", "resource": "/v1/projects/p/locations/us-central1/jobs"},
		{"outcome": "refused", "identity": "auditee", "project": "q", "method": "DELETE", "resource": "/v1/projects/q/locations/us-central1/jobs/x"},
		{"outcome": "refused", "identity": "anonymous", "project": "p", "method": "GET", "resource": "/v2/p/r/img/manifests/v1"},
	}
	got := buf.lines()
	if len(got) != len(want) {
		t.Fatalf("%d audit records, want %d (the GET is not audited): %v", len(got), len(want), got)
	}
	for i, w := range want {
		for k, v := range w {
			if s, _ := got[i][k].(string); !strings.HasPrefix(s, v.(string)) {
				t.Errorf("record %d: %s = %q, want %q...; %v", i, k, s, v, got[i])
			}
		}
	}
}
