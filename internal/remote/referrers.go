package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrers lists the manifests in repo whose subject is the manifest
// subject, keeping those of artifactType when it is not empty. It asks the
// OCI 1.1 referrers API and, on registries without it, reads the referrers
// tag schema ("sha256-<hex>"). A subject without referrers yields none and
// no error.
func (c *Client) Referrers(ctx context.Context, repo name.Repository, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PullScope))
	if err != nil {
		return nil, err
	}
	hc := c.httpClient(tr)
	u := fmt.Sprintf("%s://%s/v2/%s/referrers/%s", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), subject)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageIndex)
	var raw []byte
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("remote: referrers of %s: %w", subject, err)
	}
	if resp.StatusCode == http.StatusOK && strings.HasPrefix(resp.Header.Get("Content-Type"), ocispec.MediaTypeImageIndex) {
		raw, err = readLimited(resp, maxManifestBytes)
		if err != nil {
			return nil, fmt.Errorf("remote: referrers of %s: %w", subject, err)
		}
	} else {
		resp.Body.Close()
		tag := strings.ReplaceAll(subject.String(), ":", "-")
		raw, _, _, err = c.fetchManifest(ctx, hc, repo, tag)
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("remote: referrers of %s (tag %s): %w", subject, tag, err)
		}
	}
	var idx ocispec.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("remote: referrers of %s: %w", subject, err)
	}
	var out []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if artifactType == "" || d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil
}

// Manifest fetches the manifest ref names in repo as it is stored, with its
// media type; a digest ref is verified.
func (c *Client) Manifest(ctx context.Context, repo name.Repository, ref string) ([]byte, string, digest.Digest, error) {
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PullScope))
	if err != nil {
		return nil, "", "", err
	}
	raw, mt, d, err := c.fetchManifest(ctx, c.httpClient(tr), repo, ref)
	if err != nil {
		return nil, "", "", fmt.Errorf("remote: manifest %s in %s: %w", ref, repo, explain(err, repo.RegistryStr()))
	}
	return raw, mt, d, nil
}

// SmallBlob reads a blob of at most limit bytes into memory, verified
// against desc's size and digest.
func (c *Client) SmallBlob(ctx context.Context, repo name.Repository, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PullScope))
	if err != nil {
		return nil, err
	}
	b, err := c.fetchSmallBlob(ctx, c.httpClient(tr), repo, desc, limit)
	if err != nil {
		return nil, fmt.Errorf("remote: %w", err)
	}
	return b, nil
}

func readLimited(resp *http.Response, limit int64) ([]byte, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("response is larger than %d bytes", limit)
	}
	return b, nil
}
