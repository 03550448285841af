package pull

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// Layers extracts every layer of img that s does not hold yet into s, each
// into its own directory. Layers are independent there, so they are
// streamed from the registry, decompressed and extracted in parallel (at
// most parallel at once; 0: DefaultParallel), with no temporary file; each
// blob's digest and each layer's diffID are checked before the layer is
// marked complete. It returns the bytes it fetched and extracted (also when
// it fails); a layer another process extracts meanwhile costs nothing.
func Layers(ctx context.Context, c *remote.Client, img *remote.Image, s *layerstore.Store, parallel int) (Bytes, error) {
	layers := img.Manifest.Layers
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return Bytes{}, fmt.Errorf("pull %s: the manifest has %d layers but the config %d diff_ids; the image is malformed, rebuild it", img.Reference, len(layers), len(diffIDs))
	}
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	var wire, tar atomic.Int64
	seen := map[digest.Digest]bool{}
	for i, d := range layers {
		diffID := diffIDs[i]
		if seen[diffID] || s.Has(diffID) {
			continue
		}
		seen[diffID] = true
		g.Go(func() error {
			err := layer(gctx, c, img, d, diffID, s, &wire, &tar)
			if err != nil {
				return fmt.Errorf("pull %s: layer %d (%s): %w", img.Reference, i, d.Digest, err)
			}
			return nil
		})
	}
	err := g.Wait()
	return Bytes{Wire: wire.Load(), Uncompressed: tar.Load()}, err
}

// Bytes is what a pull moved.
type Bytes struct {
	// Wire is the compressed bytes read from the registry.
	Wire int64
	// Uncompressed is the bytes of the layers' tar streams extracted.
	Uncompressed int64
}

// layer streams one blob into s, adding the compressed bytes read to wire
// and the uncompressed bytes extracted to tar.
func layer(ctx context.Context, c *remote.Client, img *remote.Image, d ocispec.Descriptor, diffID digest.Digest, s *layerstore.Store, wire, tar *atomic.Int64) error {
	blob, err := c.RepositoryBlob(ctx, img.Repository, d.Digest, d.Size)
	if err != nil {
		return err
	}
	rc, err := blob.Open(ctx)
	if err != nil {
		return err
	}
	defer rc.Close()
	// Large reads from the body; the decompressor reads bytes from the
	// bufio.Reader without a second buffer of its own.
	br := bufio.NewReaderSize(&countingReader{r: rc, n: wire}, 256<<10)
	u, err := unpack.Decompress(types.MediaType(d.MediaType), br)
	if err != nil {
		return err
	}
	defer u.Close()
	return s.Extract(ctx, diffID, &blobChecked{u: &countingReader{r: u, n: tar}, blob: br}, nil)
}

// blobChecked ends the uncompressed stream only once the compressed blob
// has been read to its end, where the remote stream checks the blob's
// digest: so a blob that does not match its digest fails the extraction
// before the layer is marked complete, even when the decompressor stops
// short of the blob's end.
type blobChecked struct {
	u    io.Reader
	blob io.Reader
}

func (b *blobChecked) Read(p []byte) (int, error) {
	n, err := b.u.Read(p)
	if err == io.EOF {
		if _, derr := io.Copy(io.Discard, b.blob); derr != nil {
			return n, derr
		}
	}
	return n, err
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// LowerDirs returns the overlayfs lower directories of img's root
// filesystem in s, top-most layer first, as mount's lowerdir= option
// lists them. A layer that appears more than once is listed at its
// top-most place only: overlayfs refuses a directory twice, and the upper
// copy restates everything the lower one provides.
func LowerDirs(s *layerstore.Store, img *remote.Image) []string {
	diffIDs := img.Config.RootFS.DiffIDs
	seen := map[digest.Digest]bool{}
	dirs := make([]string, 0, len(diffIDs))
	for i := len(diffIDs) - 1; i >= 0; i-- {
		if seen[diffIDs[i]] {
			continue
		}
		seen[diffIDs[i]] = true
		dirs = append(dirs, s.Path(diffIDs[i]))
	}
	return dirs
}
