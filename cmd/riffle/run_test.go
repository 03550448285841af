package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestRun runs one container from a streamed and from a pulled image with
// real runc, checking its output and that riffle returns its exit code.
func TestRun(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "runc")
	bb := testutil.RequiresBinary(t, "busybox")
	ctx := context.Background()
	reg, err := registry.New(ctx, registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv := httptest.NewServer(reg)
	defer srv.Close()
	spec, err := imagegen.Busybox(bb)
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/p/r/busybox:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"streamed", []string{"--settle"}},
		{"settled", nil},
		{"pulled", []string{"--pull"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "--verbose", "--data-dir", dataDir}, tc.args...)
			args = append(args, ref, "--", "sh", "-c", "cat /data/hello.txt; exit 7")
			out, err := runRiffle(ctx, args...)
			var ec exitCodeError
			if !errors.As(err, &ec) || ec.code != 7 {
				t.Fatalf("err = %v, want exit status 7\n%s", err, out)
			}
			if !strings.Contains(out, "hello from a streamed image") {
				t.Errorf("output lacks the container's line:\n%s", out)
			}
			// --settle waits for the layers streaming in the
			// background, so the next run finds the image settled.
			methods := map[string][]string{
				"streamed": {"method=streamed", "image settled"},
				"settled":  {"method=settled"},
				"pulled":   {"method=pulled"},
			}[tc.name]
			for _, m := range methods {
				if !strings.Contains(out, m) {
					t.Errorf("output does not say %q:\n%s", m, out)
				}
			}
		})
	}

	if out, err := runRiffle(ctx, "run", "--data-dir", dataDir, ref, "true"); err == nil || !strings.Contains(err.Error(), "after --") {
		t.Errorf("a command without --: err = %v\n%s", err, out)
	}

	// --no-background streams only what the container reads: on a fresh
	// node the image is streamed, and it cannot be asked to settle.
	fresh := filepath.Join(t.TempDir(), "data")
	out, err := runRiffle(ctx, "run", "--verbose", "--no-background", "--data-dir", fresh, ref, "--", "cat", "/data/hello.txt")
	if err != nil || !strings.Contains(out, "hello from a streamed image") || !strings.Contains(out, "method=streamed") || !strings.Contains(out, "wire_background=0") {
		t.Errorf("--no-background: err = %v\n%s", err, out)
	}
	if out, err := runRiffle(ctx, "run", "--no-background", "--settle", "--data-dir", fresh, ref, "--", "true"); err == nil || !strings.Contains(err.Error(), "--no-background") {
		t.Errorf("--no-background --settle: err = %v\n%s", err, out)
	}
}

// TestMountBackground checks riffle mount --background: the command
// returns once the mount is ready (files readable at once), a background
// process serves it until riffle unmount, and a failure is reported by the
// command itself with a non-zero exit.
func TestMountBackground(t *testing.T) {
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
	ref := strings.TrimPrefix(srv.URL, "http://") + "/p/r/features:v1"
	nref, _ := name.ParseReference(ref)
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	dir := filepath.Join(base, "mnt")
	riffle := func(args ...string) (string, error) {
		c := exec.Command(os.Args[0], args...)
		c.Env = append(os.Environ(), "RIFFLE_TEST_MAIN=1")
		out, err := c.CombinedOutput()
		return string(out), err
	}
	out, err := riffle("mount", "--background", "--data-dir", filepath.Join(base, "data"), ref, dir)
	if err != nil {
		t.Fatalf("mount --background: %v\n%s", err, out)
	}
	t.Cleanup(func() { riffle("unmount", "--lazy", dir) })
	if !strings.Contains(out, "in the background (pid ") {
		t.Errorf("output: %s", out)
	}
	// Ready means ready: no waiting here.
	b, err := os.ReadFile(filepath.Join(dir, "data", "big.bin"))
	if err != nil || len(b) != 3<<20 {
		t.Fatalf("read through the background mount: %d bytes, %v", len(b), err)
	}
	if out, err := riffle("unmount", dir); err != nil {
		t.Fatalf("unmount: %v\n%s", err, out)
	}

	out, err = riffle("mount", "--background", "--data-dir", filepath.Join(base, "data"), ref+"-missing", dir)
	if err == nil || !strings.Contains(out, "MANIFEST_UNKNOWN") {
		t.Errorf("a missing image: err %v, output %s", err, out)
	}
}
