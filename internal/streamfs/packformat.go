package streamfs

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
)

// A prefetch pack is one layer's startup-profile data in one blob: a
// header, then for each listed span, back to back in profile order, the
// span's uncompressed bytes as one zstd frame (recompressed from the
// layer's encoding: for the binaries a python import reads, about 30%
// fewer bytes than the layer's gzip, and decoded several times faster).
// A frame must declare its content size, which must be the span's size.
// The header says only where each span lies; the data is trusted through
// the sha256 of each span's uncompressed bytes in the layer's index
// (index.Span.USum), never through the pack, so a pack from anywhere can
// be used, and a node with a detached index needs no windows for it.
//
//	magic   "RIFFLEPK"
//	version 1 byte (PackVersion)
//	layer   32 bytes: sha256 of the layer blob
//	count   uvarint
//	count × (span uvarint, size uvarint)
//	data    size bytes per span: a zstd frame
const (
	packMagic = "RIFFLEPK"
	// PackVersion is the pack format version this package reads and writes.
	PackVersion = 3
	// MaxPackSpans bounds the spans of one pack's header, so a hostile
	// header cannot make a reader allocate much.
	MaxPackSpans = 1 << 16
	// MaxPackSpanUSize is the largest span a pack holds: a reader decodes
	// a span in memory, so a pack leaves larger ones (far above the 1 MiB
	// default span size) to be fetched by range.
	MaxPackSpanUSize = 32 << 20
	// maxPackSpanSize bounds one span's frame in a header: zstd grows
	// incompressible data by a few bytes per 128 KiB block.
	maxPackSpanSize = MaxPackSpanUSize + MaxPackSpanUSize>>7 + 1<<10 // frameBound(MaxPackSpanUSize)
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
// number of bytes its frame takes.
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
		var v [2]uint64 // span, size
		for k := range v {
			if v[k], err = binary.ReadUvarint(r); err != nil {
				return nil, fmt.Errorf("%w: span %d: %w", ErrBadPack, i, err)
			}
		}
		span, size := v[0], v[1]
		if span > MaxPackSpans*1024 || size == 0 || size > maxPackSpanSize {
			return nil, fmt.Errorf("%w: entry %d (span %d, %d bytes) is out of range", ErrBadPack, i, span, size)
		}
		h.Spans = append(h.Spans, PackSpan{Span: int(span), Size: int64(size)})
	}
	return h, nil
}

// Check makes sure the header describes spans of x: the same layer, each
// span inside the index, listed once, small enough for a pack, and with a
// digest of its uncompressed bytes to check it by.
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
		if !Packable(x, s.Span) {
			return fmt.Errorf("%w: entry %d: span %d cannot come from a pack (%d bytes, or no digest of its uncompressed bytes in the index)", ErrBadPack, i, s.Span, x.Spans[s.Span].USize)
		}
		if s.Size > frameBound(x.Spans[s.Span].USize) {
			return fmt.Errorf("%w: entry %d: a %d-byte frame for span %d of %d bytes", ErrBadPack, i, s.Size, s.Span, x.Spans[s.Span].USize)
		}
	}
	return nil
}

// frameBound is the most bytes a zstd frame of u bytes of content takes:
// incompressible data grows by a block header per 128 KiB block, plus the
// frame header and checksum (ZSTD_compressBound is tighter).
func frameBound(u int64) int64 { return u + u>>7 + 1<<10 }

// Packable reports whether span n of x may be carried by a pack: it has
// data, at most MaxPackSpanUSize bytes of it, and the index holds the
// digest to check it by.
func Packable(x *index.Index, n int) bool {
	s := &x.Spans[n]
	return s.USize > 0 && s.USize <= MaxPackSpanUSize && s.USum != [32]byte{}
}

// packDecoder decodes pack frames; DecodeAll is safe for concurrent use.
var packDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxPackSpanUSize), zstd.WithDecodeAllCapLimit(true))
})

// NewPackEncoder returns an encoder for pack frames: EncodeAll of a span's
// uncompressed bytes gives its frame. Packs are built once
// per profile, in the background, and fetched by every node that starts
// the image, so the start of a pack, which a task waits for first, is
// worth the strongest level (best); later spans take a level about five
// times faster that gives frames about 7% larger.
func NewPackEncoder(best bool) (*zstd.Encoder, error) {
	level := zstd.SpeedBetterCompression
	if best {
		level = zstd.SpeedBestCompression
	}
	// One segment: the frame header then always declares the content
	// size, which decodePackSpan requires (EncodeAll leaves it out of
	// frames under 256 bytes otherwise).
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithSingleSegment(true))
}

// decodePackSpan decodes span e of a pack from its frame b into *scratch
// (grown as needed; the result aliases it) and checks it against the
// index's digest of the span's uncompressed bytes.
func decodePackSpan(x *index.Index, e PackSpan, b []byte, scratch *[]byte) ([]byte, error) {
	n := e.Span
	want := x.Spans[n].USize
	var fh zstd.Header
	if err := fh.Decode(b); err != nil || !fh.HasFCS || fh.FrameContentSize != uint64(want) {
		return nil, fmt.Errorf("%w: span %d: the pack's frame does not declare the span's %d bytes", ErrCorrupt, n, want)
	}
	if int64(cap(*scratch)) < want {
		*scratch = make([]byte, 0, want)
	}
	dec, err := packDecoder()
	if err != nil {
		return nil, err
	}
	// Capped at the span's size: trailing frames cannot make it decode
	// more.
	out, err := dec.DecodeAll(b, (*scratch)[:0:want])
	if err != nil {
		return nil, fmt.Errorf("%w: span %d: %w", ErrCorrupt, n, err)
	}
	if int64(len(out)) != want || sha256.Sum256(out) != x.Spans[n].USum {
		return nil, fmt.Errorf("%w: span %d decoded to %d bytes that do not match the index", ErrCorrupt, n, len(out))
	}
	return out, nil
}
