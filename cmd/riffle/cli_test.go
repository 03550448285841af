package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestServePortTaken: `riffle serve` on a taken address fails, names the
// address and the flag, and creates no data directory.
func TestServePortTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := filepath.Join(t.TempDir(), "data")
	out, err := runRiffle(context.Background(), "serve", "--data-dir", dir, "--listen", taken.Addr().String())
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("serve on a taken port: err = %v (output %q), want the address and --listen named", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("data dir %s created by a serve that could not listen (stat: %v)", dir, err)
	}
}

// TestUnknownSubcommand: a mistyped command exits non-zero with "unknown
// command" at every level, and a group given no command still shows help.
func TestUnknownSubcommand(t *testing.T) {
	for _, args := range [][]string{
		{"image", "remove", "foo"}, // "image rm" exists since issue 9 item 16
		{"batch", "job", "list"},
		{"batch", "jobs", "lst"},
		{"frobnicate"},
	} {
		out, err := runRiffle(context.Background(), args...)
		if err == nil || !strings.Contains(err.Error(), "unknown command") {
			t.Errorf("riffle %s: err = %v (output %q), want an unknown command error", strings.Join(args, " "), err, out)
		}
	}
	out, err := runRiffle(context.Background(), "batch", "jobs", "lst")
	if err == nil || !strings.Contains(err.Error(), "list") {
		t.Errorf("riffle batch jobs lst: err = %v, want a suggestion of list", err)
	}
	out, err = runRiffle(context.Background(), "batch")
	if err != nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("riffle batch: err = %v, output %q; want help", err, out)
	}
}

// TestBatchListLocationAll: --location all lists the jobs of every
// location, as its help says.
func TestBatchListLocationAll(t *testing.T) {
	f := newBatchFixture(t)
	f.ok(t, "", "jobs", "submit", "job-a", "--location", "us-central1", "--script-text", "true")
	f.ok(t, "", "jobs", "submit", "job-b", "--location", "local", "--script-text", "true")
	for _, loc := range []string{"all", "-"} {
		out := f.ok(t, "", "jobs", "list", "--location", loc, "--format", "value(name)")
		if got := strings.Fields(out); len(got) != 2 {
			t.Errorf("jobs list --location %s: %q, want both jobs", loc, out)
		}
	}
}

// TestReferenceWithoutHostIsDockerHub: one rule for references without a
// registry host, in the parser behind riffle image, pull, mount and a job's
// imageUri: Docker Hub, as docker and Google Batch read them.
func TestReferenceWithoutHostIsDockerHub(t *testing.T) {
	c := (&imageFlags{}).client()
	for ref, want := range map[string]string{
		"busybox":                   "index.docker.io/library/busybox:latest",
		"my-project/repo/app:v1":    "index.docker.io/my-project/repo/app:v1",
		"127.0.0.1:8080/p/r/app:v1": "127.0.0.1:8080/p/r/app:v1",
		"localhost/p/app:v1":        "localhost/p/app:v1",
	} {
		r, err := c.ParseReference(ref)
		if err != nil || r.Name() != want {
			t.Errorf("ParseReference(%q) = %v, %v; want %s", ref, r, err, want)
		}
		if q, _ := (&imageFlags{}).qualify(ref); q != ref {
			t.Errorf("riffle image reads %q as %q; want it as written (%s)", ref, q, want)
		}
	}
}

// TestBatchFormatValueFields: --format value(...) takes any field path, as
// gcloud does, in camelCase or snake_case, several separated by commas.
func TestBatchFormatValueFields(t *testing.T) {
	f := newBatchFixture(t)
	f.ok(t, "", "jobs", "submit", "job-v", "--location", "us-central1", "--script-text", "true")
	out := f.ok(t, "", "jobs", "describe", "job-v", "--location", "us-central1", "--format", "value(status.state)")
	if out != "QUEUED\n" {
		t.Errorf("value(status.state) = %q, want QUEUED", out)
	}
	out = f.ok(t, "", "jobs", "list", "--format", "value(name, task_groups[0].taskCount, labels.missing)")
	if out != "projects/default/locations/us-central1/jobs/job-v\t1\t\n" {
		t.Errorf("value(name, task_groups[0].taskCount, labels.missing) = %q", out)
	}
	if msg := f.fail(t, "", "jobs", "list", "--format", "csv"); !strings.Contains(msg, "value(FIELD") {
		t.Errorf("--format csv: %s, want the formats named", msg)
	}
}

// TestServeLogDurations: durations in JSON logs read as durations.
func TestServeLogDurations(t *testing.T) {
	var b strings.Builder
	newLogger(server.LogConfig{Format: "json"}, &b).Info("shutting down", "grace", 30*time.Second)
	if !strings.Contains(b.String(), `"grace":"30s"`) {
		t.Errorf("JSON log %s, want \"grace\":\"30s\"", b.String())
	}
}

// TestSubmitUnfilledPlaceholder: a refused config holding ${VAR}s says they
// look like unfilled placeholders (BATCH_* ones expand at run time).
func TestSubmitUnfilledPlaceholder(t *testing.T) {
	f := newBatchFixture(t)
	cfg := writeFile(t, "job.yaml", "taskGroups:\n- taskCount: ${TASK_COUNT}\n  taskSpec:\n    runnables:\n    - script:\n        text: echo $BATCH_TASK_INDEX ${BATCH_TASK_INDEX}\n")
	msg := f.fail(t, "", "jobs", "submit", "ph", "--config", cfg)
	if !strings.Contains(msg, "${TASK_COUNT}") || !strings.Contains(msg, "unfilled placeholder") || strings.Contains(msg, "${BATCH_TASK_INDEX}") {
		t.Errorf("error %q, want ${TASK_COUNT} named as an unfilled placeholder (and not ${BATCH_TASK_INDEX})", msg)
	}
}

// TestVersionShowsCommit: riffle version names the commit stamped with
// -ldflags, and says how to stamp it when it was not.
func TestVersionShowsCommit(t *testing.T) {
	old := commit
	defer func() { commit = old }()
	commit = "1a2b3c4"
	out, err := runRiffle(context.Background(), "version")
	if err != nil || !strings.Contains(out, "commit 1a2b3c4") {
		t.Errorf("version = %q, %v; want the commit", out, err)
	}
	commit = ""
	if v := versionString(); !strings.Contains(v, "commit ") || (strings.Contains(v, "unknown") && !strings.Contains(v, "main.commit")) {
		t.Errorf("version without a stamped commit = %q, want the stamp named", v)
	}
}

// TestUnmountNotRiffle: unmount of a directory that is no mount, or not a
// Riffle one, says so instead of "invalid argument", and leaves it alone.
func TestUnmountNotRiffle(t *testing.T) {
	dir := t.TempDir()
	_, err := runRiffle(context.Background(), "unmount", dir)
	if err == nil || !strings.Contains(err.Error(), "not a mount point") {
		t.Errorf("unmount of a plain directory: %v, want \"not a mount point\"", err)
	}
	testutil.RequiresRoot(t)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(dir, 0)
	_, err = runRiffle(context.Background(), "unmount", dir)
	if err == nil || !strings.Contains(err.Error(), "tmpfs mount, not one made by riffle mount") {
		t.Errorf("unmount of a tmpfs: %v, want it named", err)
	}
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Errorf("the tmpfs is gone after a refused unmount: %v", err)
	}
}

// TestPullRefusesNonEmptyDir: pull IMAGE DIR into a directory holding files
// fails and names it, before fetching anything.
func TestPullRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := runRiffle(context.Background(), "pull", "127.0.0.1:1/p/r/i:v1", dir)
	if err == nil || !strings.Contains(err.Error(), "is not empty") {
		t.Errorf("pull into a non-empty dir: %v, want it refused", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "keep")); err != nil || string(b) != "x" {
		t.Errorf("the directory's file was touched: %q, %v", b, err)
	}
}
