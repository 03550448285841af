package index

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// A zstd layer can be entered only at a frame start, so its spans are runs
// of whole frames: a span closes at the first frame end after SpanSize
// uncompressed bytes. Frames are not indexed one by one because chunking
// encoders (zstd:chunked) make a frame per file chunk, often a few KiB;
// grouping them keeps the index small and the cache's unit of storage
// sensible, and a layer of large frames still gets one span per frame.
func buildZstd(x *Index, r *bufio.Reader) error {
	h := newBlobHasher()
	fr := &zstdFrameReader{r: r, h: h}
	sums := newSpanSums()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<40))
	if err != nil {
		return fmt.Errorf("index: zstd decoder: %w", err)
	}
	defer dec.Close()
	s := &zstdStream{x: x, fr: fr, dec: dec, h: h, sums: sums}
	ra := newReadAhead(s)
	defer ra.Close()
	if err := walkTar(x, ra); err != nil {
		return err
	}
	if s.out != x.UncompressedSize {
		return fmt.Errorf("index: internal error: zstd output %d != tar stream %d", s.out, x.UncompressedSize)
	}
	if h.n > s.cstart {
		x.Spans = append(x.Spans, Span{UOffset: s.ustart, USize: s.out - s.ustart, COffset: s.cstart, CSize: h.n - s.cstart, Digest: h.cut()})
		sums.cutAt(s.out)
	}
	if err := sums.set(x); err != nil {
		return err
	}
	x.BlobSize = h.n
	x.BlobDigest = h.blobDigest()
	for i := range x.Spans {
		if x.Spans[i].USize > maxSpanUSize && x.NotStreamable == "" {
			x.NotStreamable = fmt.Sprintf("zstd frame run at uncompressed offset %d is %d bytes; frames over %d bytes are too large to fetch as one span", x.Spans[i].UOffset, x.Spans[i].USize, int64(maxSpanUSize))
		}
	}
	if x.NotStreamable != "" {
		x.Spans = nil
	}
	if s.frames == 1 && x.UncompressedSize > max(x.SpanSize, maxSingleFrame) {
		// Reading any byte would mean decompressing from the layer's start.
		x.NotStreamable = fmt.Sprintf("the zstd layer is a single %d-byte frame, so any read would decompress it from the start; recompress it with many frames (for example as zstd:chunked)", x.BlobSize)
		x.Spans = nil
	}
	return nil
}

// maxSingleFrame is the largest zstd layer of one frame that is still
// streamable (as one span) with spans smaller than it: reading any of it
// costs about what a 4 MiB span did before spans shrank to 1 MiB.
const maxSingleFrame = 4 << 20

// zstdStream is the uncompressed stream of a zstd blob, decoded frame by
// frame so that frame boundaries are known in both offsets.
type zstdStream struct {
	x       *Index
	fr      *zstdFrameReader
	dec     *zstd.Decoder
	h       *blobHasher
	sums    *spanSums
	inFrame bool
	done    bool
	frames  int   // data frames seen
	out     int64 // uncompressed bytes so far
	cstart  int64 // current span's first blob byte
	ustart  int64 // current span's first uncompressed byte
}

func (s *zstdStream) Read(p []byte) (int, error) {
	for {
		if s.inFrame {
			n, err := s.dec.Read(p)
			s.sums.write(p[:n])
			s.out += int64(n)
			if errors.Is(err, io.EOF) {
				if err := s.endFrame(); err != nil {
					return n, err
				}
				err = nil
			}
			if err != nil {
				return n, fmt.Errorf("index: zstd frame %d: %w", s.frames-1, err)
			}
			if n > 0 {
				return n, nil
			}
			continue
		}
		if s.done {
			return 0, io.EOF
		}
		if _, err := s.fr.r.Peek(1); err != nil {
			if errors.Is(err, io.EOF) {
				s.done = true
				continue
			}
			return 0, fmt.Errorf("index: reading layer: %w", err)
		}
		skippable, err := s.fr.start()
		if err != nil {
			return 0, err
		}
		if skippable {
			if _, err := io.Copy(io.Discard, s.fr); err != nil {
				return 0, err
			}
			continue
		}
		if err := s.dec.Reset(s.fr); err != nil {
			return 0, fmt.Errorf("index: zstd frame %d: %w", s.frames, err)
		}
		s.frames++
		s.inFrame = true
	}
}

// endFrame closes the span at this frame end if it is long enough.
func (s *zstdStream) endFrame() error {
	s.inFrame = false
	// The decoder stops at the frame's end; make sure nothing is left.
	if n, err := io.Copy(io.Discard, s.fr); err != nil || n != 0 {
		return fmt.Errorf("index: zstd frame %d: decoder stopped %d bytes before the frame end: %v", s.frames-1, n, err)
	}
	if s.out-s.ustart >= s.x.SpanSize {
		s.x.Spans = append(s.x.Spans, Span{UOffset: s.ustart, USize: s.out - s.ustart, COffset: s.cstart, CSize: s.h.n - s.cstart, Digest: s.h.cut()})
		s.sums.cutAt(s.out)
		s.ustart, s.cstart = s.out, s.h.n
	}
	return nil
}

// zstdFrameReader passes through the bytes of one zstd frame (RFC 8878)
// and then reports io.EOF, by following the frame's block headers. Every
// byte read from r is hashed.
type zstdFrameReader struct {
	r       *bufio.Reader
	h       *blobHasher
	pending []byte // header bytes read but not yet passed on
	pass    int64  // payload bytes to pass through before the next header
	state   int
	check   bool // frame has a content checksum
	scratch [18]byte
}

const (
	zfBlock = iota
	zfChecksum
	zfEnd
)

// read reads n header bytes into pending.
func (f *zstdFrameReader) read(n int) ([]byte, error) {
	b := f.scratch[len(f.pending) : len(f.pending)+n]
	if _, err := io.ReadFull(f.r, b); err != nil {
		return nil, fmt.Errorf("index: zstd frame header: %w", noEOF(err))
	}
	f.h.Write(b)
	f.pending = f.scratch[:len(f.pending)+n]
	return b, nil
}

// start reads the next frame's header and reports whether the frame is a
// skippable one (no data).
func (f *zstdFrameReader) start() (skippable bool, err error) {
	f.pending = f.scratch[:0]
	m, err := f.read(4)
	if err != nil {
		return false, err
	}
	if isSkippableMagic(m) {
		sz, err := f.read(4)
		if err != nil {
			return false, err
		}
		f.pass = int64(uint32(sz[0]) | uint32(sz[1])<<8 | uint32(sz[2])<<16 | uint32(sz[3])<<24)
		f.state = zfEnd
		return true, nil
	}
	if string(m) != string(zstdMagic) {
		return false, fmt.Errorf("index: not a zstd frame at blob offset %d", f.h.n-4)
	}
	d, err := f.read(1)
	if err != nil {
		return false, err
	}
	fhd := d[0]
	if fhd&0x08 != 0 {
		return false, errors.New("index: zstd frame header has the reserved bit set")
	}
	single := fhd&0x20 != 0
	n := []int{0, 1, 2, 4}[fhd&3]
	if !single {
		n++ // window descriptor
	}
	switch fhd >> 6 {
	case 0:
		if single {
			n++
		}
	case 1:
		n += 2
	case 2:
		n += 4
	case 3:
		n += 8
	}
	if _, err := f.read(n); err != nil {
		return false, err
	}
	f.check = fhd&0x04 != 0
	f.state = zfBlock
	f.pass = 0
	return false, nil
}

func (f *zstdFrameReader) Read(p []byte) (int, error) {
	for {
		if len(f.pending) > 0 {
			n := copy(p, f.pending)
			f.pending = f.pending[n:]
			return n, nil
		}
		if f.pass > 0 {
			n, err := f.r.Read(p[:min(int64(len(p)), f.pass)])
			f.h.Write(p[:n])
			f.pass -= int64(n)
			if err != nil && f.pass > 0 {
				return n, fmt.Errorf("index: zstd frame: %w", noEOF(err))
			}
			return n, nil
		}
		switch f.state {
		case zfBlock:
			f.pending = f.scratch[:0]
			b, err := f.read(3)
			if err != nil {
				return 0, err
			}
			hdr := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
			size := int64(hdr >> 3)
			switch (hdr >> 1) & 3 {
			case 1: // RLE: one byte repeated size times
				size = 1
			case 3:
				return 0, errors.New("index: zstd block of reserved type")
			}
			f.pass = size
			if hdr&1 != 0 {
				f.state = zfChecksum
			}
		case zfChecksum:
			if f.check {
				f.pass = 4
			}
			f.state = zfEnd
		case zfEnd:
			return 0, io.EOF
		}
	}
}

var spanDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(2*MaxSpanSize))
})

// decodeZstd decodes each span's frames; spans are independent.
func (x *Index) decodeZstd(p Plan, fetched []byte) ([][]byte, error) {
	dec, err := spanDecoder()
	if err != nil {
		return nil, fmt.Errorf("index: zstd decoder: %w", err)
	}
	out := make([][]byte, 0, p.End-p.First)
	for i := p.First; i < p.End; i++ {
		s := &x.Spans[i]
		b, _ := spanBytes(s, p, fetched)
		u, err := dec.DecodeAll(b, make([]byte, 0, s.USize))
		if err != nil {
			return nil, fmt.Errorf("%w: span %d: %v", ErrCorrupt, i, err)
		}
		if int64(len(u)) != s.USize {
			return nil, fmt.Errorf("%w: span %d decoded to %d bytes, want %d", ErrCorrupt, i, len(u), s.USize)
		}
		out = append(out, u)
	}
	return out, nil
}

// isSkippableMagic reports whether m starts a skippable frame
// (magic 0x184D2A50 to 0x184D2A5F).
func isSkippableMagic(m []byte) bool {
	return len(m) >= 4 && m[0]&0xf0 == 0x50 && m[1] == 0x2a && m[2] == 0x4d && m[3] == 0x18
}
