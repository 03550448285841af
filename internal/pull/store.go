package pull

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/remote"
)

// Store is a node's store of images pulled flat, all layers merged into
// one tree: the fallback for images whose layers cannot be extracted on
// their own (a hard link into a lower layer; see unpack.ErrCrossLayerLink),
// which the layer store cannot hold. DIR/HEX/rootfs holds the image whose
// manifest digest is sha256:HEX, and DIR/HEX/complete marks it
// whole. Images are extracted into a temporary directory and renamed into
// place, so a crash never leaves a half image that looks whole, and any
// process (riffle serve, riffle pull) may add to it.
type Store string

// RootFS is where the image with manifest digest d is (or would be).
func (s Store) RootFS(d digest.Digest) string {
	return filepath.Join(string(s), d.Encoded(), "rootfs")
}

// Has reports whether the image with manifest digest d is whole in s.
func (s Store) Has(d digest.Digest) bool {
	_, err := os.Stat(filepath.Join(string(s), d.Encoded(), "complete"))
	return err == nil
}

// Add pulls img into s unless it is there already, and returns the
// bytes it fetched and extracted (none when another process added it
// first).
func (s Store) Add(ctx context.Context, c *remote.Client, img *remote.Image, parallel int) (Bytes, error) {
	if s.Has(img.Digest) {
		return Bytes{}, nil
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(string(s), ".tmp-"+img.Digest.Encoded()+"-"+hex.EncodeToString(rnd[:]))
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return Bytes{}, fmt.Errorf("pull: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	b, err := Image(ctx, c, img, rootfs, tmp, parallel)
	if err != nil {
		return Bytes{}, err
	}
	// The image's root is the container's "/": world-traversable.
	_ = os.Chmod(rootfs, 0o755)
	if err := os.WriteFile(filepath.Join(tmp, "complete"), []byte(img.Digest.String()+"\n"), 0o644); err != nil {
		return Bytes{}, fmt.Errorf("pull: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(string(s), img.Digest.Encoded())); err != nil {
		if s.Has(img.Digest) {
			return Bytes{}, nil // another process won
		}
		return Bytes{}, fmt.Errorf("pull: %w", err)
	}
	return b, nil
}
