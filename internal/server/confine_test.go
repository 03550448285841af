package server_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/api/option"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestScriptIsConfined: an editor's script runnable cannot write to the
// host outside its work directory, cannot see host processes, cannot read
// the server's data directory (tokens) and has no capabilities; its work
// directory and /tmp stay writable. The test tries each and checks the
// host afterwards.
func TestScriptIsConfined(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	ctx, srv, addr := startServer(t, "")
	admin := adminToken(t, srv)
	editor := createToken(t, addr, admin, "ed", auth.Binding{Project: "p", Role: auth.RoleEditor})
	c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(editor))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	hostDir := t.TempDir() // on the host, outside the work directory
	marker := fmt.Sprintf("/riffle-confine-test-%d", os.Getpid())
	tokenFile := auth.AdminTokenPath(srv.Config().DataDir)
	script := fmt.Sprintf(`
touch %[1]s 2>/dev/null && echo WROTE-ROOT
touch %[2]s/escaped 2>/dev/null && echo WROTE-HOSTDIR
mkdir /etc/riffle-escape 2>/dev/null && echo WROTE-ETC
test -e /proc/%[3]d && echo SEES-HOST-PID
cat %[4]s 2>/dev/null && echo READ-TOKEN
echo "pid=$$"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "caps=$(grep CapEff /proc/self/status | tr -d '\t')"
echo "nnp=$(grep NoNewPrivs /proc/self/status | tr -d '\t')"
echo work > ./in-work && echo WORK-OK
echo tmp > /tmp/in-tmp && echo TMP-OK
`, marker, hostDir, os.Getpid(), tokenFile)
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{
		Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{
			Command: &batchpb.Runnable_Script_Text{Text: script}}}}},
	}}}}
	created, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "confined", Job: job})
	if err != nil {
		t.Fatal(err)
	}
	var got *batchpb.Job
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got, err = c.GetJob(ctx, &batchpb.GetJobRequest{Name: created.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if st := got.GetStatus().GetState(); st == batchpb.JobStatus_SUCCEEDED || st == batchpb.JobStatus_FAILED {
			break
		}
	}
	resp := get(t, "http://"+addr+"/riffle/v1/logs/"+created.GetName(), editor)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := string(raw)
	if got.GetStatus().GetState() != batchpb.JobStatus_SUCCEEDED {
		t.Fatalf("job %v; events %v; logs:\n%s", got.GetStatus().GetState(), got.GetStatus().GetStatusEvents(), out)
	}
	for _, bad := range []string{"WROTE-ROOT", "WROTE-HOSTDIR", "WROTE-ETC", "SEES-HOST-PID", "READ-TOKEN", "rfl_"} {
		if strings.Contains(out, bad) {
			t.Errorf("the script escaped: %s\n%s", bad, out)
		}
	}
	for _, want := range []string{"caps=CapEff:0000000000000000", "nnp=NoNewPrivs:1", "WORK-OK", "TMP-OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
	// The init shell, the script's shell, the $(...) subshell, ls and
	// grep: nothing of the host.
	var procs, pid int
	if i := strings.Index(out, "pid="); i < 0 {
		t.Errorf("no pid:\n%s", out)
	} else if fmt.Sscanf(out[i:], "pid=%d", &pid); pid < 1 || pid > 50 {
		t.Errorf("the script's pid %d is not one of a fresh pid namespace:\n%s", pid, out)
	}
	if i := strings.Index(out, "procs="); i < 0 {
		t.Errorf("no process count:\n%s", out)
	} else if fmt.Sscanf(out[i:], "procs=%d", &procs); procs < 1 || procs > 6 {
		t.Errorf("the script sees %d processes, more than its own:\n%s", procs, out)
	}
	// And on the host:
	for _, p := range []string{marker, filepath.Join(hostDir, "escaped"), "/etc/riffle-escape"} {
		if _, err := os.Lstat(p); err == nil {
			os.RemoveAll(p)
			t.Errorf("%s was created on the host", p)
		}
	}
	if _, err := os.Stat("/tmp/in-tmp"); err == nil {
		t.Errorf("/tmp/in-tmp reached the host's /tmp")
	}
}

// TestConfinedScriptCancel: cancelling a job stops its confined script
// (runc forwards SIGTERM; what ignores it is removed with the container)
// and leaves no runc container behind.
func TestConfinedScriptCancel(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	ctx, srv, addr := startServer(t, "")
	c, err := batch.NewRESTClient(ctx, option.WithEndpoint("http://"+addr), withToken(adminToken(t, srv)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{
		Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Script_{Script: &batchpb.Runnable_Script{
			Command: &batchpb.Runnable_Script_Text{Text: "echo started; sleep 300"}}}}},
	}}}}
	created, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "sleeper", Job: job})
	if err != nil {
		t.Fatal(err)
	}
	runcRoot := filepath.Join(srv.Config().DataDir, "runtime", "runc")
	waitFor(t, func() bool {
		entries, _ := os.ReadDir(runcRoot)
		return len(entries) > 0
	})
	start := time.Now()
	op, err := c.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: created.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 40*time.Second {
		t.Errorf("delete took %v", d)
	}
	waitFor(t, func() bool {
		entries, _ := os.ReadDir(runcRoot)
		return len(entries) == 0
	})
}
