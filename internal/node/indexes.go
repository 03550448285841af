package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// IndexSource returns the one chain every caller uses to find the index
// of a layer of img, in this order:
//
//  1. the node cache (IndexKey): a warm node fetches no index;
//  2. Options.Indexes (riffle serve's own index service, or another
//     server's);
//  3. with Options.Referrers, index artifacts stored beside the image in
//     its registry;
//  4. unless Options.NoBuildIndexes, building it by reading the layer once.
//
// An index found in 2–4 is kept in the node cache. The chain says
// streamfs.ErrNoIndex (and Open then reports the image not eligible) only
// when every step had nothing.
func (n *Node) IndexSource(c *remote.Client, img *remote.Image) streamfs.IndexSource {
	return &chain{n: n, c: c, img: img}
}

type chain struct {
	n   *Node
	c   *remote.Client
	img *remote.Image

	refOnce sync.Once
	refs    *indexsvc.ReferrerSource
	refErr  error
}

func (ch *chain) LayerIndex(ctx context.Context, repo string, desc ocispec.Descriptor) (*index.Index, error) {
	n := ch.n
	cc, err := n.Cache()
	if err != nil {
		return nil, err
	}
	// A detached index is only as good as the windows this node may
	// fetch for it from repo: the cache keeps one by layer, and a layer
	// shared by two projects may come with windows for one of them only.
	if x := cachedIndex(ctx, cc, desc); x != nil && (!x.Detached || n.windows() != nil && cc.Has(windowsKey(desc.Digest, repo))) {
		return x, nil
	}
	x, err := ch.find(ctx, repo, desc)
	if err != nil {
		return nil, err
	}
	if err := storeIndex(ctx, cc, desc, x); err != nil {
		n.log.Warn("node: keeping a layer index in the cache failed", "layer", desc.Digest, "err", err)
	}
	if x.Detached {
		// Only Options.Indexes detaches, and it gives a detached index
		// only with windows for repo (indexsvc.HeaderLayerData).
		if err := cacheBytes(ctx, cc, windowsKey(desc.Digest, repo), windowsNote(desc.Digest, repo)); err != nil {
			n.log.Warn("node: noting a layer's windows in the cache failed", "layer", desc.Digest, "err", err)
		}
	}
	return x, nil
}

// windowsNote is the content of the cache entry saying that the index
// source gave layer's detached index with its windows for repo. It is
// kept as a blob, by digest (windowsKey), as a mark beside the index.
func windowsNote(layer digest.Digest, repo string) []byte {
	return []byte("riffle: windows of layer " + layer.String() + " from repository " + repo + "\n")
}

// windowsKey is the cache key of windowsNote.
func windowsKey(layer digest.Digest, repo string) string {
	return digest.FromBytes(windowsNote(layer, repo)).String()
}

// Window gives the windows of the detached indexes the chain returns
// (streamfs.WindowSource): they come from Options.Indexes, the only
// source that detaches them.
func (ch *chain) Window(ctx context.Context, repo string, layer digest.Digest, n int) ([]byte, error) {
	ws := ch.n.windows()
	if ws == nil {
		return nil, fmt.Errorf("node: layer %s: no index service to fetch windows from", layer)
	}
	return ws.Window(ctx, repo, layer, n)
}

// windows is Options.Indexes as a window source, or nil.
func (n *Node) windows() streamfs.WindowSource {
	ws, _ := n.opts.Indexes.(streamfs.WindowSource)
	return ws
}

// find asks the sources after the cache, in order.
func (ch *chain) find(ctx context.Context, repo string, desc ocispec.Descriptor) (*index.Index, error) {
	n := ch.n
	if n.opts.Indexes != nil {
		x, err := n.opts.Indexes.LayerIndex(ctx, repo, desc)
		if err == nil || !errors.Is(err, streamfs.ErrNoIndex) {
			return x, err
		}
	}
	if n.opts.Referrers {
		ch.refOnce.Do(func() { ch.refs, ch.refErr = indexsvc.LoadReferrers(ctx, ch.c, ch.img) })
		if ch.refErr != nil {
			n.log.Warn("node: reading index artifacts failed", "image", ch.img.Reference, "err", ch.refErr)
		} else if x, err := ch.refs.LayerIndex(ctx, repo, desc); err == nil {
			return x, nil
		}
	}
	if n.opts.NoBuildIndexes {
		return nil, fmt.Errorf("node: layer %s: %w", desc.Digest, streamfs.ErrNoIndex)
	}
	blob, err := ch.c.RepositoryBlob(ctx, ch.img.Repository, desc.Digest, desc.Size)
	if err != nil {
		return nil, err
	}
	return streamfs.BuildIndex(ctx, blob, desc, n.opts.SpanSize)
}

// cachedIndex returns desc's index from the cache, or nil. An entry that
// does not parse or describes another blob is ignored (and replaced by the
// next store).
func cachedIndex(ctx context.Context, cc *cache.Cache, desc ocispec.Descriptor) *index.Index {
	raw, ok := cachedBytes(ctx, cc, cache.IndexKey(desc.Digest))
	if !ok {
		return nil
	}
	x, err := index.Unmarshal(raw)
	if err != nil || x.BlobDigest != desc.Digest || x.BlobSize != desc.Size {
		return nil
	}
	return x
}

func storeIndex(ctx context.Context, cc *cache.Cache, desc ocispec.Descriptor, x *index.Index) error {
	raw, err := x.MarshalBinary()
	if err != nil {
		return err
	}
	return cacheBytes(ctx, cc, cache.IndexKey(desc.Digest), raw)
}

// cachedBytes returns the whole cache entry under key.
func cachedBytes(ctx context.Context, cc *cache.Cache, key string) ([]byte, bool) {
	e, err := cc.Get(ctx, key)
	if err != nil {
		return nil, false
	}
	defer e.Close()
	raw := make([]byte, e.Size())
	if _, err := e.ReadAt(raw, 0); err != nil {
		return nil, false
	}
	return raw, true
}

// cacheBytes stores raw in the cache under key.
func cacheBytes(ctx context.Context, cc *cache.Cache, key string, raw []byte) error {
	e, err := cc.Fill(ctx, key, int64(len(raw)), func(_ context.Context, w io.Writer) error {
		_, err := w.Write(raw)
		return err
	})
	if err != nil {
		return err
	}
	return e.Close()
}

// Window asks each source that gives windows in turn (see
// streamfs.WindowSource), returning the first window found.
func (s IndexSources) Window(ctx context.Context, repo string, layer digest.Digest, n int) ([]byte, error) {
	err := fmt.Errorf("node: layer %s: no source gives windows", layer)
	for _, src := range s {
		ws, ok := src.(streamfs.WindowSource)
		if !ok {
			continue
		}
		var w []byte
		if w, err = ws.Window(ctx, repo, layer, n); err == nil {
			return w, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, err
}

// IndexSources asks each source in turn, moving on when one has no index
// for the layer (streamfs.ErrNoIndex) or fails; the last error is
// returned when none has it.
type IndexSources []streamfs.IndexSource

// LayerIndex implements streamfs.IndexSource.
func (s IndexSources) LayerIndex(ctx context.Context, repo string, desc ocispec.Descriptor) (*index.Index, error) {
	err := fmt.Errorf("node: layer %s: %w", desc.Digest, streamfs.ErrNoIndex)
	for _, src := range s {
		var x *index.Index
		x, err = src.LayerIndex(ctx, repo, desc)
		if err == nil {
			return x, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, err
}
