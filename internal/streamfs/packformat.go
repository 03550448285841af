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
// header, then for each listed span, back to back in profile order, the
// span's stored gzip window (if it has one), then its compressed blob
// bytes (exactly the range index.PlanSpans(n, n+1) gives). The window
// lets a node whose index is detached (index.Index.Detach) decode the
// span without asking for it; a node with the whole index skips it. The
// header says only where each span lies; the data is trusted through the
// index's span and window digests, never through the pack, so a pack
// from anywhere can be used.
//
//	magic   "RIFFLEPK"
//	version 1 byte (PackVersion)
//	layer   32 bytes: sha256 of the layer blob
//	count   uvarint
//	count × (span uvarint, window uvarint, size uvarint)
//	data    size bytes per span: window bytes, then blob bytes
const (
	packMagic = "RIFFLEPK"
	// PackVersion is the pack format version this package reads and writes.
	PackVersion = 2
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
// number of bytes it takes, Window of them its stored window.
type PackSpan struct {
	Span   int
	Size   int64
	Window int64
}

// maxPackWindow bounds a pack span's window (a stored window is a zstd
// frame of at most 32 KiB).
const maxPackWindow = 64 << 10

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
		if s.Span < 0 || s.Window < 0 || s.Window > maxPackWindow || s.Size <= s.Window || s.Size > maxPackSpanSize+s.Window {
			return nil, fmt.Errorf("streamfs: pack span %d of %d bytes (window %d) is out of range", s.Span, s.Size, s.Window)
		}
		b = binary.AppendUvarint(b, uint64(s.Span))
		b = binary.AppendUvarint(b, uint64(s.Window))
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
		var v [3]uint64 // span, window, size
		for k := range v {
			if v[k], err = binary.ReadUvarint(r); err != nil {
				return nil, fmt.Errorf("%w: span %d: %w", ErrBadPack, i, err)
			}
		}
		span, window, size := v[0], v[1], v[2]
		if span > MaxPackSpans*1024 || window > maxPackWindow || size <= window || size > maxPackSpanSize+window {
			return nil, fmt.Errorf("%w: entry %d (span %d, %d bytes, window %d) is out of range", ErrBadPack, i, span, size, window)
		}
		h.Spans = append(h.Spans, PackSpan{Span: int(span), Size: int64(size), Window: int64(window)})
	}
	return h, nil
}

// Check makes sure the header describes spans of x: the same layer, each
// span inside the index, listed once, with exactly the size of its blob
// range after its window, and a window where a detached x needs one.
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
		if p.Length != s.Size-s.Window {
			return fmt.Errorf("%w: entry %d: span %d has %d bytes, the index says %d", ErrBadPack, i, s.Span, s.Size-s.Window, p.Length)
		}
		if x.NeedsWindow(s.Span) && s.Window == 0 {
			return fmt.Errorf("%w: entry %d: span %d comes without the window the index needs", ErrBadPack, i, s.Span)
		}
	}
	return nil
}
