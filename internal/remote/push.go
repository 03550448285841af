package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
)

// pushJobs is how many blobs a push uploads at once.
const pushJobs = 4

// writeOptions are go-containerregistry's options for a push through tr.
// tr is an authenticated *transport.Wrapper, so go-containerregistry adds
// neither its own auth nor its own retries; uploads as a whole are retried
// with this client's policy.
func (c *Client) writeOptions(ctx context.Context, tr http.RoundTripper, progress chan<- v1.Update) []remote.Option {
	p := c.retry
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithJobs(pushJobs),
		remote.WithUserAgent(c.userAgent),
		remote.WithRetryBackoff(remote.Backoff{Duration: p.InitialDelay, Factor: 2, Jitter: 0.5, Steps: p.MaxAttempts, Cap: p.MaxDelay}),
		remote.WithRetryPredicate(retryableUpload),
		remote.WithTransport(tr),
	}
	if progress != nil {
		opts = append(opts, remote.WithProgress(progress))
	}
	return opts
}

// retryableUpload decides whether a failed blob upload is tried again from
// the start: uploads (POST, PATCH) are not retried by the transport, so a
// 5xx or 429 lands here.
func retryableUpload(err error) bool {
	var terr *transport.Error
	if errors.As(err, &terr) {
		return retryableStatus(terr.StatusCode)
	}
	return retryableError(err)
}

// Push uploads img and tags it as ref (a tag or digest reference). Updates
// go to progress if it is not nil; as in go-containerregistry, progress is
// closed when the push ends.
func (c *Client) Push(ctx context.Context, ref string, img v1.Image, progress chan<- v1.Update) error {
	r, err := c.ParseReference(ref)
	if err != nil {
		if progress != nil {
			close(progress)
		}
		return err
	}
	repo := r.Context()
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PushScope))
	if err != nil {
		if progress != nil {
			close(progress)
		}
		return err
	}
	if err := remote.Write(r, img, c.writeOptions(ctx, tr, progress)...); err != nil {
		return fmt.Errorf("remote: push %s: %w", ref, explain(err, repo.RegistryStr()))
	}
	return nil
}

// PushIndex uploads an image index, its images and their blobs, and tags it
// as ref. progress is handled as in Push.
func (c *Client) PushIndex(ctx context.Context, ref string, idx v1.ImageIndex, progress chan<- v1.Update) error {
	r, err := c.ParseReference(ref)
	if err != nil {
		if progress != nil {
			close(progress)
		}
		return err
	}
	repo := r.Context()
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PushScope))
	if err != nil {
		if progress != nil {
			close(progress)
		}
		return err
	}
	if err := remote.WriteIndex(r, idx, c.writeOptions(ctx, tr, progress)...); err != nil {
		return fmt.Errorf("remote: push %s: %w", ref, explain(err, repo.RegistryStr()))
	}
	return nil
}

// Catalog lists the repositories of registryHost ("host:port") whose name
// is prefix or lies under it ("proj" matches "proj/repo/img", not
// "project/x"); an empty prefix lists all. The result is sorted.
func (c *Client) Catalog(ctx context.Context, registryHost, prefix string) ([]string, error) {
	reg, err := c.ParseRegistry(registryHost)
	if err != nil {
		return nil, err
	}
	tr, err := c.transportFor(ctx, reg, "registry:catalog:*")
	if err != nil {
		return nil, err
	}
	all, err := c.catalog(ctx, c.httpClient(tr), reg.Scheme()+"://"+reg.RegistryStr()+"/v2/_catalog")
	if err != nil {
		return nil, fmt.Errorf("remote: catalog of %s: %w", registryHost, explain(err, registryHost))
	}
	prefix = strings.Trim(prefix, "/")
	var out []string
	for _, r := range all {
		if prefix == "" || r == prefix || strings.HasPrefix(r, prefix+"/") {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out, nil
}

// catalog reads every page of /v2/_catalog, following Link headers. It
// never sends n: distribution refuses an n above its catalog.maxentries,
// which a client cannot know, while without n every server picks a page
// size it accepts.
func (c *Client) catalog(ctx context.Context, hc *http.Client, u string) ([]string, error) {
	var all []string
	for pages := 0; u != ""; pages++ {
		if pages >= maxCatalogPages {
			return nil, fmt.Errorf("more than %d catalog pages", maxCatalogPages)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		var page struct {
			Repositories []string `json:"repositories"`
		}
		err = transport.CheckError(resp, http.StatusOK)
		if err == nil {
			err = json.NewDecoder(io.LimitReader(resp.Body, maxManifestBytes)).Decode(&page)
		}
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		all = append(all, page.Repositories...)
		next, err := nextLink(resp.Request.URL, resp.Header.Get("Link"))
		if err != nil {
			return nil, err
		}
		if next == u || len(page.Repositories) == 0 {
			break
		}
		u = next
	}
	return all, nil
}

// maxCatalogPages stops a registry whose Link headers loop.
const maxCatalogPages = 100000

// nextLink resolves the rel="next" target of a Link header against base.
func nextLink(base *url.URL, link string) (string, error) {
	for _, part := range strings.Split(link, ",") {
		target, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) && !strings.Contains(params, "rel=next") {
			continue
		}
		target = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(target), "<"), ">")
		u, err := base.Parse(target)
		if err != nil {
			return "", fmt.Errorf("malformed Link header %q: %w", link, err)
		}
		return u.String(), nil
	}
	return "", nil
}

// Tags lists the tags of repo ("HOST/PATH"), sorted.
func (c *Client) Tags(ctx context.Context, repo string) ([]string, error) {
	r, err := c.ParseRepository(repo)
	if err != nil {
		return nil, err
	}
	tr, err := c.transportFor(ctx, r.Registry, r.Scope(transport.PullScope))
	if err != nil {
		return nil, err
	}
	tags, err := remote.List(r, remote.WithContext(ctx), remote.WithTransport(tr), remote.WithUserAgent(c.userAgent))
	if err != nil {
		return nil, fmt.Errorf("remote: tags of %s: %w", repo, explain(err, r.RegistryStr()))
	}
	slices.Sort(tags)
	return tags, nil
}

// PutManifest uploads a manifest document as it is (its blobs must already be
// in the repository) and returns its digest. It is for tools and tests that
// build manifests by hand; images are pushed with Push.
func (c *Client) PutManifest(ctx context.Context, ref string, raw []byte, mediaType string) (digest.Digest, error) {
	r, err := c.ParseReference(ref)
	if err != nil {
		return "", err
	}
	repo := r.Context()
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PushScope))
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, registryURL(repo, "manifests", r.Identifier()), bytes.NewReader(raw))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := c.httpClient(tr).Do(req)
	if err != nil {
		return "", fmt.Errorf("remote: put manifest %s: %w", ref, err)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusCreated); err != nil {
		return "", fmt.Errorf("remote: put manifest %s: %w", ref, explain(err, repo.RegistryStr()))
	}
	return digest.FromBytes(raw), nil
}
