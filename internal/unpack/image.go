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

	"github.com/riffle-dev/riffle/internal/index/ocilayer"
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

// Layer applies one image layer onto dir, decompressing it as its first
// bytes say (gzip, zstd or none) and checking the uncompressed stream
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

// Decompress returns the uncompressed tar stream of a layer blob. The
// encoding (gzip, zstd or none) is recognised from the blob's first bytes,
// as the streaming index does (ocilayer.Decompress), so a layer whose media
// type is wrong or unknown unpacks as it streams; mt is not consulted.
func Decompress(mt types.MediaType, blob io.Reader) (io.ReadCloser, error) {
	r, err := ocilayer.Decompress(blob)
	if err != nil {
		return nil, fmt.Errorf("unpack: layer of media type %q: %w", mt, err)
	}
	return r, nil
}
