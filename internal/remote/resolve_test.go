package remote_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

func TestResolveOCIAndDockerManifests(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()

	for _, tc := range []struct {
		name      string
		spec      func() v1.Image
		mediaType string
	}{
		{"oci", func() v1.Image { return build(t, smallSpec(1)) }, ocispec.MediaTypeImageManifest},
		{"docker", func() v1.Image { return build(t, smallSpec(2).Docker()) }, remote.MediaTypeDockerManifest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.spec()
			ref := r.host + "/my-project/my-repo/" + tc.name + ":v1"
			if err := c.Push(ctx, ref, img, nil); err != nil {
				t.Fatal(err)
			}
			got, err := c.Resolve(ctx, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != mustDigest(t, img) {
				t.Errorf("digest = %s, want %s", got.Digest, mustDigest(t, img))
			}
			if got.MediaType != tc.mediaType {
				t.Errorf("media type = %q, want %q", got.MediaType, tc.mediaType)
			}
			raw, _ := img.RawManifest()
			if string(got.RawManifest) != string(raw) {
				t.Errorf("raw manifest differs from the pushed one")
			}
			if got.Repository.RepositoryStr() != "my-project/my-repo/"+tc.name {
				t.Errorf("repository = %q", got.Repository.RepositoryStr())
			}
			layers, _ := img.Layers()
			if len(got.Manifest.Layers) != len(layers) {
				t.Fatalf("%d layers, want %d", len(got.Manifest.Layers), len(layers))
			}
			for i, l := range layers {
				d, _ := l.Digest()
				mt, _ := l.MediaType()
				if got.Manifest.Layers[i].Digest.String() != d.String() || got.Manifest.Layers[i].MediaType != string(mt) {
					t.Errorf("layer %d = %s %s, want %s %s", i, got.Manifest.Layers[i].Digest, got.Manifest.Layers[i].MediaType, d, mt)
				}
			}
			if got.Config.OS != "linux" || got.Config.Architecture != runtime.GOARCH {
				t.Errorf("config platform = %s/%s", got.Config.OS, got.Config.Architecture)
			}
			if got.Platform.OS != "linux" || got.IndexDigest != "" {
				t.Errorf("platform = %+v, index digest %q", got.Platform, got.IndexDigest)
			}
			if len(got.Config.RootFS.DiffIDs) != len(layers) {
				t.Errorf("config has %d diff IDs, want %d", len(got.Config.RootFS.DiffIDs), len(layers))
			}
			// By digest too.
			byDigest, err := c.Resolve(ctx, got.Repository.Name()+"@"+got.Digest.String(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if byDigest.Digest != got.Digest {
				t.Errorf("by digest: %s, want %s", byDigest.Digest, got.Digest)
			}
		})
	}
}

// platformImage is a small image whose config says platform p.
func platformImage(t *testing.T, p v1.Platform, docker bool) v1.Image {
	t.Helper()
	spec := smallSpec(uint64(len(p.Architecture) + len(p.Variant)))
	spec.OS, spec.Architecture = p.OS, p.Architecture
	if docker {
		spec = spec.Docker()
	}
	img := build(t, spec)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.Variant = p.Variant
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestResolveIndexAndManifestListPlatforms(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()

	platforms := []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
		{OS: "linux", Architecture: "arm", Variant: "v7"},
	}
	for _, docker := range []bool{false, true} {
		name, idxType := "oci-index", ocispec.MediaTypeImageIndex
		if docker {
			name, idxType = "docker-list", remote.MediaTypeDockerManifestList
		}
		t.Run(name, func(t *testing.T) {
			var idx v1.ImageIndex = empty.Index
			if docker {
				idx = mutate.IndexMediaType(idx, types.DockerManifestList)
			}
			want := map[string]digest.Digest{}
			for _, p := range platforms {
				img := platformImage(t, p, docker)
				want[p.String()] = mustDigest(t, img)
				p := p
				idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
			}
			// An attestation manifest, as BuildKit adds, must never be chosen.
			att := build(t, smallSpec(99))
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
				Platform:    &v1.Platform{OS: "unknown", Architecture: "unknown"},
				Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest"},
			}})
			ref := r.host + "/p/multi/" + name + ":latest"
			if err := c.PushIndex(ctx, ref, idx, nil); err != nil {
				t.Fatal(err)
			}
			idxDigest, _ := idx.Digest()

			for _, p := range platforms {
				got, err := c.Resolve(ctx, ref, &p)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if got.Digest != want[p.String()] {
					t.Errorf("%s: digest %s, want %s", p, got.Digest, want[p.String()])
				}
				if got.IndexDigest.String() != idxDigest.String() {
					t.Errorf("%s: index digest %s, want %s", p, got.IndexDigest, idxDigest)
				}
				if got.Platform.Architecture != p.Architecture || got.Platform.Variant != p.Variant {
					t.Errorf("%s: platform %+v", p, got.Platform)
				}
				if got.Config.Architecture != p.Architecture {
					t.Errorf("%s: config architecture %q", p, got.Config.Architecture)
				}
			}
			// arm64 without a variant matches v8.
			got, err := c.Resolve(ctx, ref, &v1.Platform{OS: "linux", Architecture: "arm64"})
			if err != nil || got.Digest != want["linux/arm64/v8"] {
				t.Errorf("linux/arm64: %v, %v", got, err)
			}
			// nil means linux on this machine's architecture.
			if def := remote.DefaultPlatform(); def.Architecture == "amd64" || def.Architecture == "arm64" {
				got, err := c.Resolve(ctx, ref, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got.Platform.Architecture != runtime.GOARCH {
					t.Errorf("default platform chose %+v", got.Platform)
				}
			}
			_, err = c.Resolve(ctx, ref, &v1.Platform{OS: "linux", Architecture: "s390x"})
			if !errors.Is(err, remote.ErrNoMatchingPlatform) {
				t.Fatalf("s390x: err = %v, want ErrNoMatchingPlatform", err)
			}
			for _, s := range []string{"linux/s390x", "linux/amd64", "linux/arm64/v8", "linux/arm/v7"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
			if strings.Contains(err.Error(), "unknown") {
				t.Errorf("error %q lists the attestation manifest", err)
			}
			_ = idxType
		})
	}
}

// A Docker schema 1 manifest, as old registries still serve for images
// pushed by Docker < 1.10. Distribution refuses to store these, so a
// wrapper serves it in front of the real registry.
const schema1Manifest = `{
   "schemaVersion": 1,
   "name": "p/old/img",
   "tag": "v1",
   "architecture": "amd64",
   "fsLayers": [
      {"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}
   ],
   "history": [
      {"v1Compatibility": "{\"id\":\"e45a5af57b00862e5ef5782a9925979a02ba2b12dff832fd0991335f4a11e5c5\",\"architecture\":\"amd64\",\"os\":\"linux\"}"}
   ],
   "signatures": [
      {"header": {"jwk": {"crv": "P-256", "kty": "EC", "x": "x", "y": "y"}, "alg": "ES256"}, "signature": "c2ln", "protected": "e30"}
   ]
}`

func TestSchema1Refused(t *testing.T) {
	r := startRegistry(t, registry.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			ct := ""
			switch req.URL.Path {
			case "/v2/p/old/img/manifests/v1":
				ct = remote.MediaTypeDockerSchema1JWS
			case "/v2/p/old/img/manifests/unsigned":
				ct = remote.MediaTypeDockerSchema1
			case "/v2/p/old/img/manifests/generic":
				ct = "application/json" // an old registry's generic type
			default:
				next.ServeHTTP(w, req)
				return
			}
			w.Header().Set("Content-Type", ct)
			w.Header().Set("Docker-Content-Digest", digest.FromString(schema1Manifest).String())
			w.Write([]byte(schema1Manifest))
		})
	})
	c := newClient(remote.Options{})
	for _, tag := range []string{"v1", "unsigned", "generic"} {
		_, err := c.Resolve(context.Background(), r.host+"/p/old/img:"+tag, nil)
		if !errors.Is(err, remote.ErrSchema1) {
			t.Fatalf("%s: err = %v, want ErrSchema1", tag, err)
		}
		for _, s := range []string{"schema 1", "re-push", r.host + "/p/old/img:" + tag} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not say %q", tag, err, s)
			}
		}
	}
}

func TestBadReferences(t *testing.T) {
	c := newClient(remote.Options{})
	for _, tc := range []struct{ ref, rule string }{
		{"", "empty"},
		{"127.0.0.1:5000/Proj/img:v1", "lowercase"},
		{"127.0.0.1:5000/proj/img:v 1", "whitespace"},
		{"127.0.0.1:5000/proj/im$g:v1", `"im$g" must be lowercase`},
		{"127.0.0.1:5000/proj/img:-v1", `tag "-v1"`},
		{"127.0.0.1:5000/proj/img@sha256:xyz", "ALGORITHM:HEX"},
		{"127.0.0.1:99999/proj/img:v1", "port"},
		{"bad_host.example:5000/proj/img:v1", "registry host"},
		{"127.0.0.1:5000/proj//img", `component ""`},
	} {
		_, err := c.Resolve(context.Background(), tc.ref, nil)
		if !errors.Is(err, remote.ErrBadReference) {
			t.Errorf("%q: err = %v, want ErrBadReference", tc.ref, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.rule) || (tc.ref != "" && !strings.Contains(err.Error(), tc.ref)) {
			t.Errorf("%q: error %q should name the reference and %q", tc.ref, err, tc.rule)
		}
	}
	if _, err := c.ParseReference("127.0.0.1:5000/my-project/my_repo/a.b__c/img:v1.0-rc_1"); err != nil {
		t.Errorf("valid reference refused: %v", err)
	}
}

func TestPlainHTTPPolicy(t *testing.T) {
	c := newClient(remote.Options{Insecure: []string{"registry.internal:5000", "other.internal"}})
	for host, want := range map[string]bool{
		"127.0.0.1:5000":         true,
		"127.8.9.10":             true,
		"[::1]:5000":             true,
		"localhost:8080":         true,
		"registry.internal:5000": true,
		"registry.internal:5001": false,
		"other.internal:1234":    true,
		"10.0.0.5:5000":          false,
		"example.com":            false,
	} {
		if got := c.AllowsHTTP(host); got != want {
			t.Errorf("AllowsHTTP(%q) = %v, want %v", host, got, want)
		}
	}
	// go-containerregistry would fall back to http for RFC 1918 hosts; the
	// client refuses before anything is sent. Tests reach only loopback, so
	// the base transport dials nothing: the https attempt fails there, and
	// the http one must be refused by the policy above it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	noNet := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("test: no network beyond loopback")
	}}
	c2 := newClient(remote.Options{Transport: noNet, Retry: remote.RetryPolicy{MaxAttempts: 1}})
	_, err := c2.Resolve(ctx, "10.255.255.1:5000/p/img:v1", nil)
	if err == nil || !errors.Is(err, remote.ErrInsecureRefused) && !strings.Contains(err.Error(), "plain HTTP refused") {
		t.Errorf("RFC 1918 host over http: err = %v, want the plain-HTTP refusal", err)
	}
}

// TestSetConfig: a config kept from an earlier fetch is taken only if it is
// the manifest's config blob.
func TestSetConfig(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()
	ref := r.host + "/p/cfg:v1"
	if err := c.Push(ctx, ref, build(t, smallSpec(3)), nil); err != nil {
		t.Fatal(err)
	}
	full, err := c.Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := c.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.ResolveManifest(ctx, pr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.RawConfig != nil {
		t.Fatal("ResolveManifest fetched the config")
	}
	changed := append([]byte(nil), full.RawConfig...)
	changed[len(changed)-2] ^= 1
	for _, bad := range [][]byte{changed, full.RawConfig[:len(full.RawConfig)-1], nil} {
		if err := img.SetConfig(bad); !errors.Is(err, remote.ErrDigestMismatch) {
			t.Errorf("SetConfig(%d bytes, not the config): %v, want ErrDigestMismatch", len(bad), err)
		}
	}
	if img.RawConfig != nil {
		t.Error("a refused config was kept")
	}
	if err := img.SetConfig(full.RawConfig); err != nil {
		t.Fatal(err)
	}
	if img.Config.RootFS.DiffIDs[0] != full.Config.RootFS.DiffIDs[0] || img.Platform.OS != full.Platform.OS || img.Platform.Architecture != full.Platform.Architecture {
		t.Errorf("SetConfig: config %+v platform %+v, want %+v %+v", img.Config.RootFS, img.Platform, full.Config.RootFS, full.Platform)
	}
}
