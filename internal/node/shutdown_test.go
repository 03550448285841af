package node_test

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestCloseBoundedByGrace: Close returns within the unmount grace although
// a process keeps a stream mount busy, and the mount is gone: past the
// grace its FUSE connection is aborted and it is detached.
func TestCloseBoundedByGrace(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "sleep")
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/busy", smallSpec())
	n := newNode(t, t.TempDir(), func(o *node.Options) { o.Mount.UnmountGrace = time.Second })
	rfs, err := n.Stream(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	dir := rfs.Lower[0]
	// A process working in the image keeps the mount busy.
	holder := exec.Command("sleep", "600")
	holder.Dir = dir + "/data"
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()

	closed := make(chan error, 1)
	start := time.Now()
	go func() { closed <- n.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		holder.Process.Kill() // lets the old Close finish
		t.Fatalf("Close still waiting after %v with a busy mount (grace 1s)", time.Since(start))
	}
	took := time.Since(start)
	t.Logf("Close took %v", took)
	if took > 5*time.Second {
		t.Errorf("Close took %v; want about the 1s grace", took)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), " "+dir+" ") {
		t.Errorf("%s is still mounted after Close", dir)
	}
	// The holder's view of the image is gone: it gets errors, not a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ls := exec.CommandContext(ctx, "ls", "/proc/"+itoa(holder.Process.Pid)+"/cwd/")
	out, err := ls.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatal("listing the holder's working directory hung")
	}
	if err == nil {
		t.Errorf("the holder can still list its directory in the closed mount: %s", out)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
