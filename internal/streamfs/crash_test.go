package streamfs_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestMain lets a test run this binary as a mounting server that can be
// killed (crashChild).
func TestMain(m *testing.M) {
	if os.Getenv("STREAMFS_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

// crashChild mounts the image STREAMFS_CRASH_REF at STREAMFS_CRASH_DIR,
// starts a long-lived child of its own (as riffle serve starts runc), and
// waits to be killed. With STREAMFS_CRASH_LEAK=1 it hands that child its
// /dev/fuse descriptor on purpose, as a descriptor leaked by some other
// path would be.
func crashChild() {
	fail := func(err error) { fmt.Println("error:", err); os.Exit(1) }
	ctx := context.Background()
	c, err := cache.Open(os.Getenv("STREAMFS_CRASH_CACHE"), cache.Options{MaxBytes: 1 << 30, NoSync: true})
	if err != nil {
		fail(err)
	}
	img, _, err := streamfs.Open(ctx, remote.New(remote.Options{}), os.Getenv("STREAMFS_CRASH_REF"), streamfs.OpenOptions{Build: true})
	if err != nil {
		fail(err)
	}
	if _, err := streamfs.Mount(ctx, os.Getenv("STREAMFS_CRASH_DIR"), img, streamfs.Options{Cache: c}); err != nil {
		fail(err)
	}
	sleep := exec.Command("sleep", "600")
	if os.Getenv("STREAMFS_CRASH_LEAK") == "1" {
		sleep.ExtraFiles = fuseFiles()
	}
	if err := sleep.Start(); err != nil {
		fail(err)
	}
	fmt.Println("ready", sleep.Process.Pid)
	select {}
}

// fuseFiles returns this process's /dev/fuse descriptors.
func fuseFiles() []*os.File {
	var out []*os.File
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if t, _ := os.Readlink("/proc/self/fd/" + e.Name()); t == "/dev/fuse" {
			fd, _ := strconv.Atoi(e.Name())
			out = append(out, os.NewFile(uintptr(fd), "fuse"))
		}
	}
	return out
}

// crashMount runs crashChild on a new mount and kills it with SIGKILL once
// the image is mounted and its child started. It returns the mount point
// and the path of a file no one has read.
func crashMount(t *testing.T, leak bool) (dir, file string) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "sleep")
	r := newTestRegistry(t)
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "data.bin", Size: 1 << 20, Seed: 3},
	}}}}, "test/crash")
	dir = filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Whatever happens, leave no mount behind.
	t.Cleanup(func() { streamfs.CleanupDir(dir) })
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "STREAMFS_CRASH_CHILD=1", "STREAMFS_CRASH_REF="+ref,
		"STREAMFS_CRASH_DIR="+dir, "STREAMFS_CRASH_CACHE="+t.TempDir(), "STREAMFS_CRASH_LEAK="+map[bool]string{true: "1"}[leak])
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ready ")))
	if err != nil {
		child.Process.Kill()
		child.Wait()
		t.Fatalf("child: %q", line)
	}
	// The grandchild outlives its parent, as runc's children may.
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	return dir, filepath.Join(dir, "data.bin")
}

// readFile reads file in another process and reports its error and how
// long it took; a reader still blocked after limit is killed and reported
// as hung.
func readFile(file string, limit time.Duration) (time.Duration, error, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "cat", file).CombinedOutput()
	if ctx.Err() != nil {
		return time.Since(start), nil, true
	}
	if err != nil {
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return time.Since(start), err, false
}

// TestKilledServerReadersFail: readers of a mount whose server was killed
// get an error at once, although a child the server started still runs:
// the /dev/fuse descriptor is close-on-exec, so the kernel ends the
// connection with the server.
func TestKilledServerReadersFail(t *testing.T) {
	dir, file := crashMount(t, false)
	took, err, hung := readFile(file, 5*time.Second)
	if hung {
		t.Fatalf("a reader of %s still hung after %v: the server's child keeps the FUSE connection open", file, took)
	}
	if err == nil {
		t.Fatal("read of a dead mount succeeded")
	}
	t.Logf("reader failed after %v: %v", took, err)
	if err := streamfs.CleanupDir(dir); err != nil {
		t.Fatal(err)
	}
	checkUnmounted(t, dir)
}

// TestCleanupAbortsLeakedConnection: when a process the dead server
// started holds its /dev/fuse, readers block; CleanupDir (what a node
// does at start) aborts the connection, so they fail at once, and
// removes the mount.
func TestCleanupAbortsLeakedConnection(t *testing.T) {
	dir, file := crashMount(t, true)
	type result struct {
		err  error
		hung bool
	}
	res := make(chan result, 1)
	go func() {
		_, err, hung := readFile(file, 20*time.Second)
		res <- result{err, hung}
	}()
	// The reader is blocked on the connection: nobody serves it.
	select {
	case r := <-res:
		t.Fatalf("a reader of the leaked connection returned before cleanup: %v", r.err)
	case <-time.After(500 * time.Millisecond):
	}
	start := time.Now()
	if err := streamfs.CleanupDir(dir); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.hung {
		t.Fatal("the blocked reader still hung after CleanupDir")
	}
	if r.err == nil {
		t.Fatal("the blocked reader succeeded")
	}
	t.Logf("blocked reader failed %v after cleanup: %v", time.Since(start), r.err)
	if time.Since(start) > 3*time.Second {
		t.Errorf("the blocked reader took %v to fail after cleanup", time.Since(start))
	}
	checkUnmounted(t, dir)
	if _, err, hung := readFile(file, 5*time.Second); hung || err == nil {
		t.Errorf("a read after cleanup: hung %v, err %v; want a quick error (no such file)", hung, err)
	}
}

// checkUnmounted fails unless no mount is left at dir.
func checkUnmounted(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			t.Errorf("still mounted: %s", strings.TrimSpace(l))
		}
	}
}
