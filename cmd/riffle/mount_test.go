package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/testutil"
	"github.com/riffle-dev/riffle/internal/unpack"
)

func runRiffle(ctx context.Context, args ...string) (string, error) {
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestPullMountUnmount(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	reg, err := registry.New(ctx, registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	img, err := imagegen.Build(imagegen.AllFeatures().Docker())
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/cli:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	want := filepath.Join(base, "want")
	os.Mkdir(want, 0o755)
	if err := unpack.Image(ctx, want, img); err != nil {
		t.Fatal(err)
	}
	wantTree, err := fstree.Scan(ctx, want)
	if err != nil {
		t.Fatal(err)
	}

	pulled := filepath.Join(base, "pulled")
	if out, err := runRiffle(ctx, "pull", ref, pulled); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	} else if m, _ := img.Manifest(); !strings.Contains(out, fmt.Sprintf("layer %d/%d applied", len(m.Layers), len(m.Layers))) {
		// Progress: a line per layer applied.
		t.Errorf("pull shows no progress for its %d layers:\n%s", len(m.Layers), out)
	}
	got, err := fstree.Scan(ctx, pulled)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range fstree.Diff(wantTree, got) {
		t.Error("pull:", d)
	}

	// Without DIR the image goes into the node's store, once.
	dataDir := filepath.Join(base, "data")
	if got, err := runRiffle(ctx, "pull", ref, "--data-dir", dataDir); err != nil || !strings.Contains(got, "into the node") {
		t.Fatalf("pull into the node: %v\n%s", err, got)
	}
	stored := overlayTree(t, ref, dataDir)
	for _, d := range fstree.Diff(wantTree, stored) {
		t.Error("pull into the node:", d)
	}
	if got, err := runRiffle(ctx, "pull", ref, "--data-dir", dataDir); err != nil || !strings.Contains(got, "already pulled") {
		t.Fatalf("second pull into the node: %v\n%s", err, got)
	}

	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		cmd := newRootCmd()
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs([]string{"mount", ref, mnt, "--cache-dir", filepath.Join(base, "cache"), "--read-timeout", "5s"})
		done <- cmd.ExecuteContext(ctx)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !mounted(t, mnt) {
		select {
		case err := <-done:
			t.Fatalf("mount exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("not mounted after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err = fstree.Scan(ctx, mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range fstree.Diff(wantTree, got) {
		t.Error("mount:", d)
	}
	if o, err := runRiffle(ctx, "unmount", mnt); err != nil {
		t.Fatalf("unmount: %v\n%s", err, o)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mount: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("riffle mount did not exit after unmount")
	}
	if !strings.Contains(out.String(), "unmounted") {
		t.Errorf("output: %s", out.String())
	}
}

func mounted(t *testing.T, dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " "+dir+" ")
}

// overlayTree scans the image ref as the node on dataDir holds it after a
// pull: overlayfs over its layers in the layer store (mounted read-only
// here), or its flat tree when its layers cannot stand alone.
func overlayTree(t *testing.T, ref, dataDir string) fstree.Tree {
	t.Helper()
	ctx := context.Background()
	n, err := node.New(node.Options{Layout: node.Layout{Root: dataDir}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if rfs.Method != node.MethodSettled {
		t.Fatalf("a pulled image streams as %q, want settled", rfs.Method)
	}
	dir := rfs.Lower[0]
	if len(rfs.Lower) > 1 {
		dir = t.TempDir()
		if err := unix.Mount("overlay", dir, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(rfs.Lower, ":")); err != nil {
			t.Fatalf("mount the pulled layers: %v", err)
		}
		defer unix.Unmount(dir, unix.MNT_DETACH)
	}
	tree, err := fstree.Scan(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// TestPullRemovesWhatItExtracted: a pull refused at its second layer (a
// ".." name) leaves DIR as it found it: gone if pull made it, empty if it
// was empty.
func TestPullRemovesWhatItExtracted(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	reg, err := registry.New(ctx, registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	img, err := imagegen.Build(imagegen.Spec{Layers: []imagegen.Layer{
		{Entries: []imagegen.Entry{{Type: imagegen.Dir, Name: "etc"}, {Type: imagegen.File, Name: "etc/passwd", Data: []byte("root")}}},
		{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "a/../../escape", Data: []byte("x")}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/refused:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	fresh := filepath.Join(base, "fresh")
	if _, err := runRiffle(ctx, "pull", ref, fresh); err == nil || !strings.Contains(err.Error(), "unsafe path") {
		t.Fatalf("pull of a layer with a .. name: %v, want it refused", err)
	}
	if _, err := os.Lstat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory pull created is still there after the refusal: %v", err)
	}
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := runRiffle(ctx, "pull", ref, empty); err == nil {
		t.Fatal("pull into an empty directory was not refused")
	}
	if ents, err := os.ReadDir(empty); err != nil || len(ents) != 0 {
		t.Errorf("the empty directory holds %d entries after the refusal (%v)", len(ents), err)
	}
}
