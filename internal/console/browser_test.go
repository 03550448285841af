package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/testutil"

	"github.com/google/go-containerregistry/pkg/authn"
)

// screenshotEnv names a directory: when set, TestConsoleInBrowser writes
// job.png (the job page), arrival.png (the image-arrival chart), images.png
// and node.png there. See docs/console.md.
const screenshotEnv = "RIFFLE_CONSOLE_SCREENSHOTS"

// TestConsoleInBrowser drives the console in Debian's headless chromium
// against a real riffle serve: an editor logs in, is refused with the
// server's field errors, submits a streamed busybox job from YAML, watches
// it succeed, reads each task's logs and sees one chart point per task of
// the image; the images and node pages show the registry and /metrics; a
// viewer sees no submit, cancel or delete; nothing of another project is
// ever shown.
func TestConsoleInBrowser(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	testutil.RequiresBinary(t, "fusermount3")
	chromium := testutil.RequiresBinary(t, "chromium")

	srv, addr := startServer(t)
	admin, err := auth.ReadTokenFile(auth.AdminTokenPath(srv.Config().DataDir))
	if err != nil {
		t.Fatal(err)
	}
	image := addr + "/demo/images/busybox:v1"
	pushBusybox(t, admin, image)
	pushBusybox(t, admin, addr+"/secret/images/hidden:v1")
	editor := createToken(t, addr, admin, "console-editor", "demo", "editor")
	viewer := createToken(t, addr, admin, "console-viewer", "demo", "viewer")

	// A job of the same image ran before, so the chart spans two jobs;
	// and another project has a job nobody in demo may see.
	base := "http://" + addr + "/v1/projects/%s/locations/us-central1/jobs?jobId=%s"
	post(t, fmt.Sprintf(base, "demo", "earlier"), admin, containerJob(image, 1, "echo earlier"))
	post(t, fmt.Sprintf(base, "secret", "classified"), admin, containerJob(addr+"/secret/images/hidden:v1", 1, "echo classified"))
	waitSucceeded(t, "http://"+addr+"/v1/projects/demo/locations/us-central1/jobs/earlier", admin)
	// And one that pulled the image in full, for the chart's comparison.
	post(t, fmt.Sprintf(base, "demo", "pulled"), admin, strings.Replace(containerJob(image, 1, "echo pulled"), `"enableImageStreaming":true`, `"enableImageStreaming":false`, 1))
	waitSucceeded(t, "http://"+addr+"/v1/projects/demo/locations/us-central1/jobs/pulled", admin)

	ctx := browser(t, chromium)
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("%s: %v\npage:\n%s", what, err, body)
		}
	}
	waitJS := func(what, expr string, d time.Duration) {
		t.Helper()
		run(what, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(100*time.Millisecond))(ctx, tg)
			return err
		}))
	}
	login := func(tok string) {
		t.Helper()
		run("log in",
			chromedp.Navigate("http://"+addr+"/"),
			chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				_, err := chromedp.Evaluate[bool](`sessionStorage.clear(), true`)(ctx, tg)
				return err
			}),
			chromedp.Reload(),
			chromedp.WaitVisible(chromedp.CSS("#token")),
			chromedp.SendKeys(chromedp.CSS("#token"), tok),
			chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
		waitJS("jobs page after log in", `document.querySelector('#jobs table, #jobs p') !== null`, 20*time.Second)
	}

	login(editor)
	projects := eval[[]string](t, ctx, `[...document.querySelectorAll('#project option')].map(o => o.value)`)
	if len(projects) != 1 || projects[0] != "demo" {
		t.Errorf("an editor of demo is offered projects %v, want [demo]", projects)
	}

	// Refused: the server's own violations appear next to their fields.
	run("submit a bad job ID",
		chromedp.SetValue(chromedp.CSS("#job-id"), "Bad_Id"),
		chromedp.SetValue(chromedp.CSS("#job-spec"), `{"taskGroups":[{"taskSpec":{"runnables":[{"script":{"text":"true"}}]}}]}`),
		chromedp.Click(chromedp.CSS(`#submit button[type=submit]`)))
	waitJS("jobId field error", `document.querySelector('#err-jobId').textContent.includes('must start with a lowercase letter')`, 10*time.Second)
	run("submit an unknown field",
		chromedp.SetValue(chromedp.CSS("#job-id"), "refused"),
		chromedp.SetValue(chromedp.CSS("#job-spec"), "taskGroups:\n- taskSpec:\n    runnables:\n    - container:\n        image: busybox\n"),
		chromedp.Click(chromedp.CSS(`#submit button[type=submit]`)))
	waitJS("job field error", `(() => { const v = document.querySelector('#err-job .violation[data-field="job.taskGroups[0].taskSpec.runnables[0].container.image"]'); return v !== null && v.textContent.includes('did you mean "imageUri"'); })()`, 10*time.Second)

	// Accepted: a streamed job of two tasks, written in YAML.
	spec := "taskGroups:\n- taskCount: 2\n  parallelism: 2\n  taskSpec:\n    runnables:\n    - container:\n        imageUri: " + image +
		"\n        enableImageStreaming: true\n        commands:\n        - sh\n        - -c\n        - |\n          echo hello from task $BATCH_TASK_INDEX\n" +
		"labels:\n  team: console\n"
	run("submit the job",
		chromedp.SetValue(chromedp.CSS("#job-id"), "hello"),
		chromedp.SetValue(chromedp.CSS("#job-spec"), spec),
		chromedp.Click(chromedp.CSS(`#submit button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#submit-result a`)))
	run("filter by label", chromedp.SetValue(chromedp.CSS("#filter-label"), "team=console"), chromedp.Click(chromedp.CSS(`#filter button[type=submit]`)))
	waitJS("label filter", `document.querySelectorAll('#jobs tr[data-job]').length === 1 && document.querySelector('#jobs tr[data-job="hello"]') !== null`, 10*time.Second)

	run("open the job", chromedp.Click(chromedp.CSS(`#submit-result a`)))
	waitJS("job SUCCEEDED", `document.querySelector('#job-head .state-SUCCEEDED') !== null`, 60*time.Second)
	waitJS("two tasks, streamed or settled", `[...document.querySelectorAll('#task-table tr[data-task]')].filter(r => r.querySelector('.task-state').textContent === 'SUCCEEDED' && /streamed|settled/.test(r.querySelector('.method').textContent)).length === 2`, 10*time.Second)
	waitJS("task 0 logs", `(document.querySelector('#log-text[data-task="0"]') || {}).textContent.includes('hello from task 0')`, 10*time.Second)
	run("open task 1's logs", chromedp.Click(chromedp.CSS(`#task-table tr[data-task="1"] a.task-logs`)))
	waitJS("task 1 logs", `(document.querySelector('#log-text[data-task="1"]') || {}).textContent.includes('hello from task 1')`, 10*time.Second)
	waitJS("timeline", `document.querySelector('#events').textContent.includes('IMAGE_')`, 10*time.Second)
	// One point per task of the image's jobs: earlier's, pulled's and
	// hello's two, each with how its image arrived.
	waitJS("chart points", `[...document.querySelectorAll('#arrival-chart circle.pt')].map(c => c.dataset.job + '/' + c.dataset.task).join() === 'earlier/0,pulled/0,hello/0,hello/1'`, 20*time.Second)
	if m := eval[string](t, ctx, `document.querySelector('#arrival-chart circle.pt[data-job="pulled"]').dataset.method`); m != "pulled" {
		t.Errorf("the job without streaming is charted as %q, want pulled", m)
	}
	screenshots(t, ctx)
	checkArrivalAPI(t, addr, viewer)

	run("images page", chromedp.Navigate("http://"+addr+"/#/images"))
	waitJS("busybox in images", `document.querySelector('tr[data-image="demo/images/busybox:v1"] li.layer') !== null`, 20*time.Second)
	screenshot(t, ctx, "images.png")
	run("node page", chromedp.Navigate("http://"+addr+"/#/node"))
	waitJS("node metrics", `document.querySelector('tr[data-metric^="riffle_node_"]') !== null && document.querySelector('tr[data-metric^="riffle_cache_"]') !== null`, 20*time.Second)
	// Disk use names every project's images: an editor of demo is told so.
	waitJS("disk use refused", `document.querySelector('#df-denied') !== null && document.querySelector('#df') === null`, 10*time.Second)
	// Filter by state; cancel and delete a running job.
	post(t, fmt.Sprintf(base, "demo", "sleeper"), admin, containerJob(image, 1, "sleep 60"))
	run("jobs page", chromedp.Navigate("http://"+addr+"/#/jobs"))
	waitJS("sleeper listed", `document.querySelector('#jobs tr[data-job="sleeper"] button.cancel') !== null`, 10*time.Second)
	run("filter by state", chromedp.SetValue(chromedp.CSS("#filter-state"), "SUCCEEDED"), chromedp.Click(chromedp.CSS(`#filter button[type=submit]`)))
	waitJS("state filter", `[...document.querySelectorAll('#jobs tr[data-job]')].map(r => r.dataset.job).sort().join() === 'earlier,hello,pulled'`, 10*time.Second)
	run("no filter", chromedp.SetValue(chromedp.CSS("#filter-state"), ""), chromedp.Click(chromedp.CSS(`#filter button[type=submit]`)))
	waitJS("sleeper running", `/RUNNING/.test((document.querySelector('#jobs tr[data-job="sleeper"]') || {}).textContent)`, 30*time.Second)
	run("cancel", chromedp.Click(chromedp.CSS(`#jobs tr[data-job="sleeper"] button.cancel`)))
	waitJS("sleeper cancelled", `/CANCELLED/.test((document.querySelector('#jobs tr[data-job="sleeper"]') || {}).textContent)`, 30*time.Second)
	eval[bool](t, ctx, `window.confirm = () => true, true`)
	run("delete", chromedp.Click(chromedp.CSS(`#jobs tr[data-job="sleeper"] button.delete`)))
	waitJS("sleeper deleted", `document.querySelector('#jobs tr[data-job="sleeper"]') === null && document.querySelector('#jobs tr[data-job="hello"]') !== null`, 30*time.Second)
	noSecret(t, ctx, run, addr)

	// A viewer sees the same jobs and no way to act on them.
	login(viewer)
	waitJS("viewer's job list", `document.querySelector('#jobs tr[data-job="hello"]') !== null && document.querySelector('#read-only') !== null`, 10*time.Second)
	acts := eval[int](t, ctx, `document.querySelectorAll('#submit, button.cancel, button.delete').length`)
	if acts != 0 {
		t.Errorf("a viewer is shown %d submit/cancel/delete controls", acts)
	}
	run("viewer opens the job", chromedp.Navigate("http://"+addr+"/#/job/hello"))
	waitJS("viewer's job page", `document.querySelector('#job-head .state-SUCCEEDED') !== null && document.querySelector('#arrival-chart') !== null`, 20*time.Second)
	acts = eval[int](t, ctx, `document.querySelectorAll('#submit, button.cancel, button.delete').length`)
	if acts != 0 {
		t.Errorf("a viewer is shown %d cancel/delete controls on a job", acts)
	}
	noSecret(t, ctx, run, addr)

	// A token bound to every project sees the node's disk use and mounts.
	login(admin)
	run("admin's node page", chromedp.Navigate("http://"+addr+"/#/node"))
	waitJS("disk use", `document.querySelector('#df') !== null && document.querySelector('#mounts') !== null && document.querySelector('tr[data-metric^="riffle_node_"]') !== null`, 20*time.Second)
	screenshot(t, ctx, "node.png")

	// The console never asked for what its token has no role for: the one
	// refusal is checkArrivalAPI's own request.
	if n := refusals(t, addr, `reason="missing_role"`); n != 1 {
		t.Errorf("%d requests refused for a missing role, want 1 (the test's own)", n)
	}

	// The token lives in the tab's sessionStorage only, never in a URL.
	href := eval[string](t, ctx, `location.href`)
	cookie := eval[string](t, ctx, `document.cookie`)
	if strings.Contains(href, admin) || cookie != "" {
		t.Errorf("token outside sessionStorage: href %q, cookie %q", href, cookie)
	}
}

// noSecret visits every page and checks nothing of project secret shows,
// even when the tab asks for it.
func noSecret(t *testing.T, ctx context.Context, run func(string, ...chromedp.Action[chromedp.Void]), addr string) {
	t.Helper()
	// A tab that remembers project secret (as one left by another token
	// would) is still shown only the token's projects.
	eval[bool](t, ctx, `sessionStorage.setItem('riffle.project', 'secret'), true`)
	for _, h := range []string{"#/jobs", "#/job/classified", "#/images", "#/node"} {
		// Reload, so the page starts again from what the tab remembers.
		run("visit "+h, chromedp.Navigate("http://"+addr+"/"+h), chromedp.Reload(),
			chromedp.WaitReady(chromedp.CSS("#main > *")), chromedp.Sleep(500*time.Millisecond))
		text := eval[string](t, ctx, `document.body.innerText`)
		if p := eval[string](t, ctx, `document.querySelector('#project').value`); p != "demo" {
			t.Errorf("page %s is of project %q", h, p)
		}
		for _, bad := range []string{"echo classified", "hidden:v1", "secret/images", "/secret/"} {
			if strings.Contains(text, bad) {
				t.Errorf("page %s shows %q of a project the token has no role in:\n%s", h, bad, text)
			}
		}
	}
}

// screenshots writes the job page and the chart when screenshotEnv is set.
func screenshots(t *testing.T, ctx context.Context) {
	dir := os.Getenv(screenshotEnv)
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	page, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	chart, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS("#arrival")))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"job.png": page, "arrival.png": chart} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
}

// screenshot writes the whole page as name when screenshotEnv is set.
func screenshot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv(screenshotEnv)
	if dir == "" {
		return
	}
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// browser starts Debian's chromium headless with a fresh profile, with the
// flags that keep it from reaching the network on its own.
func browser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1400),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	// The first run starts the browser, which lives as long as ctx: no
	// timeout here; each wait has its own.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

func startServer(t *testing.T) (*server.Server, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return srv, ln.Addr().String()
}

func pushBusybox(t *testing.T, tok, ref string) {
	t.Helper()
	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	c := remote.New(remote.Options{Keychain: keychain(tok)})
	if err := c.Push(context.Background(), ref, img, nil); err != nil {
		t.Fatal(err)
	}
}

type keychain string

func (k keychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: "oauth2accesstoken", Password: string(k)}, nil
}

func containerJob(image string, tasks int, cmd string) string {
	b, _ := json.Marshal(map[string]any{"taskGroups": []any{map[string]any{
		"taskCount": tasks,
		"taskSpec": map[string]any{"runnables": []any{map[string]any{"container": map[string]any{
			"imageUri": image, "enableImageStreaming": true, "commands": []string{"sh", "-c", cmd},
		}}}},
	}}})
	return string(b)
}

// createToken makes a token with one role in one project.
func createToken(t *testing.T, addr, admin, name, project, role string) string {
	t.Helper()
	body := fmt.Sprintf(`{"name":%q,"bindings":[{"project":%q,"role":%q}]}`, name, project, role)
	var out struct {
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(post(t, "http://"+addr+"/riffle/v1/auth/tokens", admin, body), &out); err != nil || out.Secret == "" {
		t.Fatalf("token: %v", err)
	}
	return out.Secret
}

func post(t *testing.T, url, tok, body string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s %s", url, resp.Status, b)
	}
	return b
}

// checkArrivalAPI: GET /riffle/v1/arrival/JOB gives each task's arrival to
// a viewer of the job's project, and nothing to anyone else.
func checkArrivalAPI(t *testing.T, addr, viewer string) {
	t.Helper()
	base := "http://" + addr + "/riffle/v1/arrival/projects/%s/locations/us-central1/jobs/%s"
	get := func(url, tok string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, b := get(fmt.Sprintf(base, "demo", "hello"), viewer)
	var got struct {
		Tasks []struct {
			Task     string `json:"task"`
			Arrivals []struct {
				Method         string  `json:"method"`
				StartedSeconds float64 `json:"startedSeconds"`
			} `json:"arrivals"`
		} `json:"tasks"`
	}
	if err := json.Unmarshal(b, &got); err != nil || code != http.StatusOK || len(got.Tasks) != 2 {
		t.Fatalf("arrival of hello: %d %s (%v)", code, b, err)
	}
	for _, tk := range got.Tasks {
		if len(tk.Arrivals) != 1 || tk.Arrivals[0].Method == "" || tk.Arrivals[0].StartedSeconds <= 0 {
			t.Errorf("arrival of %s: %+v", tk.Task, tk.Arrivals)
		}
	}
	if code, b := get(fmt.Sprintf(base, "secret", "classified"), viewer); code != http.StatusForbidden || strings.Contains(string(b), "hidden") {
		t.Errorf("arrival of another project's job: %d %s, want 403", code, b)
	}
	if code, _ := get(fmt.Sprintf(base, "demo", "hello"), ""); code != http.StatusUnauthorized {
		t.Errorf("arrival without a token: %d, want 401", code)
	}
}

// refusals sums the series of riffle_auth_refused_total whose labels
// contain label, from /metrics (open on loopback).
func refusals(t *testing.T, addr, label string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "riffle_auth_refused_total{") || !strings.Contains(line, label) {
			continue
		}
		var n int
		fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &n)
		sum += n
	}
	return sum
}

// waitSucceeded polls a job until it succeeds (a minute at most).
func waitSucceeded(t *testing.T, url, tok string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var j struct {
			Status struct {
				State string `json:"state"`
			} `json:"status"`
		}
		err = json.NewDecoder(resp.Body).Decode(&j)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		last = j.Status.State
		if last == "SUCCEEDED" || last == "FAILED" {
			break
		}
	}
	if last != "SUCCEEDED" {
		t.Fatalf("%s ended %s", url, last)
	}
}
