package imagegen

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// Fill chooses how generated file content looks to a compressor.
type Fill int

const (
	// Mixed content is half random, half repeated: every 4 KiB block holds
	// 2 KiB of random bytes followed by a copy of them, so gzip and zstd
	// shrink it to about half and run fast. It is the default because
	// real layers are partly compressible and building a 300 MB layer of
	// pure noise would spend most of its time in the compressor.
	Mixed Fill = iota
	// Random content is incompressible ChaCha8 output.
	Random
	// Zeros content is all zero bytes.
	Zeros
)

// String returns the name of f.
func (f Fill) String() string {
	switch f {
	case Mixed:
		return "mixed"
	case Random:
		return "random"
	case Zeros:
		return "zeros"
	}
	return "fill(?)"
}

const (
	contentBlock = 4096
	contentChunk = 64 * 1024 // generated at once; a multiple of contentBlock
)

// Content returns a reader of size deterministic bytes generated from seed.
// The bytes depend only on (seed, size's prefix, fill): Content(s, n, f) is a
// prefix of Content(s, m, f) for n <= m, whatever buffer sizes the reader is
// called with.
func Content(seed uint64, size int64, fill Fill) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], 0x726966666c65) // "riffle", to keep seed 0 away from the all-zero key
	return &contentReader{rng: rand.NewChaCha8(key), remain: size, fill: fill}
}

type contentReader struct {
	rng    *rand.ChaCha8
	remain int64
	fill   Fill
	buf    [contentChunk]byte
	pos    int // next unread byte in buf
	end    int // valid bytes in buf
}

func (r *contentReader) Read(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if r.pos == r.end {
			if r.remain == 0 {
				break
			}
			r.refill()
		}
		c := copy(p, r.buf[r.pos:r.end])
		r.pos += c
		n += c
		p = p[c:]
	}
	if n == 0 && r.remain == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// refill generates the next chunk. The whole chunk is always generated, so
// the stream does not depend on how much of it is consumed.
func (r *contentReader) refill() {
	switch r.fill {
	case Zeros:
		clear(r.buf[:])
	case Random:
		_, _ = r.rng.Read(r.buf[:])
	default:
		for off := 0; off < contentChunk; off += contentBlock {
			half := r.buf[off : off+contentBlock/2]
			_, _ = r.rng.Read(half)
			copy(r.buf[off+contentBlock/2:off+contentBlock], half)
		}
	}
	r.pos = 0
	r.end = contentChunk
	if int64(r.end) > r.remain {
		r.end = int(r.remain)
	}
	r.remain -= int64(r.end)
}

// WriteTo writes the rest of the content to w without an intermediate
// buffer, which matters when a 300 MB file goes into a tar stream.
func (r *contentReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.pos == r.end {
			if r.remain == 0 {
				return total, nil
			}
			r.refill()
		}
		n, err := w.Write(r.buf[r.pos:r.end])
		r.pos += n
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}
