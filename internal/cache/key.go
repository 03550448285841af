package cache

import (
	_ "crypto/sha256" // registers the hashes go-digest verifies with
	_ "crypto/sha512"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

// spanPrefix starts every span key. It is not a digest algorithm, so a key
// is unambiguously either a digest or a span key.
const spanPrefix = "span:"

// indexPrefix starts every index key.
const indexPrefix = "index:"

// IndexKey returns the key under which the index of the layer with the
// given blob digest is kept: "index:<layer digest>". Like span data, the
// cache cannot check an index; the caller verifies it (parses it and
// checks it describes the layer) before storing it and after reading it.
func IndexKey(layer digest.Digest) string {
	return indexPrefix + layer.String()
}

// MaxSpan is the largest span index SpanKey accepts (a 1 TiB layer in 4 MiB
// spans needs 262144).
const MaxSpan = math.MaxInt32

// SpanKey returns the key of span number span of the uncompressed stream of
// the layer with the given digest: "span:<layer digest>:<span>". The cache
// cannot check span data (the layer digest covers the compressed blob), so
// the caller must verify the data before its fill function writes it.
// SpanKey does not validate its arguments; Get and Fill do.
func SpanKey(layer digest.Digest, span int) string {
	return spanPrefix + layer.String() + ":" + strconv.Itoa(span)
}

// kind says how an entry is verified.
type kind uint8

const (
	// kindBlob entries are keyed by the digest of their content, which the
	// cache checks when it stores them.
	kindBlob kind = iota
	// kindSpan entries are verified by the caller.
	kindSpan
	// kindIndex entries (layer indexes) are verified by the caller.
	kindIndex
)

// key is a parsed, validated cache key. Its canonical string is the map key;
// its relative path is where the entry lives under the cache directory.
type key struct {
	kind kind
	dig  digest.Digest
	span int
}

// algorithms allow-lists the digest algorithms keys may use; the algorithm
// becomes a directory name, so it must come from a fixed set.
var algorithms = map[digest.Algorithm]bool{
	digest.SHA256: true,
	digest.SHA384: true,
	digest.SHA512: true,
}

// ErrInvalidKey is returned (wrapped) for a key that is neither a digest
// nor a span key in canonical form.
var ErrInvalidKey = fmt.Errorf("cache: invalid key")

// parseKey validates s. Only canonical spellings are accepted (lower-case
// hex, decimal span without sign or leading zeros), so every entry has
// exactly one key and one path, and a key can never name a path outside
// the cache directory.
func parseKey(s string) (key, error) {
	if rest, ok := strings.CutPrefix(s, spanPrefix); ok {
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			return key{}, fmt.Errorf("%w %q: want span:<digest>:<index>", ErrInvalidKey, s)
		}
		d, err := parseDigest(rest[:i])
		if err != nil {
			return key{}, fmt.Errorf("%w %q: %v", ErrInvalidKey, s, err)
		}
		n, err := parseSpan(rest[i+1:])
		if err != nil {
			return key{}, fmt.Errorf("%w %q: %v", ErrInvalidKey, s, err)
		}
		return key{kind: kindSpan, dig: d, span: n}, nil
	}
	if rest, ok := strings.CutPrefix(s, indexPrefix); ok {
		d, err := parseDigest(rest)
		if err != nil {
			return key{}, fmt.Errorf("%w %q: %v", ErrInvalidKey, s, err)
		}
		return key{kind: kindIndex, dig: d}, nil
	}
	d, err := parseDigest(s)
	if err != nil {
		return key{}, fmt.Errorf("%w %q: %v; want <algorithm>:<hex>, a SpanKey or an IndexKey", ErrInvalidKey, s, err)
	}
	return key{kind: kindBlob, dig: d}, nil
}

func parseDigest(s string) (digest.Digest, error) {
	alg, hex, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("no algorithm")
	}
	a := digest.Algorithm(alg)
	if !algorithms[a] {
		return "", fmt.Errorf("unsupported digest algorithm %q", alg)
	}
	if err := a.Validate(hex); err != nil {
		return "", err
	}
	return digest.Digest(s), nil
}

func parseSpan(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > MaxSpan || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("span index %q is not a canonical integer in [0, %d]", s, MaxSpan)
	}
	return n, nil
}

// String returns the canonical key.
func (k key) String() string {
	switch k.kind {
	case kindSpan:
		return SpanKey(k.dig, k.span)
	case kindIndex:
		return IndexKey(k.dig)
	}
	return k.dig.String()
}

// Top-level directories of the layout (see doc.go).
const (
	blobsDir   = "blobs"
	spansDir   = "spans"
	indexesDir = "indexes"
	tmpDir     = "tmp"
)

// relPath is the entry's path relative to the cache directory, sharded by
// the first two hex digits so no directory grows past a few thousand names.
func (k key) relPath() string {
	hex := k.dig.Encoded()
	alg := k.dig.Algorithm().String()
	switch k.kind {
	case kindSpan:
		return filepath.Join(spansDir, alg, hex[:2], hex+"."+strconv.Itoa(k.span))
	case kindIndex:
		return filepath.Join(indexesDir, alg, hex[:2], hex)
	}
	return filepath.Join(blobsDir, alg, hex[:2], hex)
}

// keyFromPath is relPath's inverse, used to rebuild the index at Open.
// It accepts exactly the paths relPath produces.
func keyFromPath(rel string) (key, error) {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	if len(parts) != 4 {
		return key{}, fmt.Errorf("%w: unexpected path %q", ErrInvalidKey, rel)
	}
	var s string
	switch parts[0] {
	case blobsDir:
		s = parts[1] + ":" + parts[3]
	case indexesDir:
		s = indexPrefix + parts[1] + ":" + parts[3]
	case spansDir:
		hex, n, ok := strings.Cut(parts[3], ".")
		if !ok {
			return key{}, fmt.Errorf("%w: unexpected path %q", ErrInvalidKey, rel)
		}
		s = spanPrefix + parts[1] + ":" + hex + ":" + n
	default:
		return key{}, fmt.Errorf("%w: unexpected path %q", ErrInvalidKey, rel)
	}
	k, err := parseKey(s)
	if err != nil {
		return key{}, err
	}
	if k.relPath() != filepath.FromSlash(rel) {
		return key{}, fmt.Errorf("%w: %q is in the wrong place", ErrInvalidKey, rel)
	}
	return k, nil
}
