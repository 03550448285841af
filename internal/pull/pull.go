// Package pull is the normal full pull of an image, the path every image
// can take and the baseline streaming is measured against. It comes in two
// shapes:
//
//   - [Layers] fills a node's layer store (package layerstore): each layer
//     is streamed from the registry, decompressed and extracted into its
//     own directory, all layers in parallel, with no temporary file; the
//     image is then an overlay mount over [LowerDirs].
//   - [Image] (and [Store] on top of it) builds one merged directory per
//     image: layers are downloaded in parallel into temporary files and
//     applied in order (package unpack) as soon as each one and those
//     below it are there.
//
// Either way each blob is checked against its digest and each layer's
// uncompressed stream against the config's diff_id.
package pull

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// DefaultParallel is how many layers are downloaded at once by default.
const DefaultParallel = 4

// Image extracts img into dir, downloading into temporary files under
// tmpDir (removed as each layer is applied). parallel bounds concurrent
// downloads (0: DefaultParallel). It returns the bytes fetched and
// extracted.
func Image(ctx context.Context, c *remote.Client, img *remote.Image, dir, tmpDir string, parallel int) (Bytes, error) {
	return ImageProgress(ctx, c, img, dir, tmpDir, parallel, nil)
}

// ImageProgress is Image, calling progress (when not nil) after each
// layer is applied with how many of the image's layers are done and the
// compressed bytes fetched so far: riffle pull shows it.
func ImageProgress(ctx context.Context, c *remote.Client, img *remote.Image, dir, tmpDir string, parallel int, progress func(done, total int, fetched int64)) (Bytes, error) {
	layers := img.Manifest.Layers
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return Bytes{}, fmt.Errorf("pull %s: the manifest has %d layers but the config %d diff_ids; the image is malformed, rebuild it", img.Reference, len(layers), len(diffIDs))
	}
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Bytes{}, fmt.Errorf("pull: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make([]chan error, len(layers))
	for i := range ready {
		ready[i] = make(chan error, 1)
	}
	var g errgroup.Group
	g.SetLimit(parallel)
	go func() {
		for i, d := range layers {
			g.Go(func() error {
				ready[i] <- download(ctx, c, img, d, filepath.Join(tmpDir, fmt.Sprint(i)))
				return nil
			})
		}
	}()
	defer g.Wait()
	var b Bytes
	for i, d := range layers {
		var err error
		select {
		case err = <-ready[i]:
		case <-ctx.Done():
			err = ctx.Err()
		}
		var tar int64
		if err == nil {
			tar, err = apply(ctx, dir, filepath.Join(tmpDir, fmt.Sprint(i)), types.MediaType(d.MediaType), diffIDs[i].String())
		}
		if err != nil {
			cancel()
			return Bytes{}, fmt.Errorf("pull %s: layer %d (%s): %w", img.Reference, i, d.Digest, err)
		}
		b.Wire += d.Size
		b.Uncompressed += tar
		_ = os.Remove(filepath.Join(tmpDir, fmt.Sprint(i)))
		if progress != nil {
			progress(i+1, len(layers), b.Wire)
		}
	}
	return b, nil
}

func download(ctx context.Context, c *remote.Client, img *remote.Image, d ocispec.Descriptor, path string) error {
	blob, err := c.RepositoryBlob(ctx, img.Repository, d.Digest, d.Size)
	if err != nil {
		return err
	}
	rc, err := blob.Open(ctx)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// apply extracts the layer blob at path into dir and returns the bytes of
// its tar stream.
func apply(ctx context.Context, dir, path string, mt types.MediaType, diffID string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r, err := unpack.Decompress(mt, f)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	h := sha256.New()
	var n atomic.Int64
	if err := unpack.Apply(ctx, dir, io.TeeReader(&countingReader{r: r, n: &n}, h)); err != nil {
		return 0, err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID {
		return 0, fmt.Errorf("%w: got %s, config says %s", unpack.ErrDiffIDMismatch, got, diffID)
	}
	return n.Load(), nil
}
