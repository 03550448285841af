package scheduler_test

import (
	"path/filepath"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/batch/scheduler"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestNFSVolumeFailureIsExplained: a task whose NFS volume cannot be mounted
// fails promptly with an event naming the volume and why. (Mounting a real
// share needs a kernel with NFS, which the machines this runs on lack; the
// event then says so.)
func TestNFSVolumeFailureIsExplained(t *testing.T) {
	testutil.RequiresRoot(t)
	e := newEnv(t, t.TempDir(), false)
	defer e.close()
	j := newJob(1, 1, script("true"))
	j.TaskGroups[0].TaskSpec.Volumes = []*batchpb.Volume{{
		Source:       &batchpb.Volume_Nfs{Nfs: &batchpb.NFS{Server: "127.0.0.1", RemotePath: "/export"}},
		MountPath:    filepath.Join(t.TempDir(), "share"),
		MountOptions: []string{"soft", "timeo=10", "retrans=1", "retry=0"},
	}}
	got := e.submit("nfs", j)
	done := e.waitState(got.GetName(), batchpb.JobStatus_FAILED, 2*time.Minute)
	tk := e.tasks(done.GetName())[0]
	if !hasEvent(tk.GetStatus().GetStatusEvents(), "", "NFS share could not be mounted") {
		t.Fatalf("task events do not explain the NFS failure:\n%s", events(tk.GetStatus().GetStatusEvents()))
	}
	if !scheduler.KernelHasNFS() && !hasEvent(tk.GetStatus().GetStatusEvents(), "", "kernel has no NFS client") {
		t.Fatalf("events do not say the kernel lacks NFS:\n%s", events(tk.GetStatus().GetStatusEvents()))
	}
}
