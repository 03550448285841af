package unpack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// ErrDiffIDMismatch is returned when a layer's uncompressed content does not
// hash to the diffID the image config names.
var ErrDiffIDMismatch = errors.New("unpack: layer content does not match its diffID")

// Image applies every layer of img, in order, onto dir (normally an empty
// directory). Each layer's uncompressed stream is checked against the
// config's diffID.
func Image(ctx context.Context, dir string, img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("unpack: layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("unpack: config: %w", err)
	}
	if len(cf.RootFS.DiffIDs) != len(layers) {
		return fmt.Errorf("unpack: config lists %d diffIDs for %d layers", len(cf.RootFS.DiffIDs), len(layers))
	}
	for i, l := range layers {
		if err := Layer(ctx, dir, l, cf.RootFS.DiffIDs[i]); err != nil {
			return fmt.Errorf("unpack: layer %d: %w", i, err)
		}
	}
	return nil
}

// Layer applies one image layer onto dir, decompressing it as its media
// type says (gzip, zstd or none) and checking the uncompressed stream
// against diffID (skipped when diffID is the zero Hash).
func Layer(ctx context.Context, dir string, l v1.Layer, diffID v1.Hash) error {
	mt, err := l.MediaType()
	if err != nil {
		return fmt.Errorf("media type: %w", err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("open blob: %w", err)
	}
	defer rc.Close()
	r, err := Decompress(mt, rc)
	if err != nil {
		return err
	}
	defer r.Close()
	h := sha256.New()
	if err := Apply(ctx, dir, io.TeeReader(r, h)); err != nil {
		return err
	}
	if diffID == (v1.Hash{}) {
		return nil
	}
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	if got != diffID {
		return fmt.Errorf("%w: got %s, config says %s", ErrDiffIDMismatch, got, diffID)
	}
	return nil
}

// Decompress returns the uncompressed tar stream of a layer blob of media
// type mt.
func Decompress(mt types.MediaType, blob io.Reader) (io.ReadCloser, error) {
	switch mt {
	case types.OCILayer, types.DockerLayer, types.OCIRestrictedLayer, types.DockerForeignLayer:
		zr, err := gzip.NewReader(blob)
		if err != nil {
			return nil, fmt.Errorf("unpack: gzip layer: %w", err)
		}
		return zr, nil
	case types.OCILayerZStd, "application/vnd.docker.image.rootfs.diff.tar.zstd":
		zr, err := zstd.NewReader(blob, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("unpack: zstd layer: %w", err)
		}
		return zstdCloser{zr}, nil
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer, types.OCIUncompressedRestrictedLayer:
		return io.NopCloser(blob), nil
	}
	return nil, fmt.Errorf("unpack: media type %q is not a layer type Riffle can unpack (want an OCI or Docker tar, tar+gzip or tar+zstd layer)", mt)
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error { z.Decoder.Close(); return nil }
