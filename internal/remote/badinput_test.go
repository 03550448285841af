package remote_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// lyingLayer claims a digest its bytes do not have.
type lyingLayer struct {
	v1.Layer
	claim v1.Hash
}

func (l lyingLayer) Digest() (v1.Hash, error) { return l.claim, nil }

// TestBadInput sends the registry what it must refuse, through the client,
// and checks each refusal is clear and that the server keeps serving.
func TestBadInput(t *testing.T) {
	r := startRegistry(t, registry.Options{MaxBlobBytes: 128 << 10}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()
	good := build(t, imagegenTiny())
	if err := c.Push(ctx, r.host+"/p/r/good:v1", good, nil); err != nil {
		t.Fatal(err)
	}
	stillServing := func(t *testing.T) {
		t.Helper()
		img, err := c.Resolve(ctx, r.host+"/p/r/good:v1", nil)
		if err != nil || img.Digest != mustDigest(t, good) {
			t.Fatalf("the registry stopped serving: %v", err)
		}
	}

	t.Run("malformed manifest", func(t *testing.T) {
		for _, raw := range []string{
			`{not json`,
			`{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:nothex", "size": 2}, "layers": []}`,
		} {
			_, err := c.PutManifest(ctx, r.host+"/p/r/bad:v1", []byte(raw), ocispec.MediaTypeImageManifest)
			if err == nil || !strings.Contains(err.Error(), "MANIFEST_INVALID") && !strings.Contains(err.Error(), "invalid checksum digest") {
				t.Errorf("malformed manifest %.20q: err = %v, want MANIFEST_INVALID", raw, err)
			}
			t.Logf("malformed manifest: %v", err)
		}
		// Well-formed, but naming a config blob the registry does not have.
		missing := digest.FromString("absent")
		raw := `{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "` + missing.String() + `", "size": 6}, "layers": []}`
		_, err := c.PutManifest(ctx, r.host+"/p/r/bad:v1", []byte(raw), ocispec.MediaTypeImageManifest)
		if err == nil || !strings.Contains(err.Error(), "MANIFEST_BLOB_UNKNOWN") {
			t.Errorf("manifest with a missing blob: err = %v, want MANIFEST_BLOB_UNKNOWN", err)
		}
		stillServing(t)
	})

	t.Run("digest mismatch", func(t *testing.T) {
		l := static.NewLayer([]byte("the real bytes"), types.OCILayer)
		liar := lyingLayer{Layer: l, claim: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}}
		img, err := mutate.AppendLayers(empty.Image, liar)
		if err != nil {
			t.Fatal(err)
		}
		err = c.Push(ctx, r.host+"/p/r/liar:v1", img, nil)
		if err == nil || !strings.Contains(err.Error(), "DIGEST_INVALID") {
			t.Fatalf("blob with the wrong digest: err = %v, want DIGEST_INVALID", err)
		}
		t.Logf("digest mismatch: %v", err)
		stillServing(t)
	})

	t.Run("invalid reference", func(t *testing.T) {
		_, err := c.Resolve(ctx, r.host+"/p/R/Img:v1", nil)
		if !errors.Is(err, remote.ErrBadReference) || !strings.Contains(err.Error(), "lowercase") {
			t.Errorf("uppercase reference: %v", err)
		}
		// The server must refuse such names itself too.
		for _, path := range []string{"/v2/p/R/Img/manifests/v1", "/v2/p/r/img/manifests/bad%20tag", "/v2/p/r/img/blobs/sha256:zz"} {
			resp, err := http.Get(r.srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("GET %s: %s, want a 4xx", path, resp.Status)
			}
			t.Logf("GET %s: %s %s", path, resp.Status, strings.TrimSpace(string(body)))
		}
		stillServing(t)
	})

	t.Run("oversized upload", func(t *testing.T) {
		big := build(t, smallSpec(31)) // a 300 KiB layer; the limit is 128 KiB
		err := c.Push(ctx, r.host+"/p/r/big:v1", big, nil)
		if err == nil || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("oversized push: err = %v, want the size limit named", err)
		}
		t.Logf("oversized upload: %v", err)
		stillServing(t)
		if err := c.Push(ctx, r.host+"/p/r/small:v1", build(t, imagegenTiny()), nil); err != nil {
			t.Fatalf("a small push after the refused one: %v", err)
		}
	})
}
