package index

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"github.com/riffle-dev/riffle/internal/index/flate"
)

// gzipStream decompresses a gzip blob, all members, checking each
// member's CRC and size. It is the io.Reader the tar walker reads.
type gzipStream struct {
	in      *flate.Input
	f       *flate.Decompressor
	state   int
	members int
	crc     uint32
	msize   uint32 // member size mod 2^32, as in the trailer
	ubase   int64  // uncompressed offset where the current member starts
	out     int64  // uncompressed bytes returned so far
	sums    *spanSums
}

const (
	gzHeader = iota
	gzBody
	gzDone
)

func (g *gzipStream) Read(p []byte) (int, error) {
	for {
		switch g.state {
		case gzHeader:
			if g.members > 0 && g.in.AtEOF() {
				g.state = gzDone
				continue
			}
			if err := readGzipHeader(g.in); err != nil {
				return 0, fmt.Errorf("index: gzip member %d at offset %d: %w", g.members, g.in.Offset(), err)
			}
			g.f.Reset(g.in, nil)
			g.members++
			g.crc, g.msize, g.ubase = 0, 0, g.out
			g.state = gzBody
		case gzBody:
			n, err := g.f.Read(p)
			g.sums.write(p[:n])
			g.crc = crc32.Update(g.crc, crc32.IEEETable, p[:n])
			g.msize += uint32(n)
			g.out += int64(n)
			if errors.Is(err, io.EOF) {
				var tr [8]byte
				if _, err := io.ReadFull(g.in, tr[:]); err != nil {
					return n, fmt.Errorf("index: gzip member %d trailer: %w", g.members-1, noEOF(err))
				}
				if binary.LittleEndian.Uint32(tr[:4]) != g.crc || binary.LittleEndian.Uint32(tr[4:]) != g.msize {
					return n, fmt.Errorf("index: gzip member %d: checksum mismatch", g.members-1)
				}
				g.state = gzHeader
				err = nil
			}
			if err != nil {
				return n, fmt.Errorf("index: gzip member %d: %w", g.members-1, err)
			}
			if n > 0 {
				return n, nil
			}
		case gzDone:
			return 0, io.EOF
		}
	}
}

// readGzipHeader consumes one gzip member header (RFC 1952).
func readGzipHeader(in *flate.Input) error {
	var h [10]byte
	if _, err := io.ReadFull(in, h[:]); err != nil {
		return noEOF(err)
	}
	if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
		return errors.New("not a gzip member header")
	}
	flg := h[3]
	if flg&0xe0 != 0 {
		return errors.New("reserved gzip header flags set")
	}
	if flg&0x04 != 0 { // FEXTRA
		var l [2]byte
		if _, err := io.ReadFull(in, l[:]); err != nil {
			return noEOF(err)
		}
		for n := binary.LittleEndian.Uint16(l[:]); n > 0; n-- {
			if _, err := in.ReadByte(); err != nil {
				return noEOF(err)
			}
		}
	}
	for _, bit := range []byte{0x08, 0x10} { // FNAME, FCOMMENT: NUL-terminated
		if flg&bit == 0 {
			continue
		}
		for {
			c, err := in.ReadByte()
			if err != nil {
				return noEOF(err)
			}
			if c == 0 {
				break
			}
		}
	}
	if flg&0x02 != 0 { // FHCRC
		var c [2]byte
		if _, err := io.ReadFull(in, c[:]); err != nil {
			return noEOF(err)
		}
	}
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// gzipBuilder takes checkpoints while the tar walker pulls data through
// gzipStream.
type gzipBuilder struct {
	x     *Index
	g     *gzipStream
	h     *blobHasher
	enc   *zstd.Encoder
	win   []byte
	lastU int64
}

func buildGzip(x *Index, r *bufio.Reader) error {
	in := flate.NewInput(r, 256<<10, 0)
	h := newBlobHasher()
	in.Hook = func(p []byte) { h.Write(p) }
	enc, err := newWindowEncoder()
	if err != nil {
		return err
	}
	defer enc.Close()
	b := &gzipBuilder{x: x, h: h, enc: enc, win: make([]byte, 0, WindowSize)}
	b.g = &gzipStream{in: in, f: flate.NewReader(in), sums: newSpanSums()}
	b.g.f.OnBlock = b.onBlock
	x.Spans = []Span{{Header: true}}
	ra := newReadAhead(b.g)
	defer ra.Close()
	if err := walkTar(x, ra); err != nil {
		return err
	}
	if b.g.out != x.UncompressedSize {
		return fmt.Errorf("index: internal error: gzip output %d != tar stream %d", b.g.out, x.UncompressedSize)
	}
	in.FlushHook()
	b.closeSpan(h.n, x.UncompressedSize)
	x.BlobSize = h.n
	x.BlobDigest = h.blobDigest()
	return b.g.sums.set(x)
}

// onBlock takes a checkpoint at a block boundary once SpanSize bytes of
// output have passed since the last one, as zran.c does.
func (b *gzipBuilder) onBlock(bit, out int64, final bool) {
	u := b.g.ubase + out
	if final || u-b.lastU < b.x.SpanSize {
		return
	}
	in := b.g.in
	in.FlushHook() // every consumed byte belongs to the closing span
	b.closeSpan(in.Offset(), u)
	s := Span{UOffset: u, COffset: bit / 8, Bits: uint8(bit % 8)}
	if s.Bits != 0 {
		// The boundary byte is shared: the new span starts with it too.
		b.h.span.Write([]byte{in.LastByte()})
	}
	b.win = b.g.f.Window(b.win[:0])
	if len(b.win) > 0 {
		s.Window = b.enc.EncodeAll(b.win, nil)
	}
	b.x.Spans = append(b.x.Spans, s)
	b.lastU = u
}

// closeSpan ends the last span at blob offset cend and uncompressed
// offset uend.
func (b *gzipBuilder) closeSpan(cend, uend int64) {
	s := &b.x.Spans[len(b.x.Spans)-1]
	s.CSize = cend - s.COffset
	s.USize = uend - s.UOffset
	s.Digest = b.h.cut()
	// The stream has not passed uend yet: a checkpoint is taken at the
	// end of a block, before any byte of the next one is returned.
	b.g.sums.cutAt(uend)
}

// Windows are stored zstd-compressed. The encoder is single-threaded and
// fixed in its settings so that the same window always yields the same
// bytes (the index must be deterministic).
func newWindowEncoder() (*zstd.Encoder, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(WindowSize),
		zstd.WithSingleSegment(true))
	if err != nil {
		return nil, fmt.Errorf("index: zstd encoder: %w", err)
	}
	return enc, nil
}

var windowDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(64<<20))
})

// decodeWindow expands a stored window, refusing anything larger than a
// DEFLATE window.
func decodeWindow(w []byte) ([]byte, error) {
	if len(w) == 0 {
		return nil, nil
	}
	dec, err := windowDecoder()
	if err != nil {
		return nil, fmt.Errorf("index: zstd decoder: %w", err)
	}
	out, err := dec.DecodeAll(w, make([]byte, 0, WindowSize))
	if err != nil {
		return nil, fmt.Errorf("index: bad window: %w", err)
	}
	if len(out) > WindowSize {
		return nil, fmt.Errorf("index: bad window: %d bytes, more than %d", len(out), WindowSize)
	}
	return out, nil
}

// decodeGzip inflates spans [p.First, p.End) from the fetched bytes, the
// first with history hist when given (DecodeAfter). Each
// span starts at a checkpoint, so each is inflated on its own: with
// klauspost/compress when it can (decodeGzipFast), else with the resumable
// fork, which runs across member boundaries as needed.
func (x *Index) decodeGzip(p Plan, window, hist, fetched, buf []byte) ([][]byte, error) {
	var total int64
	for i := p.First; i < p.End; i++ {
		total += x.Spans[i].USize
	}
	var out, scratch []byte
	if int64(cap(buf)) >= x.DecodeSize(p) {
		out, scratch = buf[:total], buf[total:cap(buf)]
	} else {
		out = make([]byte, total)
	}
	var n int64
	for i := p.First; i < p.End; i++ {
		s := &x.Spans[i]
		dst := out[n : n+s.USize]
		in, err := spanBytes(s, p, fetched)
		if err != nil {
			return nil, err
		}
		// The first span's history is the plan's window; a later span's
		// is the output before it, which saves decoding its window (and
		// lets a detached index decode a plan with one window).
		var dict []byte
		switch {
		case s.Header:
		case i == p.First && hist != nil:
			dict = hist
		case i == p.First || n < WindowSize:
			w := x.Spans[i].Window
			if i == p.First && window != nil {
				w = window
			} else if i != p.First && x.NeedsWindow(i) {
				// Builders never cut a span this short.
				return nil, fmt.Errorf("index: span %d follows only %d bytes of the plan; decode it on its own", i, n)
			}
			if dict, err = decodeWindow(w); err != nil {
				return nil, fmt.Errorf("index: span %d: %w", i, err)
			}
		default:
			dict = out[n-WindowSize : n]
		}
		n += s.USize
		if decodeGzipFast(s, dict, in, dst, scratch) {
			continue
		}
		if err := x.inflateFork(Plan{First: i, End: i + 1, Offset: p.Offset}, dict, fetched, dst); err != nil {
			return nil, err
		}
	}
	return splitSpans(x, p, out), nil
}

// inflateFork inflates the spans of p into out with the resumable fork in
// index/flate, starting at the first span's checkpoint and running across
// member boundaries as needed. fetched starts at p.Offset and may run past
// the plan's spans.
func (x *Index) inflateFork(p Plan, win, fetched []byte, out []byte) error {
	s0 := &x.Spans[p.First]
	total := int64(len(out))
	in := flate.NewInputBytes(fetched[s0.COffset-p.Offset:], s0.COffset)
	header := s0.Header
	var f *flate.Decompressor
	if !header {
		var err error
		if f, err = flate.Resume(in, uint(s0.Bits), win); err != nil {
			return fmt.Errorf("%w: span %d: %v", ErrCorrupt, p.First, err)
		}
	}
	var n int64
	for n < total {
		if header {
			if err := readGzipHeader(in); err != nil {
				return fmt.Errorf("%w: gzip header at offset %d: %v", ErrCorrupt, in.Offset(), err)
			}
			if f == nil {
				f = flate.NewReader(in)
			} else {
				f.Reset(in, nil)
			}
			header = false
		}
		m, err := f.Read(out[n:])
		n += int64(m)
		if errors.Is(err, io.EOF) {
			if n < total {
				var tr [8]byte
				if _, err := io.ReadFull(in, tr[:]); err != nil {
					return fmt.Errorf("%w: gzip trailer at offset %d: %v", ErrCorrupt, in.Offset(), noEOF(err))
				}
			}
			header = true
			continue
		}
		if err != nil && n < total {
			// Running out of input past the last wanted byte is expected:
			// the fetch ends at the next checkpoint, and the decompressor
			// reads ahead to fill its window.
			return fmt.Errorf("%w: inflating spans [%d, %d): %v", ErrCorrupt, p.First, p.End, err)
		}
	}
	return nil
}

// splitSpans cuts the uncompressed bytes of a plan into its spans.
func splitSpans(x *Index, p Plan, out []byte) [][]byte {
	res := make([][]byte, 0, p.End-p.First)
	var off int64
	for i := p.First; i < p.End; i++ {
		n := x.Spans[i].USize
		res = append(res, out[off:off+n:off+n])
		off += n
	}
	return res
}

// decodeGzipFast fills out from span s's checkpoint with klauspost's
// inflate, about twice as fast as the resumable fork in index/flate, which
// can start at any bit but is otherwise the standard library's inflate.
// klauspost starts at a byte; a checkpoint mid-byte gets empty blocks in
// front (alignedInput), which keeps every byte of the span where it was.
// (Shifting the input by s.Bits instead is not exact: a stored block is
// aligned to the unshifted bytes, and at the shifted alignment its length
// check passes one time in 2^Bits, after which inflate copies misaligned
// bytes into out.) It returns false when klauspost fails; the caller then
// uses the fork. in starts at s.COffset and was verified against the span
// digests.
func decodeGzipFast(s *Span, dict, in, out, scratch []byte) bool {
	if s.Header {
		fin := flate.NewInputBytes(in, 0)
		if readGzipHeader(fin) != nil {
			return false
		}
		in = alignedInput(0, in[fin.Offset():], scratch)
	} else {
		if len(in) == 0 {
			return false
		}
		in = alignedInput(s.Bits, in, scratch)
	}
	br := bytes.NewReader(in)
	fr := kflate.NewReaderDict(br, dict)
	defer fr.Close()
	// Only len(out) bytes are read: what follows the span in the input
	// (the next checkpoint, the padding) never reaches out.
	if _, err := io.ReadFull(fr, out); err != nil {
		return false
	}
	// A correct inflate ends where the span's input ends: it reads at
	// most a few bytes past the last symbol it needs (the bench layer: 3
	// to 8), and the last span of a member leaves its 8-byte trailer.
	// Anything else means the span is not what this path assumes.
	left := br.Len() - inflatePad
	return left >= -inflatePad && left <= maxInflateLeft
}

// maxInflateLeft is how many bytes of a span's input decodeGzipFast may
// leave unread: a gzip trailer, and some slack.
const maxInflateLeft = 16

// inflatePad is how many zero bytes follow the input of decodeGzipFast:
// klauspost's inflate looks a few bytes ahead while it decodes the last
// wanted symbols, and fails where the fetch ends instead. The padding is
// never part of the output: only total bytes are read.
const inflatePad = 8
