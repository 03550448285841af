package scheduler_test

import (
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
)

// TestBackgroundStartFailureFailsTask: a background runnable that cannot
// start fails the task (its followers would otherwise wait for what it was
// to do, forever), unless it has ignoreExitStatus.
func TestBackgroundStartFailureFailsTask(t *testing.T) {
	t.Parallel()
	ref := busyboxRef(t)
	e := newEnv(t, "", true)
	broken := func(ignore bool) *batchpb.Runnable {
		r := container(ref)
		r.GetContainer().Entrypoint = "/no/such/program"
		r.Background, r.IgnoreExitStatus = true, ignore
		return r
	}
	// The follower waits for a file the broken runnable would have written.
	waiter := script("until [ -e /tmp/never-written-by-riffle-test ]; do sleep 0.2; done")

	start := time.Now()
	j := e.submit("bg-broken", newJob(1, 1, broken(false), waiter))
	j = e.waitState(j.Name, batchpb.JobStatus_FAILED, time.Minute)
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("job took %v to fail", d)
	}
	if ev := e.taskDump(j.Name); !strings.Contains(ev, "did not start") || !strings.Contains(ev, "/no/such/program") {
		t.Errorf("task events do not say the runnable did not start:\n%s", ev)
	}

	j = e.submit("bg-broken-ignored", newJob(1, 1, broken(true), script("echo after")))
	e.waitState(j.Name, batchpb.JobStatus_SUCCEEDED, time.Minute)
}
