package registry_test

import (
	"context"
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
