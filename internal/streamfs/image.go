package streamfs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// Image is what Mount serves: an image's layers, bottom first, each with its
// file table and a way to fetch verified spans. Building it (resolving the
// manifest, getting or building every layer's index) is the caller's job;
// a caller that cannot index a layer returns a *NotEligibleError instead of
// an Image, so a half-streamable image is never mounted.
type Image struct {
	// Name labels the mount in metrics and logs ("registry/repo:tag").
	Name string
	// Layers are applied in order, as a full pull applies them.
	Layers []Layer
	// DiffIDs are the layers' uncompressed digests, from the image
	// config's rootfs.diff_ids (Open sets them). The background stream
	// needs them (Options.Layers): the layer store is keyed by them, and
	// the index of a TOC layer does not know its own.
	DiffIDs []digest.Digest
}

// Layer is one layer as streamfs needs it. The index package and tests
// provide implementations; streamfs owns the interface so that neither has
// to import the other.
type Layer interface {
	// Digest is the layer blob's digest. Spans are cached under
	// cache.SpanKey(Digest(), n), so two mounts of images sharing a layer
	// share its spans.
	Digest() digest.Digest
	// Entries returns the layer's tar entries in stream order. It is called
	// once, before mounting, and must not touch the network.
	Entries() []Entry
	// Spans returns the layer's uncompressed stream cut into consecutive
	// spans: Spans()[0].Offset is 0 and each span starts where the
	// previous one ends. Regular file data is located by Entry.Offset in
	// this stream.
	Spans() []Span
	// FetchSpan fetches span n, decompresses it and verifies it against the
	// index, returning exactly Spans()[n].Size bytes. Data that fails
	// verification is never returned: the error wraps ErrCorrupt. It must
	// return when ctx is done.
	FetchSpan(ctx context.Context, n int) ([]byte, error)
}

// Span is a range of a layer's uncompressed stream.
type Span struct {
	Offset, Size int64
}

// Entry is one tar entry of a layer, as the index records it.
type Entry struct {
	// Name is the entry's path as written in the tar ("./usr/bin/ls",
	// "etc/"); streamfs cleans it and refuses unsafe ones.
	Name string
	// Type is the tar type flag (tar.TypeReg, tar.TypeDir, ...).
	Type byte
	// Mode holds the permission bits with setuid, setgid and sticky.
	Mode     int64
	UID, GID int
	// Size is a regular file's length.
	Size    int64
	ModTime time.Time
	// Linkname is a symlink's target or a hard link's target path.
	Linkname string
	// Devmajor and Devminor are a device's numbers.
	Devmajor, Devminor int64
	// Xattrs are the entry's extended attributes (PAX SCHILY.xattr.*).
	Xattrs map[string]string
	// Offset is where a regular file's data starts in the layer's
	// uncompressed stream.
	Offset int64
	// Digest is the sha256 of a regular file's content. Whole files are
	// cached under it once read, and served from there by passthrough.
	Digest digest.Digest
}

var (
	// ErrNotEligible is matched (errors.Is) by every *NotEligibleError.
	ErrNotEligible = errors.New("streamfs: image is not eligible for streaming")
	// ErrCorrupt is wrapped by Layer.FetchSpan when fetched data does not
	// match the index. streamfs retries such fetches.
	ErrCorrupt = errors.New("streamfs: fetched data does not match the index")
	// ErrUnsafePath is returned by Mount for an entry whose name or
	// hard-link target is absolute or contains "..", as a full pull
	// (internal/unpack) refuses the same image.
	ErrUnsafePath = errors.New("streamfs: unsafe path in layer")
)

// NotEligibleError says why an image cannot be streamed. The caller falls
// back to a full pull and shows Reason to the user.
type NotEligibleError struct {
	// Layer is the offending layer's digest; empty when the reason is the
	// whole image (its manifest, for example).
	Layer digest.Digest
	// Reason is a human message naming the cause and, where there is one,
	// the fix.
	Reason string
}

func (e *NotEligibleError) Error() string {
	if e.Layer != "" {
		return fmt.Sprintf("streamfs: layer %s cannot be streamed: %s", e.Layer, e.Reason)
	}
	return "streamfs: image cannot be streamed: " + e.Reason
}

// Is makes errors.Is(err, ErrNotEligible) true.
func (e *NotEligibleError) Is(target error) bool { return target == ErrNotEligible }

// NotEligible returns a *NotEligibleError for layer (may be empty) with a
// formatted reason.
func NotEligible(layer digest.Digest, format string, args ...any) error {
	return &NotEligibleError{Layer: layer, Reason: fmt.Sprintf(format, args...)}
}
