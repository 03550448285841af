package remote

import (
	"context"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// DeleteManifest deletes what ref (HOST/REPO:TAG or HOST/REPO@DIGEST) names
// in its registry, with the registry's own semantics: a tag reference
// removes the tag only (the manifest stays, reachable by digest and other
// tags); a digest reference removes the manifest and every tag pointing to
// it. A missing tag or manifest gives an error wrapping ErrNotFound.
func (c *Client) DeleteManifest(ctx context.Context, ref string) error {
	r, err := c.ParseReference(ref)
	if err != nil {
		return err
	}
	repo := r.Context()
	// Deleting needs the delete action; distribution's token servers
	// accept "*" for it, and a Basic-auth registry ignores scopes.
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope("delete"), repo.Scope(transport.PushScope))
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, registryURL(repo, "manifests", r.Identifier()), nil)
	if err != nil {
		return err
	}
	resp, err := c.httpClient(tr).Do(req)
	if err != nil {
		return fmt.Errorf("remote: delete %s: %w", ref, err)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusAccepted, http.StatusOK); err != nil {
		return fmt.Errorf("remote: delete %s: %w", ref, explain(err, repo.RegistryStr()))
	}
	return nil
}
