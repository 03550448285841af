package streamfs

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
)

// A prefetch pack is one layer's startup-profile data in one blob: a
// header, then the compressed blob bytes of each listed span (exactly the
// range index.PlanSpans(n, n+1) gives), back to back in profile order.
// The header says only where each span lies; the data is trusted through
// the index's span digests, never through the pack, so a pack from
// anywhere can be used.
//
//	magic   "RIFFLEPK"
//	version 1 byte (PackVersion)
//	layer   32 bytes: sha256 of the layer blob
//	count   uvarint
//	count × (span uvarint, size uvarint)
//	data
const (
	packMagic = "RIFFLEPK"
	// PackVersion is the pack format version this package reads and writes.
	PackVersion = 1
	// MaxPackSpans bounds the spans of one pack's header, so a hostile
	// header cannot make a reader allocate much.
	MaxPackSpans = 1 << 16
	// maxPackSpanSize bounds one span's compressed size in a header (an
	// index span is at most index.MaxSpanSize uncompressed; deflate can
	// grow incompressible data a little).
	maxPackSpanSize = 2 * index.MaxSpanSize
)

// ErrNoPack is returned (wrapped) by a PackSource that has no pack for a
// layer.
var ErrNoPack = errors.New("streamfs: no prefetch pack for layer")

// ErrBadPack is returned (wrapped) for a pack header that cannot be parsed
// or does not fit the layer's index.
var ErrBadPack = errors.New("streamfs: malformed prefetch pack")

// PackHeader is the header of a prefetch pack.
type PackHeader struct {
	// Layer is the layer blob the pack's spans come from.
	Layer digest.Digest
	// Spans are the packed spans, in the order their data follows.
	Spans []PackSpan
}

// PackSpan is one span in a pack: its number in the layer's index and the
// number of compressed bytes it takes.
type PackSpan struct {
	Span int
	Size int64
}

// DataSize is the number of data bytes after the header.
func (h *PackHeader) DataSize() int64 {
	var n int64
	for _, s := range h.Spans {
		n += s.Size
	}
	return n
}

// MarshalBinary encodes the header.
func (h *PackHeader) MarshalBinary() ([]byte, error) {
	if h.Layer.Validate() != nil || h.Layer.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("streamfs: pack layer %q is not a sha256 digest", h.Layer)
	}
	if len(h.Spans) > MaxPackSpans {
		return nil, fmt.Errorf("streamfs: pack of %d spans; at most %d", len(h.Spans), MaxPackSpans)
	}
	b := append([]byte(packMagic), PackVersion)
	raw, err := digestBytes(h.Layer)
	if err != nil {
		return nil, err
	}
	b = append(b, raw...)
	b = binary.AppendUvarint(b, uint64(len(h.Spans)))
	for _, s := range h.Spans {
		if s.Span < 0 || s.Size <= 0 || s.Size > maxPackSpanSize {
			return nil, fmt.Errorf("streamfs: pack span %d of %d bytes is out of range", s.Span, s.Size)
		}
		b = binary.AppendUvarint(b, uint64(s.Span))
		b = binary.AppendUvarint(b, uint64(s.Size))
	}
	return b, nil
}

func digestBytes(d digest.Digest) ([]byte, error) {
	raw, err := hex.DecodeString(d.Encoded())
	if err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("streamfs: digest %q is not sha256", d)
	}
	return raw, nil
}

// ReadPackHeader reads a pack header from r, leaving r at the first data
// byte. It checks the header's shape only; Check fits it to an index.
func ReadPackHeader(r *bufio.Reader) (*PackHeader, error) {
	var fixed [len(packMagic) + 1 + 32]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrBadPack, err)
	}
	if string(fixed[:len(packMagic)]) != packMagic {
		return nil, fmt.Errorf("%w: not a pack (bad magic)", ErrBadPack)
	}
	if v := fixed[len(packMagic)]; v != PackVersion {
		return nil, fmt.Errorf("%w: version %d; this riffle reads version %d", ErrBadPack, v, PackVersion)
	}
	h := &PackHeader{Layer: digest.NewDigestFromBytes(digest.SHA256, fixed[len(packMagic)+1:])}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%w: span count: %w", ErrBadPack, err)
	}
	if n > MaxPackSpans {
		return nil, fmt.Errorf("%w: %d spans; at most %d", ErrBadPack, n, MaxPackSpans)
	}
	h.Spans = make([]PackSpan, 0, n)
	for i := range n {
		span, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, fmt.Errorf("%w: span %d: %w", ErrBadPack, i, err)
		}
		size, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, fmt.Errorf("%w: span %d: %w", ErrBadPack, i, err)
		}
		if span > MaxPackSpans*1024 || size == 0 || size > maxPackSpanSize {
			return nil, fmt.Errorf("%w: entry %d (span %d, %d bytes) is out of range", ErrBadPack, i, span, size)
		}
		h.Spans = append(h.Spans, PackSpan{Span: int(span), Size: int64(size)})
	}
	return h, nil
}

// Check makes sure the header describes spans of x: the same layer, each
// span inside the index, listed once, with exactly the size of its blob
// range.
func (h *PackHeader) Check(x *index.Index) error {
	if h.Layer != x.BlobDigest {
		return fmt.Errorf("%w: it packs layer %s, not %s", ErrBadPack, h.Layer, x.BlobDigest)
	}
	seen := make(map[int]bool, len(h.Spans))
	for i, s := range h.Spans {
		if s.Span >= len(x.Spans) || seen[s.Span] {
			return fmt.Errorf("%w: entry %d: span %d is not a span of the layer or is listed twice", ErrBadPack, i, s.Span)
		}
		seen[s.Span] = true
		p, err := x.PlanSpans(s.Span, s.Span+1)
		if err != nil {
			return fmt.Errorf("%w: entry %d: %w", ErrBadPack, i, err)
		}
		if p.Length != s.Size {
			return fmt.Errorf("%w: entry %d: span %d has %d bytes, the index says %d", ErrBadPack, i, s.Span, s.Size, p.Length)
		}
	}
	return nil
}
