// Package ocilayer owns the rules of an OCI layer's tar stream that the
// index (internal/index), the streaming tree (internal/streamfs) and the
// full pull (internal/unpack) must apply the same way: how an entry name or
// hard-link target is cleaned, which names are whiteouts and opaque
// markers, how the compression of a blob is recognised, and what a name
// that appears twice in one layer means.
//
// The reference is containerd's archive.Apply (the OCI image-spec
// "Applying changesets" rules):
//
//   - A leading "/" is dropped: an absolute name, or an absolute hard-link
//     target, is relative to the root of the layer, as containerd and
//     Docker extract it. A ".." component is refused ([ErrUnsafePath])
//     rather than clamped at the root, so no name can mean a path outside
//     the layer; so are empty names and names holding NUL.
//   - .wh.NAME removes NAME from the layers below, .wh..wh..opq makes its
//     directory opaque, and any other .wh..wh.* name is AUFS metadata,
//     skipped.
//   - An entry replaces what is at its path, except that a directory over
//     a directory merges.
//   - A blob's compression is recognised from its first bytes, never from
//     its media type, so a mislabelled layer reads the same everywhere.
//
// The package imports only the standard library and the compression
// module the index already uses, so the index stays importable on its own.
package ocilayer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// ErrUnsafePath is matched (errors.Is) by every *PathError.
var ErrUnsafePath = errors.New("unsafe path in layer")

// PathError is a name or hard-link target that no applier may use: empty,
// holding NUL, with a ".." component, or a whiteout of "." or "..". Its
// text names the path and the reason only, so callers can prefix their own
// sentinel ("unpack: unsafe path in layer: ...").
type PathError struct {
	Name   string
	Reason string
}

func (e *PathError) Error() string { return fmt.Sprintf("%q %s", e.Name, e.Reason) }

// Is makes every PathError match ErrUnsafePath.
func (e *PathError) Is(target error) bool { return target == ErrUnsafePath }

// The whiteout names of the OCI image spec.
const (
	WhiteoutPrefix = ".wh."
	WhiteoutMeta   = ".wh..wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// CleanName normalises a tar entry name or hard-link target as containerd
// extracts it: leading "/" and "./", "." components and repeated and
// trailing slashes go; the root is ".". A ".." component, NUL or an empty
// name is refused with a *PathError.
func CleanName(name string) (string, error) {
	if isClean(name) {
		// The common case (every name of an index, most of a layer's):
		// no allocation.
		return name, nil
	}
	if name == "" {
		return "", &PathError{name, "is an empty name"}
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", &PathError{name, "contains NUL"}
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", &PathError{name, `contains ".."`}
		}
	}
	p := path.Clean("/" + name)
	if p == "/" {
		return ".", nil
	}
	return p[1:], nil
}

// isClean reports whether name is already what CleanName makes of it: "."
// or relative components, none empty, "." or "..", and no NUL.
func isClean(name string) bool {
	if name == "." {
		return true
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '/' {
			if name[i] == 0 {
				return false
			}
			continue
		}
		switch name[start:i] {
		case "", ".", "..":
			return false
		}
		start = i + 1
	}
	return true
}

// Kind is what a cleaned entry name means when applied.
type Kind int

const (
	// Plain is an ordinary entry: it is created at its path.
	Plain Kind = iota
	// Root is the layer's root ("."), which belongs to the caller: skipped.
	Root
	// Meta is AUFS metadata (.wh..wh.*, not the opaque marker): skipped.
	Meta
	// Whiteout (.wh.NAME) removes NAME from the layers below.
	Whiteout
	// Opaque (.wh..wh..opq) removes what the layers below put in its
	// directory, keeping what this layer adds there.
	Opaque
)

// Name is a cleaned entry name split as appliers need it.
type Name struct {
	Kind Kind
	// Dir is the parent directory ("." at the top), Base the last
	// component.
	Dir, Base string
	// Victim is the name a Whiteout removes, in Dir.
	Victim string
}

// Classify splits a name returned by CleanName and says what it means. A
// whiteout of "", "." or ".." is refused.
func Classify(clean string) (Name, error) {
	if clean == "." {
		return Name{Kind: Root, Dir: ".", Base: "."}, nil
	}
	dir, base := path.Split(clean)
	n := Name{Kind: Plain, Dir: path.Clean(dir), Base: base}
	switch {
	case base == OpaqueMarker:
		n.Kind = Opaque
	case strings.HasPrefix(clean, WhiteoutMeta) || strings.HasPrefix(base, WhiteoutMeta):
		// A top-level .wh..wh.* name is AUFS metadata even with components
		// below it (.wh..wh.plnk/123), as in containerd.
		n.Kind = Meta
	case strings.HasPrefix(base, WhiteoutPrefix):
		n.Kind = Whiteout
		n.Victim = strings.TrimPrefix(base, WhiteoutPrefix)
		if n.Victim == "" || n.Victim == "." || n.Victim == ".." {
			return n, &PathError{clean, "is a whiteout of " + strconv.Quote(n.Victim)}
		}
	}
	return n, nil
}

// Replaces reports whether an entry replaces what is already at its path
// (removing it and everything below it first): always, except that a
// directory entry over a directory merges into it.
func Replaces(oldIsDir, newIsDir bool) bool { return !(oldIsDir && newIsDir) }

// XattrApplies reports whether the extended attribute name of a tar entry
// is applied to its inode, regOrDir saying whether that inode (a hard
// link's target) is a regular file or directory. Linux holds user.*
// attributes on those alone and knows no namespace beside security.*,
// system.*, trusted.* and user.*; what it cannot hold is skipped, by the
// full pull and the streaming tree alike (containerd fails on the first and
// skips the second).
func XattrApplies(name string, regOrDir bool) bool {
	ns, _, _ := strings.Cut(name, ".")
	switch ns {
	case "user":
		return regOrDir
	case "security", "system", "trusted":
		return true
	}
	return false
}

// Compression is the encoding of a layer blob.
type Compression int

const (
	// Uncompressed is a plain tar.
	Uncompressed Compression = iota
	// Gzip is RFC 1952 gzip (also eStargz).
	Gzip
	// Zstd is zstd, possibly starting with skippable frames.
	Zstd
)

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// Detect recognises a blob's compression from its first bytes (at least
// four, fewer at the end of a short blob). Anything else is taken for a
// plain tar, which the tar reader then checks.
func Detect(magic []byte) Compression {
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return Gzip
	case len(magic) >= 4 && (bytes.Equal(magic[:4], zstdMagic) || IsSkippableFrame(magic)):
		return Zstd
	}
	return Uncompressed
}

// IsSkippableFrame reports whether m starts with the magic number of a
// zstd skippable frame.
func IsSkippableFrame(m []byte) bool {
	return len(m) >= 4 && m[0]&0xf0 == 0x50 && m[1] == 0x2a && m[2] == 0x4d && m[3] == 0x18
}

// Decompress returns the uncompressed tar stream of a layer blob, choosing
// the decoder by Detect.
func Decompress(blob io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(blob, 64<<10)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("ocilayer: reading layer: %w", err)
	}
	switch Detect(magic) {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("ocilayer: gzip layer: %w", err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("ocilayer: zstd layer: %w", err)
		}
		return zstdCloser{zr}, nil
	}
	return io.NopCloser(br), nil
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error { z.Decoder.Close(); return nil }
