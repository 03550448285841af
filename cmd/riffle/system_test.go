package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/server"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// cliRunner runs the CLI in-process against dataDir with token (""
// means the local admin token), returning stdout, or stderr on failure.
func cliRunner(t *testing.T, dir string) func(token string, args ...string) (string, error) {
	return func(token string, args ...string) (string, error) {
		t.Setenv("RIFFLE_TOKEN", token)
		cmd := newRootCmd()
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(append(args, "--data-dir", dir))
		if err := cmd.ExecuteContext(context.Background()); err != nil {
			return errOut.String(), err
		}
		return out.String(), nil
	}
}

// startServe runs a real riffle serve on dir until the test ends.
func startServeSystem(t *testing.T, dir string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DataDir: dir, Listen: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if a, err := server.ReadAddr(dir); err == nil && a == ln.Addr().String() {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatal("serve.addr not written")
		}
	}
}

func clearClientEnv(t *testing.T) {
	for _, v := range []string{"RIFFLE_SERVER", "RIFFLE_TOKEN", "RIFFLE_PROJECT", "CLOUDSDK_CORE_PROJECT", "RIFFLE_LOCATION", "CLOUDSDK_BATCH_LOCATION"} {
		t.Setenv(v, "")
	}
	t.Setenv("DOCKER_CONFIG", t.TempDir())
}

func pushLayout(t *testing.T, run func(string, ...string) (string, error), seed uint64, dests ...string) {
	t.Helper()
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "f", Size: 32 << 10, Seed: seed},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "layout")
	if err := imagegen.WriteOCILayout(src, img, ""); err != nil {
		t.Fatal(err)
	}
	for _, d := range dests {
		if out, err := run("", "image", "push", src, d); err != nil {
			t.Fatalf("push %s: %v\n%s", d, err, out)
		}
	}
}

func diskUsage(t *testing.T, run func(string, ...string) (string, error)) server.DiskUsage {
	t.Helper()
	out, err := run("", "system", "df", "--format", "json")
	if err != nil {
		t.Fatalf("system df: %v\n%s", err, out)
	}
	var u server.DiskUsage
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		t.Fatalf("system df json: %v\n%s", err, out)
	}
	return u
}

// TestImageRmAndSystemPrune drives image rm, system df and system prune
// against a real riffle serve: tags and manifests go as documented, the
// registry's blobs go only with prune --registry (admin only), a leftover
// work directory of a job the server does not know goes, and a running
// job's stays.
func TestImageRmAndSystemPrune(t *testing.T) {
	clearClientEnv(t)
	dir := t.TempDir()
	host := startServeSystem(t, dir)
	run := cliRunner(t, dir)
	app := host + "/p/r/app"
	pushLayout(t, run, 1, app+":v1", app+":v2")
	pushLayout(t, run, 2, host+"/p/r/other:v1")

	out, err := run("", "image", "rm", app+":v1")
	if err != nil || !strings.Contains(out, "untagged "+app+":v1") || !strings.Contains(out, "tags [v2] still name it") {
		t.Fatalf("rm v1: %v\n%s", err, out)
	}
	out, err = run("", "image", "rm", app+":v2")
	if err != nil || !strings.Contains(out, "deleted "+app+"@sha256:") {
		t.Fatalf("rm v2: %v\n%s", err, out)
	}
	if out, err = run("", "image", "rm", app+":v2"); err == nil || !strings.Contains(err.Error(), "no such image") {
		t.Fatalf("rm of a missing tag: %v\n%s", err, out)
	}
	if out, err = run("", "image", "rm", host+"/p/r/none@sha256:"+strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "no such image") {
		t.Fatalf("rm of a missing digest: %v\n%s", err, out)
	}

	// A viewer may not delete or prune; df needs viewer in every project.
	viewer, err := run("", "auth", "tokens", "create", "--role", "viewer", "--project", "p", "--name", "v")
	if err != nil {
		t.Fatal(err)
	}
	viewer = strings.Fields(viewer)[0]
	if out, err = run(viewer, "image", "rm", host+"/p/r/other:v1"); err == nil {
		t.Fatalf("viewer rm succeeded\n%s", out)
	}
	if out, err = run(viewer, "system", "prune"); err == nil || !strings.Contains(err.Error(), "admin") {
		t.Fatalf("viewer prune: %v\n%s", err, out)
	}

	// A work directory of a job the server does not have is a leftover.
	ghost := filepath.Join(dir, "batch", "work", "p", "us-central1", "ghost")
	if err := os.MkdirAll(ghost, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ghost, "junk"), make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	// A running job's work directory stays (the executor needs root).
	running := testutil.InCI() || os.Geteuid() == 0
	if running {
		if out, err := run("", "batch", "jobs", "submit", "sleeper", "--project", "p", "--script-text", "sleep 60"); err != nil {
			t.Fatalf("submit: %v\n%s", err, out)
		}
		t.Cleanup(func() { run("", "batch", "jobs", "delete", "sleeper", "--project", "p") })
		waitJobRunning(t, run, "sleeper")
	}
	before := diskUsage(t, run)
	if before.Registry.Blobs != 6 {
		t.Fatalf("df before prune: %d registry blobs, want 6 (2 images × layer, config, manifest)", before.Registry.Blobs)
	}
	var ghostSeen, sleeperSeen bool
	for _, w := range before.Jobs.WorkDirs {
		switch w.Job {
		case "projects/p/locations/us-central1/jobs/ghost":
			ghostSeen = w.Finished && w.Bytes == 1000
		case "projects/p/locations/us-central1/jobs/sleeper":
			sleeperSeen = !w.Finished
		}
	}
	if !ghostSeen || sleeperSeen != running {
		t.Fatalf("df work dirs: %+v", before.Jobs.WorkDirs)
	}
	if before.Cache.MaxBytes != node.DefaultCacheBytes || before.LayersMaxBytes != node.DefaultLayerBytes {
		t.Errorf("df limits: cache %d, layers %d", before.Cache.MaxBytes, before.LayersMaxBytes)
	}
	if out, err := run("", "system", "df"); err != nil || !strings.Contains(out, "registry blobs") || !strings.Contains(out, "job work dirs") {
		t.Fatalf("df text: %v\n%s", err, out)
	}

	out, err = run("", "system", "prune", "--registry", "--format", "json")
	if err != nil {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	var rep server.PruneReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Registry == nil || rep.Registry.Blobs != 3 {
		t.Fatalf("prune --registry removed %+v, want the deleted image's 3 blobs", rep.Registry)
	}
	if len(rep.WorkDirs) != 1 || rep.WorkDirs[0] != "projects/p/locations/us-central1/jobs/ghost" {
		t.Fatalf("prune removed work dirs %v, want only ghost's", rep.WorkDirs)
	}
	if _, err := os.Stat(ghost); !os.IsNotExist(err) {
		t.Errorf("ghost's work dir: %v", err)
	}
	after := diskUsage(t, run)
	if after.Registry.Blobs != 3 {
		t.Errorf("df after prune: %d registry blobs, want 3", after.Registry.Blobs)
	}
	if running && len(after.Jobs.WorkDirs) != 1 {
		t.Errorf("the running job's work dir went: %+v", after.Jobs.WorkDirs)
	}
	if out, err := run("", "image", "inspect", host+"/p/r/other:v1"); err != nil {
		t.Fatalf("the kept image after GC: %v\n%s", err, out)
	}
}

func waitJobRunning(t *testing.T, run func(string, ...string) (string, error), id string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err := run("", "batch", "jobs", "describe", id, "--project", "p", "--format", "json")
		if err != nil {
			t.Fatalf("describe: %v\n%s", err, out)
		}
		j := new(batchpb.Job)
		if err := protojson.Unmarshal([]byte(out), j); err != nil {
			t.Fatal(err)
		}
		if j.GetStatus().GetState() == batchpb.JobStatus_RUNNING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not running after 30 s: %v", id, j.GetStatus().GetState())
		}
	}
}

// TestSystemLocal: with no riffle serve on the data directory, df and
// prune open it here; the layers a pull left are listed, with the image
// that used them, and pruned; a cache in use by another process (riffle
// mount or run) makes them fail saying so.
func TestSystemLocal(t *testing.T) {
	clearClientEnv(t)
	dir := t.TempDir()
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(reg)
	t.Cleanup(func() { hs.Close(); reg.Close() })
	ref := strings.TrimPrefix(hs.URL, "http://") + "/p/r/app:v1"
	run := cliRunner(t, dir)
	pushLayout(t, run, 3, ref)

	n, err := node.New(node.Options{Layout: node.Layout{Root: dir}})
	if err != nil {
		t.Fatal(err)
	}
	rfs, err := n.Pull(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	rfs.Release()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	u := diskUsage(t, run)
	if len(u.Node.Entries) != 1 || u.Node.Entries[0].InUse || u.Node.LayerBytes < 32<<10 {
		t.Fatalf("local df: %+v", u.Node)
	}
	c, err := cache.Open(filepath.Join(dir, "cache"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run("", "system", "prune"); err == nil || !strings.Contains(err.Error(), "in use by riffle mount or riffle run") {
		t.Fatalf("prune with the cache in use: %v\n%s", err, out)
	}
	c.Close()
	out, err := run("", "system", "prune")
	if err != nil || !strings.Contains(out, "layers and flat images: removed 1") {
		t.Fatalf("local prune: %v\n%s", err, out)
	}
	if u := diskUsage(t, run); len(u.Node.Entries) != 0 {
		t.Fatalf("after prune: %+v", u.Node.Entries)
	}
}

// TestMountThroughServe: riffle mount on the data directory of a running
// riffle serve is made by the server, through its node cache (one owner),
// instead of failing on the cache's lock; its layers are kept from prune
// while it is mounted, and riffle unmount ends it.
func TestMountThroughServe(t *testing.T) {
	testutil.RequiresRoot(t)
	clearClientEnv(t)
	dir := t.TempDir()
	host := startServeSystem(t, dir)
	run := cliRunner(t, dir)
	ref := host + "/p/r/app:v1"
	pushLayout(t, run, 4, ref)
	mnt := filepath.Join(t.TempDir(), "mnt")
	out, err := run("", "mount", ref, mnt)
	if err != nil || !strings.Contains(out, "served by the riffle serve") {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	unmount := func(args ...string) (string, error) {
		out, errOut, err := runImageCmd(t, append([]string{"unmount"}, args...)...)
		return out + errOut, err
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			unmount("--lazy", mnt)
		}
	})
	b, err := os.ReadFile(filepath.Join(mnt, "f"))
	if err != nil || len(b) != 32<<10 {
		t.Fatalf("reading through the mount: %d bytes, %v", len(b), err)
	}
	// A second mount at the same place is refused.
	if out, err := run("", "mount", ref, mnt); err == nil || !strings.Contains(err.Error(), "already has an image mounted there") {
		t.Fatalf("second mount at %s: %v\n%s", mnt, err, out)
	}
	// The layer settles into the store in the background; it is in use.
	var u server.DiskUsage
	for i := 0; ; i++ {
		if u = diskUsage(t, run); len(u.Node.Entries) == 1 {
			break
		}
		if i == 600 {
			t.Fatalf("the layer did not settle within 30 s: %+v", u.Node)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !u.Node.Entries[0].InUse {
		t.Fatalf("the mounted image's layer is not in use: %+v", u.Node.Entries)
	}
	if out, err := run("", "system", "prune"); err != nil || !strings.Contains(out, "layers and flat images: removed 0") {
		t.Fatalf("prune under the mount: %v\n%s", err, out)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil {
		t.Fatalf("reading after prune: %v", err)
	}
	if out, err := unmount(mnt); err != nil {
		t.Fatalf("unmount: %v\n%s", err, out)
	}
	unmounted = true
	// Once the server has seen the mount end, its layer is free.
	for i := 0; ; i++ {
		u = diskUsage(t, run)
		if len(u.Node.Entries) == 1 && !u.Node.Entries[0].InUse {
			break
		}
		if i == 200 {
			t.Fatalf("the layer stayed in use after unmount: %+v", u.Node.Entries)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := run("", "system", "prune"); err != nil || !strings.Contains(out, "layers and flat images: removed 1") {
		t.Fatalf("prune after unmount: %v\n%s", err, out)
	}
}
