package registry_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/riffle-dev/riffle/internal/registry"
)

// TestGCDeletesOnlyUnreferencedBlobs: after one of two images is deleted,
// GC removes exactly its blobs (layers and config), and the other image
// still pulls whole, by tag.
func TestGCDeletesOnlyUnreferencedBlobs(t *testing.T) {
	dir := t.TempDir()
	reg, host := start(t, registry.Options{RootDir: dir})
	ctx := context.Background()
	push := func(repo string) (name.Reference, name.Digest) {
		img, err := random.Image(4096, 3)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(host+"/p/r/"+repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		return ref, ref.Context().Digest(d.String())
	}
	_, goneDigest := push("gone")
	kept, _ := push("kept")

	before, err := registry.Usage(dir)
	if err != nil || before.Blobs != 10 {
		t.Fatalf("usage before: %+v, %v; want 10 blobs (2 × 3 layers, config and manifest)", before, err)
	}
	// Nothing unreferenced yet: GC removes nothing.
	if r, err := reg.GC(ctx, time.Millisecond); err != nil || r.Blobs != 0 {
		t.Fatalf("GC with every blob referenced: %+v, %v", r, err)
	}
	if err := remote.Delete(goneDigest); err != nil {
		t.Fatal(err)
	}
	r, err := reg.GC(ctx, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Blobs != 5 || r.Bytes <= 3*4096 {
		t.Fatalf("GC removed %+v, want the deleted image's 5 blobs", r)
	}
	after, _ := registry.Usage(dir)
	if after.Blobs != 5 || after.Bytes != before.Bytes-r.Bytes {
		t.Fatalf("usage after: %+v (before %+v, removed %+v)", after, before, r)
	}
	img, err := remote.Image(kept)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("the kept image after GC: %v", err)
	}
	if _, err := remote.Image(goneDigest); err == nil {
		t.Fatal("the deleted image still resolves")
	}
}

// TestGCWaitsForPushesToEnd: GC does not sweep until no write has been
// seen for the quiet period, so blobs uploaded just before it (whose
// manifest a push is about to send) are not swept at once.
func TestGCWaitsForPushesToEnd(t *testing.T) {
	reg, host := start(t, registry.Options{})
	layer, err := random.Layer(1024, "application/vnd.oci.image.layer.v1.tar")
	if err != nil {
		t.Fatal(err)
	}
	repo, err := name.NewRepository(host+"/p/r/img", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	const quiet = 300 * time.Millisecond
	start := time.Now()
	if err := remote.WriteLayer(repo, layer); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.GC(context.Background(), quiet); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < quiet {
		t.Fatalf("GC swept %v after a blob upload began, before the quiet period of %v", took, quiet)
	}
	// A cancelled wait says why.
	other, err := random.Layer(1024, "application/vnd.oci.image.layer.v1.tar")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, other); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := reg.GC(ctx, time.Hour); err == nil {
		t.Fatal("GC with a cancelled context and a recent write succeeded")
	}
}

// TestGCWaitsForUploadInFlight: while a blob upload's body is still
// arriving, GC does not sweep, and other pushes go through meanwhile; GC
// runs once the upload has ended.
func TestGCWaitsForUploadInFlight(t *testing.T) {
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// reading is closed when the registry first reads the PATCH's body:
	// the upload is then in flight inside the registry.
	reading := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPatch {
			r.Body = &signalReader{ReadCloser: r.Body, first: func() { once.Do(func() { close(reading) }) }}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close(); reg.Close() })
	host := strings.TrimPrefix(srv.URL, "http://")
	resp, err := http.Post("http://"+host+"/v2/p/r/slow/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("starting an upload: %s", resp.Status)
	}
	if !strings.HasPrefix(loc, "http") {
		loc = "http://" + host + loc
	}
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPatch, loc, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	patched := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		patched <- err
	}()
	if _, err := pw.Write(make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	<-reading
	gcDone := make(chan error, 1)
	go func() {
		_, err := reg.GC(context.Background(), 10*time.Millisecond)
		gcDone <- err
	}()
	// Another push is not held off by the waiting GC.
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/p/r/other:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-gcDone:
		t.Fatalf("GC ran while an upload was in flight (err %v)", err)
	default:
	}
	pw.Close()
	if err := <-patched; err != nil {
		t.Fatal(err)
	}
	if err := <-gcDone; err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(ref); err != nil {
		t.Fatalf("the image pushed during the wait, after GC: %v", err)
	}
}

type signalReader struct {
	io.ReadCloser
	first func()
}

func (s *signalReader) Read(p []byte) (int, error) {
	s.first()
	return s.ReadCloser.Read(p)
}
