package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestMain lets tests run this test binary as the riffle command: with
// RIFFLE_TEST_MAIN=1 it is `riffle` and its arguments.
func TestMain(m *testing.M) {
	if os.Getenv("RIFFLE_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startServe runs `riffle serve` on dataDir as a child process and returns
// it with its address.
func startServe(t *testing.T, dataDir, listen string, extra ...string) (*exec.Cmd, string) {
	t.Helper()
	os.Remove(server.AddrFile(dataDir))
	cmd := exec.Command(os.Args[0], append([]string{"serve", "--data-dir", dataDir, "--listen", listen, "--log-level", "debug"}, extra...)...)
	cmd.Env = append(os.Environ(), "RIFFLE_TEST_MAIN=1")
	logf, err := os.OpenFile(filepath.Join(dataDir, "..", "serve.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	for range 300 {
		if addr, err := server.ReadAddr(dataDir); err == nil && addr != "" {
			return cmd, addr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("riffle serve did not start; log in %s", logf.Name())
	return nil, ""
}

// TestServeSurvivesKill9: `riffle serve` killed with SIGKILL while a
// streamed container task runs finds its jobs after a restart, retries the
// task, and leaks no runc container and no mount.
func TestServeSurvivesKill9(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	testutil.RequiresBinary(t, "fusermount3")
	ctx := context.Background()
	top := t.TempDir()
	dataDir := filepath.Join(top, "data")
	os.MkdirAll(dataDir, 0o700)

	// Both runs listen on one address, as a restarted server does: images
	// in its registry are named by it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	// The task's volume is a host directory: allowed by the config.
	cfgFile := filepath.Join(top, "riffle.yaml")
	if err := os.WriteFile(cfgFile, []byte("hostPaths: ["+top+"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, addr := startServe(t, dataDir, listen, "--config", cfgFile)
	tok := clientToken(dataDir)
	spec, err := imagegen.Busybox("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.New(remote.Options{Keychain: serverKeychain{addr: addr, token: tok}}).Push(ctx, addr+"/p/r/busybox:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	client := func(addr string) *batch.Client {
		c, err := newBatchClient(ctx, addr, dataDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := client(addr)
	// The first attempt sleeps; the retry after the crash finishes at once.
	marker := filepath.Join(top, "attempted")
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{
		MaxRetryCount: 1,
		Runnables: []*batchpb.Runnable{{Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{
			ImageUri: addr + "/p/r/busybox:v1", EnableImageStreaming: true,
			Volumes:  []string{top + ":/host"},
			Commands: []string{"sh", "-c", "if [ -e /host/attempted ]; then echo second attempt; else touch /host/attempted; sleep 300; fi"},
		}}}},
	}}}}
	created, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "crash", Job: job})
	if err != nil {
		t.Fatal(err)
	}
	taskName := created.GetName() + "/taskGroups/group0/tasks/0"
	waitUntil(t, 60*time.Second, "the task to run", func() bool {
		tk, err := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: taskName})
		_, statErr := os.Stat(marker)
		return err == nil && tk.GetStatus().GetState() == batchpb.TaskStatus_RUNNING && statErr == nil
	})

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if n := leftovers(t, dataDir, false); n == 0 {
		t.Log("nothing left behind by the crash (the container died with riffle serve)")
	}

	cmd2, addr := startServe(t, dataDir, listen, "--config", cfgFile)
	c = client(addr)
	var got *batchpb.Job
	waitUntil(t, 90*time.Second, "the job to end after the restart", func() bool {
		got, err = c.GetJob(ctx, &batchpb.GetJobRequest{Name: created.GetName()})
		if err != nil {
			t.Fatalf("after restart the job is gone: %v", err)
		}
		st := got.GetStatus().GetState()
		return st == batchpb.JobStatus_SUCCEEDED || st == batchpb.JobStatus_FAILED
	})
	if got.GetStatus().GetState() != batchpb.JobStatus_SUCCEEDED {
		tk, _ := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: taskName})
		t.Fatalf("job after restart: %v; task events %v", got.GetStatus().GetState(), tk.GetStatus().GetStatusEvents())
	}
	tk, _ := c.GetTask(ctx, &batchpb.GetTaskRequest{Name: taskName})
	var retried bool
	for _, e := range tk.GetStatus().GetStatusEvents() {
		if strings.Contains(strings.ToLower(e.GetDescription()), "restart") {
			retried = true
		}
	}
	if !retried {
		t.Errorf("no task event mentions the restart: %v", tk.GetStatus().GetStatusEvents())
	}
	// The old container and overlay are gone.
	if n := leftovers(t, dataDir, false); n != 0 {
		t.Fatalf("%d runc containers or overlays left after recovery", n)
	}
	// A graceful stop leaves nothing mounted at all.
	cmd2.Process.Signal(syscall.SIGTERM)
	cmd2.Wait()
	if n := leftovers(t, dataDir, true); n != 0 {
		t.Fatalf("%d containers or mounts left after a graceful stop", n)
	}
}

// leftovers counts runc containers in Riffle's runc root and overlay mounts
// (with fuse, FUSE mounts too) under the data dir.
func leftovers(t *testing.T, dataDir string, fuse bool) int {
	t.Helper()
	n := 0
	out, _ := exec.Command("runc", "--root", filepath.Join(dataDir, "runtime", "runc"), "list", "-q").Output()
	for _, l := range strings.Fields(string(out)) {
		t.Logf("runc container left: %s", l)
		n++
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dataDir) &&
			(strings.Contains(sc.Text(), " - overlay ") || fuse && strings.Contains(sc.Text(), " - fuse")) {
			t.Logf("mount left: %s", sc.Text())
			n++
		}
	}
	return n
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal(fmt.Sprintf("timed out waiting for %s", what))
}
