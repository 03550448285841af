package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types Resolve understands beyond the ocispec constants.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerSchema1      = "application/vnd.docker.distribution.manifest.v1+json"
	MediaTypeDockerSchema1JWS   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

// Size limits for documents read into memory. A registry that sends more is
// broken or hostile.
const (
	maxManifestBytes = 4 << 20
	maxConfigBytes   = 64 << 20
	maxIndexDepth    = 3
)

// ErrSchema1 is returned for a Docker schema 1 manifest, which has no
// content-addressed config and cannot be pulled lazily.
var ErrSchema1 = errors.New("manifest schema 1 is not supported; re-push the image with a current client (e.g. skopeo copy or docker push from Docker >= 1.10)")

// ErrNoMatchingPlatform is returned when an image index has no manifest for
// the requested platform. The error lists the platforms it has.
var ErrNoMatchingPlatform = errors.New("no image for the requested platform")

// ErrUnsupportedManifest is returned for a manifest that is neither an image
// manifest nor an index (an artifact, or an unknown media type).
var ErrUnsupportedManifest = errors.New("unsupported manifest")

// ErrDigestMismatch is returned when content does not hash to its digest.
var ErrDigestMismatch = errors.New("content does not match its digest")

// Image is a reference resolved to one platform's image manifest.
type Image struct {
	// Reference is the reference as parsed (tag or digest).
	Reference name.Reference
	// Repository is where the image and its blobs live.
	Repository name.Repository
	// Digest, MediaType and RawManifest describe the platform's image
	// manifest (not the index it was selected from).
	Digest      digest.Digest
	MediaType   string
	RawManifest []byte
	// Manifest is RawManifest parsed. Docker schema 2 manifests have the
	// same shape; their media types are kept as the registry sent them.
	Manifest ocispec.Manifest
	// Config is the image configuration; RawConfig its bytes.
	Config    ocispec.Image
	RawConfig []byte
	// Platform is the image's platform: from the index entry it was
	// selected by, or else from its config.
	Platform ocispec.Platform
	// IndexDigest is the digest of the index or manifest list the image
	// was selected from, empty when the reference named a manifest.
	IndexDigest digest.Digest
}

// DefaultPlatform is the platform Resolve selects when given none: linux on
// the architecture Riffle runs on.
func DefaultPlatform() v1.Platform {
	p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if runtime.GOARCH == "arm" {
		p.Variant = "v7"
	}
	return p
}

// Resolve fetches the manifest and config of ref for platform (nil means
// [DefaultPlatform]). Indexes and Docker manifest lists are followed to the
// platform's manifest; a manifest named directly is returned whatever its
// platform.
func (c *Client) Resolve(ctx context.Context, ref string, platform *v1.Platform) (*Image, error) {
	r, err := c.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	return c.ResolveReference(ctx, r, platform)
}

// ResolveReference is Resolve for a parsed reference.
func (c *Client) ResolveReference(ctx context.Context, ref name.Reference, platform *v1.Platform) (*Image, error) {
	img, err := c.ResolveManifest(ctx, ref, platform)
	if err != nil {
		return nil, err
	}
	if err := c.FetchConfig(ctx, img); err != nil {
		return nil, err
	}
	return img, nil
}

// ResolveManifest is ResolveReference without the config: Config and
// RawConfig are left empty for FetchConfig, so a caller can fetch the
// config in parallel with the layers' indexes.
func (c *Client) ResolveManifest(ctx context.Context, ref name.Reference, platform *v1.Platform) (*Image, error) {
	want := DefaultPlatform()
	if platform != nil {
		want = *platform
	}
	repo := ref.Context()
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PullScope))
	if err != nil {
		return nil, err
	}
	hc := c.httpClient(tr)
	img := &Image{Reference: ref, Repository: repo}

	id := ref.Identifier()
	var fromIndex *ocispec.Descriptor
	for depth := 0; ; depth++ {
		raw, mt, dgst, err := c.fetchManifest(ctx, hc, repo, id)
		if err != nil {
			return nil, fmt.Errorf("remote: %s: %w", ref, explain(err, repo.RegistryStr()))
		}
		if fromIndex != nil && (dgst != fromIndex.Digest || int64(len(raw)) != fromIndex.Size) {
			return nil, fmt.Errorf("remote: %s: manifest %s: %w (the index lists size %d, got %d bytes)", ref, fromIndex.Digest, ErrDigestMismatch, fromIndex.Size, len(raw))
		}
		kind, mt, err := classify(raw, mt)
		if err != nil {
			return nil, fmt.Errorf("remote: %s: %w", ref, err)
		}
		if kind == kindManifest {
			img.Digest, img.MediaType, img.RawManifest = dgst, mt, raw
			break
		}
		if depth >= maxIndexDepth {
			return nil, fmt.Errorf("remote: %s: %w: indexes nested more than %d deep", ref, ErrUnsupportedManifest, maxIndexDepth)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("remote: %s: malformed image index %s: %w", ref, dgst, err)
		}
		if img.IndexDigest == "" {
			img.IndexDigest = dgst
		}
		d, err := selectPlatform(idx, want)
		if err != nil {
			return nil, fmt.Errorf("remote: %s: %w", ref, err)
		}
		fromIndex = &d
		if d.Platform != nil {
			img.Platform = *d.Platform
		}
		id = d.Digest.String()
	}

	if err := json.Unmarshal(img.RawManifest, &img.Manifest); err != nil {
		return nil, fmt.Errorf("remote: %s: malformed manifest %s: %w", ref, img.Digest, err)
	}
	if err := checkManifest(&img.Manifest); err != nil {
		return nil, fmt.Errorf("remote: %s: manifest %s: %w", ref, img.Digest, err)
	}
	return img, nil
}

// FetchConfig fetches the config of an image from ResolveManifest.
func (c *Client) FetchConfig(ctx context.Context, img *Image) error {
	ref, repo := img.Reference, img.Repository
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PullScope))
	if err != nil {
		return err
	}
	hc := c.httpClient(tr)
	cfg, err := c.fetchSmallBlob(ctx, hc, repo, img.Manifest.Config, maxConfigBytes)
	if err != nil {
		return fmt.Errorf("remote: %s: config: %w", ref, explain(err, repo.RegistryStr()))
	}
	return img.SetConfig(cfg)
}

// SetConfig gives img the config raw, for example kept from an earlier
// FetchConfig: it must be the manifest's config blob (its digest and size
// are checked) and parse.
func (img *Image) SetConfig(raw []byte) error {
	want := img.Manifest.Config
	if int64(len(raw)) != want.Size || !want.Digest.Algorithm().Available() || want.Digest.Algorithm().FromBytes(raw) != want.Digest {
		return fmt.Errorf("remote: %s: config: %w (want %s, %d bytes)", img.Reference, ErrDigestMismatch, want.Digest, want.Size)
	}
	img.RawConfig = raw
	if err := json.Unmarshal(raw, &img.Config); err != nil {
		return fmt.Errorf("remote: %s: malformed image config %s: %w", img.Reference, want.Digest, err)
	}
	if img.Platform.OS == "" && img.Platform.Architecture == "" {
		img.Platform = img.Config.Platform
	}
	return nil
}

// httpClient returns an HTTP client over tr whose redirects drop the
// Authorization header when they leave the registry's host (blob storage
// signs its URLs; it must never see registry credentials).
func (c *Client) httpClient(tr http.RoundTripper) *http.Client {
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if req.URL.Host != via[0].URL.Host {
				req.Header.Del("Authorization")
			}
			return nil
		},
	}
}

var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	MediaTypeDockerManifest,
	MediaTypeDockerManifestList,
	// Asked for so that a schema 1 image is recognised and refused with a
	// clear error instead of a confusing 404 or a conversion.
	MediaTypeDockerSchema1JWS,
	MediaTypeDockerSchema1,
}, ", ")

// fetchManifest GETs /v2/REPO/manifests/ID, verifying the digest when ID is
// one.
func (c *Client) fetchManifest(ctx context.Context, hc *http.Client, repo name.Repository, id string) ([]byte, string, digest.Digest, error) {
	u := registryURL(repo, "manifests", id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", "", err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", "", err
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestBytes+1))
	if err != nil {
		return nil, "", "", fmt.Errorf("reading manifest: %w", err)
	}
	if len(raw) > maxManifestBytes {
		return nil, "", "", fmt.Errorf("manifest is larger than %d bytes", maxManifestBytes)
	}
	mt := resp.Header.Get("Content-Type")
	if want, err := digest.Parse(id); err == nil {
		if got := want.Algorithm().FromBytes(raw); got != want {
			return nil, "", "", fmt.Errorf("manifest %s: %w (got %s)", want, ErrDigestMismatch, got)
		}
		return raw, mt, want, nil
	}
	return raw, mt, digest.FromBytes(raw), nil
}

type manifestKind int

const (
	kindManifest manifestKind = iota
	kindIndex
)

// classify tells an image manifest from an index by media type, falling
// back to the document's own fields when the registry's Content-Type is
// generic. It returns the effective media type.
func classify(raw []byte, contentType string) (manifestKind, string, error) {
	var probe struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Manifests     json.RawMessage   `json:"manifests"`
		Config        json.RawMessage   `json:"config"`
		FSLayers      []json.RawMessage `json:"fsLayers"`
	}
	perr := json.Unmarshal(raw, &probe)
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	if mt == "" || mt == "application/json" || mt == "text/plain" || mt == "application/octet-stream" {
		mt = probe.MediaType
	}
	if mt == MediaTypeDockerSchema1 || mt == MediaTypeDockerSchema1JWS || (perr == nil && (probe.SchemaVersion == 1 || probe.FSLayers != nil)) {
		return 0, mt, ErrSchema1
	}
	if perr != nil {
		return 0, mt, fmt.Errorf("malformed manifest (%s): %w", contentType, perr)
	}
	switch mt {
	case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest:
		return kindManifest, mt, nil
	case ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList:
		return kindIndex, mt, nil
	case "":
		// OCI allows an empty mediaType; the shape decides.
		if probe.Manifests != nil {
			return kindIndex, ocispec.MediaTypeImageIndex, nil
		}
		if probe.Config != nil {
			return kindManifest, ocispec.MediaTypeImageManifest, nil
		}
	}
	return 0, mt, fmt.Errorf("%w: media type %q is neither an image manifest nor an index", ErrUnsupportedManifest, mt)
}

// checkManifest rejects manifests that would send later code chasing
// invalid digests.
func checkManifest(m *ocispec.Manifest) error {
	if err := m.Config.Digest.Validate(); err != nil {
		return fmt.Errorf("config digest %q: %w", m.Config.Digest, err)
	}
	if m.Config.Size < 0 {
		return fmt.Errorf("config size %d is negative", m.Config.Size)
	}
	for i, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil {
			return fmt.Errorf("layers[%d].digest %q: %w", i, l.Digest, err)
		}
		if l.Size < 0 {
			return fmt.Errorf("layers[%d].size %d is negative", i, l.Size)
		}
	}
	return nil
}

// selectPlatform picks the first entry of idx that matches want. Entries
// without a platform (and attestation manifests) only match when they are
// the index's sole image.
func selectPlatform(idx ocispec.Index, want v1.Platform) (ocispec.Descriptor, error) {
	var candidates []ocispec.Descriptor
	for _, d := range idx.Manifests {
		switch d.MediaType {
		case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList, "":
		default:
			continue
		}
		if d.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			continue
		}
		if d.Platform != nil && d.Platform.OS == "unknown" {
			continue
		}
		candidates = append(candidates, d)
	}
	for _, d := range candidates {
		if d.Platform != nil && platformMatches(*d.Platform, want) {
			if err := d.Digest.Validate(); err != nil {
				return ocispec.Descriptor{}, fmt.Errorf("index entry digest %q: %w", d.Digest, err)
			}
			return d, nil
		}
	}
	if len(candidates) == 1 && candidates[0].Platform == nil {
		return candidates[0], nil
	}
	var avail []string
	for _, d := range candidates {
		if d.Platform == nil {
			avail = append(avail, "(unspecified)")
			continue
		}
		avail = append(avail, platformString(*d.Platform))
	}
	if len(avail) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%w: the index lists no images", ErrNoMatchingPlatform)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: the index has no image for %s; available: %s (choose one with --platform)",
		ErrNoMatchingPlatform, want.String(), strings.Join(avail, ", "))
}

func platformMatches(have ocispec.Platform, want v1.Platform) bool {
	if have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	if want.Variant != "" && normVariant(have.Architecture, have.Variant) != normVariant(want.Architecture, want.Variant) {
		return false
	}
	if want.OSVersion != "" && have.OSVersion != want.OSVersion {
		return false
	}
	return true
}

// normVariant treats arm64's missing variant as v8, as containerd does.
func normVariant(arch, v string) string {
	if arch == "arm64" && v == "" {
		return "v8"
	}
	return v
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	if p.OSVersion != "" {
		s += ":" + p.OSVersion
	}
	return s
}

// PlatformString formats p as OS/ARCH[/VARIANT].
func PlatformString(p ocispec.Platform) string { return platformString(p) }

// fetchSmallBlob reads a blob of at most limit bytes into memory, verifying
// its size and digest.
func (c *Client) fetchSmallBlob(ctx context.Context, hc *http.Client, repo name.Repository, d ocispec.Descriptor, limit int64) ([]byte, error) {
	if d.Size > limit {
		return nil, fmt.Errorf("blob %s is %d bytes, more than the %d this client reads into memory", d.Digest, d.Size, limit)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, registryURL(repo, "blobs", d.Digest.String()), nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if int64(len(b)) != d.Size {
		return nil, fmt.Errorf("blob %s: %w: got %d bytes, the manifest says %d", d.Digest, ErrDigestMismatch, len(b), d.Size)
	}
	if got := d.Digest.Algorithm().FromBytes(b); got != d.Digest {
		return nil, fmt.Errorf("blob %s: %w (got %s)", d.Digest, ErrDigestMismatch, got)
	}
	return b, nil
}

// registryURL is the API URL of a manifest or blob in repo.
func registryURL(repo name.Repository, kind, id string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), kind, id)
}
