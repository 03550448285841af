package remote_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// pullAndVerify resolves ref and streams every layer, hashing the bytes
// itself (independently of Open's own verification), and returns the
// manifest digest.
func pullAndVerify(t *testing.T, c *remote.Client, ref string) *remote.Image {
	t.Helper()
	ctx := context.Background()
	img, err := c.Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range img.Manifest.Layers {
		b, err := c.RepositoryBlob(ctx, img.Repository, l.Digest, l.Size)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := b.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sum, n, err := sha256Hex(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if n != l.Size || "sha256:"+sum != l.Digest.String() {
			t.Fatalf("layer %d: pulled %d bytes hashing to sha256:%s, want %d bytes %s", i, n, sum, l.Size, l.Digest)
		}
	}
	return img
}

// TestLargeRoundTrip is the acceptance test of issue 2: a generated 5-layer
// image with a 300 MB layer is pushed and pulled back byte-identical.
func TestLargeRoundTrip(t *testing.T) {
	size := int64(300 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	spec := imagegen.Large(size)
	// The big layer's blob itself must be 300 MB: incompressible content
	// under gzip, or, under -race (where the compressor would dominate the
	// run), no compression at all.
	spec.Layers[1].Entries[1].Fill = imagegen.Random
	if raceEnabled {
		spec.Layers[1].Compression = imagegen.Uncompressed
	}
	start := time.Now()
	src := build(t, spec)
	built := time.Since(start)

	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ref := r.host + "/p/large/img:v1"
	start = time.Now()
	if err := c.Push(context.Background(), ref, src, nil); err != nil {
		t.Fatal(err)
	}
	pushed := time.Since(start)

	start = time.Now()
	img := pullAndVerify(t, c, ref)
	pulled := time.Since(start)

	if img.Digest != mustDigest(t, src) {
		t.Fatalf("manifest digest %s, want %s", img.Digest, mustDigest(t, src))
	}
	layers, _ := src.Layers()
	if len(layers) != 5 || len(img.Manifest.Layers) != 5 {
		t.Fatalf("%d layers pushed, %d pulled, want 5", len(layers), len(img.Manifest.Layers))
	}
	var biggest int64
	for i, l := range layers {
		d, _ := l.Digest()
		sz, _ := l.Size()
		biggest = max(biggest, sz)
		if img.Manifest.Layers[i].Digest.String() != d.String() || img.Manifest.Layers[i].Size != sz {
			t.Errorf("layer %d: pulled %s/%d, pushed %s/%d", i, img.Manifest.Layers[i].Digest, img.Manifest.Layers[i].Size, d, sz)
		}
	}
	if biggest < size {
		t.Errorf("the biggest layer blob is %d bytes, want at least %d", biggest, size)
	}
	t.Logf("5 layers, the biggest %d MB: built in %s, pushed in %s, pulled and verified in %s", biggest>>20, built.Round(time.Millisecond), pushed.Round(time.Millisecond), pulled.Round(time.Millisecond))
}

func TestDataSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() (*registry.Registry, *httptest.Server) {
		reg, err := registry.New(context.Background(), registry.Options{RootDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return reg, httptest.NewServer(reg)
	}
	reg, srv := start()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := newClient(remote.Options{})
	src := build(t, smallSpec(41))
	if err := c.Push(context.Background(), host+"/p/r/img:keep", src, nil); err != nil {
		t.Fatal(err)
	}
	before := pullAndVerify(t, c, host+"/p/r/img:keep")
	srv.Close()
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}

	reg, srv = start()
	defer func() { srv.Close(); reg.Close() }()
	host = strings.TrimPrefix(srv.URL, "http://")
	after := pullAndVerify(t, newClient(remote.Options{}), host+"/p/r/img:keep")
	if after.Digest != before.Digest || after.Digest != mustDigest(t, src) {
		t.Fatalf("after restart: digest %s, before %s", after.Digest, before.Digest)
	}
	for i := range before.Manifest.Layers {
		if after.Manifest.Layers[i].Digest != before.Manifest.Layers[i].Digest {
			t.Errorf("layer %d changed across the restart", i)
		}
	}
	if after.Manifest.Config.Digest != before.Manifest.Config.Digest {
		t.Errorf("config changed across the restart")
	}
}

// TestSkopeoCopy pushes an OCI layout with skopeo, as users will, and
// reads it back with the client.
func TestSkopeoCopy(t *testing.T) {
	skopeo := testutil.RequiresBinary(t, "skopeo")
	r := startRegistry(t, registry.Options{}, nil)
	dir := filepath.Join(t.TempDir(), "layout")
	// skopeo recompresses zstd and uncompressed layers for registries;
	// gzip layers go through unchanged, so digests can be compared.
	spec := imagegen.AllFeatures()
	for i := range spec.Layers {
		spec.Layers[i].Compression = imagegen.Gzip
		spec.Layers[i].ZstdFrameSize = 0
		spec.Layers[i].Level = 0
	}
	src := build(t, spec)
	if err := imagegen.WriteOCILayout(dir, src, "v1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, skopeo, "copy", "--dest-tls-verify=false", "oci:"+dir+":v1", "docker://"+r.host+"/p/skopeo/img:v1")
	cmd.Env = append(cmd.Environ(), "HOME="+t.TempDir()) // no user registries.conf or auth
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	c := newClient(remote.Options{})
	img := pullAndVerify(t, c, r.host+"/p/skopeo/img:v1")
	srcLayers, _ := src.Layers()
	if len(img.Manifest.Layers) != len(srcLayers) {
		t.Fatalf("%d layers, want %d", len(img.Manifest.Layers), len(srcLayers))
	}
	for i, l := range srcLayers {
		d, _ := l.Digest()
		if img.Manifest.Layers[i].Digest.String() != d.String() {
			t.Errorf("layer %d: %s, want %s", i, img.Manifest.Layers[i].Digest, d)
		}
	}
	// skopeo keeps an OCI manifest as it is: same digest as in the layout.
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	if want := digest.Digest(im.Manifests[0].Digest.String()); img.Digest != want {
		t.Errorf("digest after skopeo copy %s, layout has %s", img.Digest, want)
	}
	tags, err := c.Tags(context.Background(), r.host+"/p/skopeo/img")
	if err != nil || fmt.Sprint(tags) != "[v1]" {
		t.Errorf("tags = %v, %v", tags, err)
	}
}
