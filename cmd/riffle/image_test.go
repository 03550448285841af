package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/server"
)

// runImageCmd runs the riffle CLI in-process and returns stdout and stderr.
func runImageCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// TestImagePushLsInspect drives `riffle image` against the real embedded
// registry, found, as the CLI finds a running riffle serve, through the
// address file in its data directory.
func TestImagePushLsInspect(t *testing.T) {
	dataDir := t.TempDir()
	// registry.New rather than server.New: the registry as server.New
	// configures it leaves distribution's catalog.maxentries at 0, so its
	// catalog is always empty (reported to the lead). Once the registry
	// sets it, this can go back to server.New.
	reg, err := registry.New(context.Background(), registry.Options{
		RootDir:   filepath.Join(dataDir, "registry"),
		Configure: func(c *configuration.Configuration) { c.Catalog.MaxEntries = 1000 },
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(reg)
	t.Cleanup(func() { hs.Close(); reg.Close() })
	host := strings.TrimPrefix(hs.URL, "http://")
	if err := os.WriteFile(server.AddrFile(dataDir), []byte(host+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", t.TempDir())

	// Sources: an OCI layout with two named images, and a docker save tarball.
	spec := imagegen.AllFeatures()
	img1, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	spec2 := imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "two", Data: []byte("2")}}}}}
	img2, err := imagegen.Build(spec2)
	if err != nil {
		t.Fatal(err)
	}
	docker, err := imagegen.Build(spec.Docker())
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img1.Digest()
	d2, _ := img2.Digest()
	single := filepath.Join(t.TempDir(), "single")
	two := filepath.Join(t.TempDir(), "two")
	tarPath := filepath.Join(t.TempDir(), "image.tar")
	if err := imagegen.WriteOCILayout(single, img1, ""); err != nil {
		t.Fatal(err)
	}
	if err := imagegen.WriteOCILayout(two, img1, "v1"); err != nil {
		t.Fatal(err)
	}
	if err := imagegen.WriteOCILayout(two, img2, "v2"); err != nil {
		t.Fatal(err)
	}
	if err := imagegen.WriteDockerSave(tarPath, "example.com/test/image:latest", docker); err != nil {
		t.Fatal(err)
	}

	dd2 := "--data-dir=" + dataDir
	push := func(src, dest string, extra ...string) string {
		t.Helper()
		out, errOut, err := runImageCmd(t, append([]string{"image", "push", dd2, src, dest}, extra...)...)
		if err != nil {
			t.Fatalf("push %s %s: %v\n%s", src, dest, err, errOut)
		}
		if errOut != "" {
			t.Errorf("push printed to stderr without a terminal: %q", errOut)
		}
		return out
	}
	// A layout with one image.
	if out := push(single, host+"/my-project/repo/img:v1"); out != "pushed "+host+"/my-project/repo/img:v1@"+d1.String()+"\n" {
		t.Errorf("push output %q", out)
	}
	// Two images: SRC must say which.
	_, _, err = runImageCmd(t, "image", "push", dd2, two, host+"/my-project/repo/two:v1")
	if err == nil || !strings.Contains(err.Error(), "DIR:NAME") || !strings.Contains(err.Error(), "v2") {
		t.Errorf("ambiguous layout: %v", err)
	}
	if out := push(two+":v2", host+"/my-project/repo/two:v2"); !strings.Contains(out, d2.String()) {
		t.Errorf("DIR:NAME push: %q", out)
	}
	if out := push(two, host+"/my-project/repo/two:v1", "--ref", "v1"); !strings.Contains(out, d1.String()) {
		t.Errorf("--ref push: %q", out)
	}
	if _, _, err := runImageCmd(t, "image", "push", dd2, two+":v9", host+"/my-project/repo/two:v9"); err == nil || !strings.Contains(err.Error(), `no image named "v9"`) {
		t.Errorf("missing name: %v", err)
	}
	// A docker save tarball, to an explicit host.
	// docker save keeps layers and config but not the manifest, so the
	// pushed manifest is a new one over the same blobs (checked by inspect).
	if out := push(tarPath, host+"/other-project/tools/docker:latest"); !strings.HasPrefix(out, "pushed "+host+"/other-project/tools/docker:latest@sha256:") {
		t.Errorf("tarball push: %q", out)
	}
	if _, _, err := runImageCmd(t, "image", "push", dd2, filepath.Join(t.TempDir(), "nothing"), "p/r/i:v1"); err == nil || !strings.Contains(err.Error(), "OCI layout") {
		t.Errorf("missing SRC: %v", err)
	}

	// ls: everything, one project, JSON.
	out, _, err := runImageCmd(t, "image", "ls", dd2)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		host + "/my-project/repo/img:v1",
		host + "/my-project/repo/two:v1",
		host + "/my-project/repo/two:v2",
		host + "/other-project/tools/docker:latest",
	}, "\n") + "\n"
	if out != want {
		t.Errorf("ls:\n%s\nwant:\n%s", out, want)
	}
	out, _, err = runImageCmd(t, "image", "ls", host+"/other-project")
	if err != nil || out != host+"/other-project/tools/docker:latest\n" {
		t.Errorf("ls HOST/PROJECT: %q, %v", out, err)
	}
	out, _, err = runImageCmd(t, "image", "ls", host+"/my-project/repo/two", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var entries []struct {
		Repository string
		Tags       []string
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 1 || entries[0].Repository != host+"/my-project/repo/two" || len(entries[0].Tags) != 2 {
		t.Errorf("ls --format json: %s (%v)", out, err)
	}
	// Without a host, a prefix would mean Docker Hub: refused, with the
	// local server's name to use instead.
	if _, _, err := runImageCmd(t, "image", "ls", dd2, "my-project"); err == nil || !strings.Contains(err.Error(), "Docker Hub") || !strings.Contains(err.Error(), host+"/my-project") {
		t.Errorf("ls without a host: %v, want the Docker Hub rule and %s/my-project", err, host)
	}
	if _, _, err := runImageCmd(t, "image", "ls", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "riffle serve") {
		t.Errorf("ls without a server: %v", err)
	}

	// inspect: text and JSON.
	out, _, err = runImageCmd(t, "image", "inspect", dd2, host+"/my-project/repo/img:v1")
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img1.Layers()
	for _, s := range []string{d1.String(), "linux/", "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd", fmt.Sprintf("Layers (%d)", len(layers))} {
		if !strings.Contains(out, s) {
			t.Errorf("inspect output lacks %q:\n%s", s, out)
		}
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if !strings.Contains(out, d.String()) {
			t.Errorf("inspect output lacks layer %s", d)
		}
	}
	t.Logf("inspect:\n%s", out)
	out, _, err = runImageCmd(t, "image", "inspect", "--format=json", host+"/other-project/tools/docker:latest")
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		Digest    string
		MediaType string
		Platform  struct{ OS, Architecture string }
		Manifest  struct {
			Config struct{ Digest string }
			Layers []struct{ Digest string }
		}
		Config struct{ OS string }
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("inspect --format json: %v\n%s", err, out)
	}
	if js.MediaType != "application/vnd.docker.distribution.manifest.v2+json" || js.Platform.OS != "linux" || js.Config.OS != "linux" {
		t.Errorf("inspect json: %+v", js)
	}
	dockerLayers, _ := docker.Layers()
	cfgName, _ := docker.ConfigName()
	if js.Manifest.Config.Digest != cfgName.String() || len(js.Manifest.Layers) != len(dockerLayers) {
		t.Fatalf("pushed tarball: config %s, %d layers; want %s, %d", js.Manifest.Config.Digest, len(js.Manifest.Layers), cfgName, len(dockerLayers))
	}
	for i, l := range dockerLayers {
		if d, _ := l.Digest(); js.Manifest.Layers[i].Digest != d.String() {
			t.Errorf("tarball layer %d: %s, want %s", i, js.Manifest.Layers[i].Digest, d)
		}
	}
	if _, _, err := runImageCmd(t, "image", "inspect", dd2, host+"/my-project/repo/missing:v1"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("inspect of a missing image: %v", err)
	}
}

func TestShowProgress(t *testing.T) {
	updates := make(chan v1.Update, 4)
	updates <- v1.Update{Total: 3 << 20, Complete: 1 << 20}
	updates <- v1.Update{Total: 3 << 20, Complete: 3 << 20}
	close(updates)
	var out bytes.Buffer
	showProgress(&out, "pushing x", updates)
	if s := out.String(); !strings.Contains(s, "pushing x: ") || !strings.HasSuffix(s, "3.0 MiB / 3.0 MiB (100%)\n") {
		t.Errorf("progress output %q", s)
	}
	if isTerminal(&out) {
		t.Error("a buffer is not a terminal")
	}
}
