package streamfs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/remote"
)

// ErrNoIndex is returned by an IndexSource that has no index for a layer.
var ErrNoIndex = errors.New("streamfs: no index for layer")

// IndexSource finds the index of a layer blob, for example the index
// service of riffle serve. It returns an error wrapping ErrNoIndex when it
// has none.
type IndexSource interface {
	LayerIndex(ctx context.Context, repo string, layer ocispec.Descriptor) (*index.Index, error)
}

// WindowSource gives the stored gzip window of span n of a layer whose
// index came detached (index.Index.Detach), for example the index service
// of riffle serve. A window is layer data: repo names the repository the
// layer is read from, so that a service can check the caller may read it
// there. The layer checks the window against the index.
type WindowSource interface {
	Window(ctx context.Context, repo string, layer digest.Digest, n int) ([]byte, error)
}

// OpenOptions configures Open.
type OpenOptions struct {
	// Platform selects the image of a multi-platform index (nil: the
	// running platform).
	Platform *v1.Platform
	// Indexes is asked first for each layer's index; nil asks nobody.
	Indexes IndexSource
	// Windows gives the windows of detached indexes (usually the same
	// service as Indexes). A detached index without it makes the layer
	// not eligible.
	Windows WindowSource
	// Build indexes layers the source has none for by reading each such
	// layer once from the registry. Without it a missing index makes the
	// image not eligible.
	Build bool
	// SpanSize is passed to index.Build (0: index.DefaultSpanSize).
	SpanSize int64
	// Parallel bounds concurrent index fetches and builds (default 4).
	Parallel int
}

// Open resolves ref with client and returns the Image to Mount, with an
// index for every layer, or a *NotEligibleError saying why the image
// cannot be streamed (the caller then pulls it in full). Errors that would
// stop a full pull too (the reference, the registry, a corrupt layer) are
// returned as they are.
func Open(ctx context.Context, client *remote.Client, ref string, opts OpenOptions) (Image, *remote.Image, error) {
	r, err := client.ParseReference(ref)
	if err != nil {
		return Image{}, nil, err
	}
	img, err := client.ResolveManifest(ctx, r, opts.Platform)
	if err != nil {
		return Image{}, nil, err
	}
	out, err := OpenImage(ctx, client, img, opts)
	if err != nil {
		return Image{}, nil, err
	}
	return out, img, nil
}

// OpenImage is Open for an image already resolved (opts.Platform is not
// used): it saves the caller a second round trip for the manifest. An img
// without its config (remote.Client.ResolveManifest) gets it fetched
// alongside the indexes. The Image is named by img.Reference.
func OpenImage(ctx context.Context, client *remote.Client, img *remote.Image, opts OpenOptions) (Image, error) {
	ref := img.Reference.String()
	layers := img.Manifest.Layers
	for _, d := range layers {
		if len(d.URLs) > 0 || strings.Contains(d.MediaType, "nondistributable") || strings.Contains(d.MediaType, "foreign") {
			return Image{}, NotEligible(d.Digest, "it is a foreign (non-distributable) layer, which only its own URLs serve")
		}
	}
	par := opts.Parallel
	if par <= 0 {
		par = 4
	}
	// The config and every layer's index are independent: fetch them all
	// at once (one round trip before the first read, not 1+layers), and
	// check the diffIDs once both are in.
	out := Image{Name: ref, Layers: make([]Layer, len(layers))}
	indexes := make([]*index.Index, len(layers))
	g, gctx := errgroup.WithContext(ctx)
	if img.RawConfig == nil { // resolved without its config (Open)
		g.Go(func() error { return client.FetchConfig(gctx, img) })
	}
	sem := make(chan struct{}, par)
	repo := img.Repository.String()
	for i, desc := range layers {
		g.Go(func() error {
			select {
			case sem <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			defer func() { <-sem }()
			blob, err := client.RepositoryBlob(gctx, img.Repository, desc.Digest, desc.Size)
			if err != nil {
				return err
			}
			x, err := layerIndex(gctx, repo, desc, blob, opts)
			if err != nil {
				return err
			}
			if x.BlobDigest != desc.Digest {
				return fmt.Errorf("streamfs: the index for layer %s describes blob %s", desc.Digest, x.BlobDigest)
			}
			l, err := IndexLayer(x, repo, blob, opts.Windows)
			if err != nil {
				return err
			}
			indexes[i], out.Layers[i] = x, l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return Image{}, err
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return Image{}, fmt.Errorf("streamfs: %s: the manifest has %d layers but the config %d diff_ids; the image is malformed, rebuild it", ref, len(layers), len(diffIDs))
	}
	for i, x := range indexes {
		if x.DiffID != "" && x.DiffID != diffIDs[i] {
			return Image{}, fmt.Errorf("streamfs: layer %s uncompresses to %s but the config says %s; the image is corrupt", layers[i].Digest, x.DiffID, diffIDs[i])
		}
	}
	out.DiffIDs = append([]digest.Digest(nil), diffIDs...)
	return out, nil
}

func layerIndex(ctx context.Context, repo string, desc ocispec.Descriptor, blob *remote.Blob, opts OpenOptions) (*index.Index, error) {
	if opts.Indexes != nil {
		x, err := opts.Indexes.LayerIndex(ctx, repo, desc)
		if err == nil {
			return x, nil
		}
		if !errors.Is(err, ErrNoIndex) {
			return nil, err
		}
	}
	if !opts.Build {
		return nil, NotEligible(desc.Digest, "no index was found for it; index the image (riffle serve indexes pushed images) or allow building indexes")
	}
	return BuildIndex(ctx, blob, desc, opts.SpanSize)
}

// BuildIndex indexes layer desc by reading its blob once. A layer that
// cannot be indexed gives a *NotEligibleError; a registry or transfer
// failure (which would stop a full pull too) is returned as it is.
func BuildIndex(ctx context.Context, blob *remote.Blob, desc ocispec.Descriptor, spanSize int64) (*index.Index, error) {
	rc, err := blob.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	x, err := index.Build(rc, desc.MediaType, index.Options{SpanSize: spanSize})
	if err != nil {
		// A registry that failed or sent the wrong blob would fail a
		// full pull too: that is an error, not a reason to fall back.
		var netErr net.Error
		if ctx.Err() != nil || errors.As(err, &netErr) || errors.Is(err, remote.ErrTimeout) || errors.Is(err, remote.ErrDigestMismatch) {
			return nil, fmt.Errorf("streamfs: layer %s: %w", desc.Digest, err)
		}
		return nil, NotEligible(desc.Digest, "indexing it failed: %v", err)
	}
	return x, nil
}
