package registry_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/riffle-dev/riffle/internal/registry"
)

func start(t *testing.T, opts registry.Options) (*registry.Registry, string) {
	t.Helper()
	if opts.RootDir == "" {
		opts.RootDir = t.TempDir()
	}
	r, err := registry.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r)
	t.Cleanup(func() { srv.Close(); r.Close() })
	return r, strings.TrimPrefix(srv.URL, "http://")
}

func TestPushEventAndArtifactRegistryNames(t *testing.T) {
	var mu sync.Mutex
	var got []registry.Event
	_, host := start(t, registry.Options{OnPush: func(e registry.Event) {
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
	}})
	img, err := random.Image(1024, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/my-project/my-repo/tools/img:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("got %d push events, want 1: %+v", len(got), got)
	}
	e := got[0]
	if e.Repository != "my-project/my-repo/tools/img" || e.Reference != "v1" || e.Digest.String() != want.String() {
		t.Fatalf("event = %+v, want repository my-project/my-repo/tools/img, reference v1, digest %s", e, want)
	}
}

func TestPersistsAcrossRestartAndDeletes(t *testing.T) {
	dir := t.TempDir()
	img, _ := random.Image(4096, 2)
	want, _ := img.Digest()

	r1, err := registry.New(context.Background(), registry.Options{RootDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	srv1 := httptest.NewServer(r1)
	ref, _ := name.ParseReference(strings.TrimPrefix(srv1.URL, "http://")+"/p/r/img:keep", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	srv1.Close()
	r1.Close()

	_, host := start(t, registry.Options{RootDir: dir})
	ref, _ = name.ParseReference(host+"/p/r/img:keep", name.Insecure)
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if desc.Digest != want {
		t.Fatalf("after restart digest = %s, want %s", desc.Digest, want)
	}
	pulled, _ := desc.Image()
	layers, _ := pulled.Layers()
	for _, l := range layers { // every blob is still there, byte for byte
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer read after restart: %v", err)
		}
		rc.Close()
	}

	dref, _ := name.ParseReference(host+"/p/r/img@"+want.String(), name.Insecure)
	if err := remote.Delete(dref); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := remote.Get(ref); err == nil {
		t.Fatal("manifest still resolvable after delete")
	}
}

func TestOversizedUploadRefused(t *testing.T) {
	_, host := start(t, registry.Options{MaxBlobBytes: 1 << 20})
	base := "http://" + host

	resp, err := http.Post(base+"/v2/p/r/big/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("start upload: %s", resp.Status)
	}
	if !strings.HasPrefix(loc, "http") {
		loc = base + loc
	}
	// Announced size past the limit: refused before any byte is read.
	req, _ := http.NewRequest(http.MethodPatch, loc, bytes.NewReader(make([]byte, 2<<20)))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "maxBlobBytes") {
		t.Fatalf("oversized PATCH: %s %s; want 413 naming registry.maxBlobBytes", resp.Status, body)
	}
	// Unknown size (chunked) past the limit: cut while streaming.
	req, _ = http.NewRequest(http.MethodPatch, loc, io.MultiReader(bytes.NewReader(make([]byte, 2<<20))))
	req.ContentLength = -1
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Fatalf("oversized chunked PATCH: %s, want an error", resp.Status)
	}
	// The server keeps serving.
	resp, err = http.Get(base + "/v2/")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after refusal: %v %v", err, resp)
	}
	resp.Body.Close()
}

func TestNewErrors(t *testing.T) {
	if _, err := registry.New(context.Background(), registry.Options{}); err == nil || !strings.Contains(err.Error(), "RootDir") {
		t.Fatalf("New without RootDir: %v", err)
	}
}

// TestCranePush pushes and pulls with go-containerregistry's crane, the
// library behind the crane CLI, unchanged.
func TestCranePush(t *testing.T) {
	_, host := start(t, registry.Options{})
	img, _ := random.Image(2048, 2)
	ref := host + "/proj/repo/crane:v1"
	if err := crane.Push(img, ref, crane.Insecure); err != nil {
		t.Fatal(err)
	}
	got, err := crane.Pull(ref, crane.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled %s, pushed %s", d, want)
	}
	tags, err := crane.ListTags(host+"/proj/repo/crane", crane.Insecure)
	if err != nil || len(tags) != 1 || tags[0] != "v1" {
		t.Fatalf("tags = %v, %v", tags, err)
	}
	repos, err := crane.Catalog(host, crane.Insecure)
	if err != nil || len(repos) != 1 {
		t.Fatalf("catalog = %v, %v", repos, err)
	}
}
