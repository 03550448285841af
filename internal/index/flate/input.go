// Input was written for Riffle; it replaces the bufio.Reader that
// compress/flate wraps around sources lacking ReadByte.

package flate

import "io"

// Input is the buffered byte source the Decompressor reads from. It is a
// concrete type, rather than an interface, so that the Huffman decoding
// loop can read its buffer directly instead of calling ReadByte through
// an interface for every byte. It knows its absolute offset in the
// compressed stream, which the Decompressor uses to report bit positions.
type Input struct {
	buf  []byte
	pos  int
	src  io.Reader // nil for an Input over a byte slice
	base int64     // stream offset of buf[0]
	err  error

	// Hook, when set, receives every consumed byte exactly once, in order,
	// in chunks: when the buffer is refilled and when FlushHook is called.
	// The index builder hashes the compressed stream through it.
	Hook   func([]byte)
	hooked int // buf[:hooked] was passed to Hook
}

// NewInput returns an Input reading from r through a buffer of size bytes,
// whose first byte is at stream offset base.
func NewInput(r io.Reader, size int, base int64) *Input {
	if size < 512 {
		size = 512
	}
	return &Input{buf: make([]byte, 0, size), src: r, base: base}
}

// NewInputBytes returns an Input over b, whose first byte is at stream
// offset base. It ends with io.EOF after the last byte of b.
func NewInputBytes(b []byte, base int64) *Input {
	return &Input{buf: b, base: base}
}

// ReadByte implements io.ByteReader.
func (in *Input) ReadByte() (byte, error) {
	if in.pos < len(in.buf) {
		c := in.buf[in.pos]
		in.pos++
		return c, nil
	}
	return in.readByteSlow()
}

func (in *Input) readByteSlow() (byte, error) {
	if err := in.fill(); err != nil {
		return 0, err
	}
	c := in.buf[in.pos]
	in.pos++
	return c, nil
}

// fill refills an exhausted buffer. It returns an error only when no byte
// could be read.
func (in *Input) fill() error {
	for in.pos >= len(in.buf) {
		if in.src == nil {
			return io.EOF
		}
		if in.err != nil {
			return in.err
		}
		in.FlushHook()
		in.base += int64(len(in.buf))
		in.buf = in.buf[:cap(in.buf)]
		n, err := in.src.Read(in.buf)
		in.buf = in.buf[:n]
		in.pos, in.hooked = 0, 0
		if err != nil {
			in.err = err
		}
	}
	return nil
}

// Read implements io.Reader.
func (in *Input) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if in.pos >= len(in.buf) {
		if err := in.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, in.buf[in.pos:])
	in.pos += n
	return n, nil
}

// Offset returns the stream offset of the next byte to be read.
func (in *Input) Offset() int64 { return in.base + int64(in.pos) }

// LastByte returns the most recently consumed byte. It is valid only right
// after a byte was read and before the buffer is refilled, which is the
// case inside an OnBlock callback that sits in the middle of a byte.
func (in *Input) LastByte() byte { return in.buf[in.pos-1] }

// FlushHook passes the bytes consumed since the last call to Hook.
func (in *Input) FlushHook() {
	if in.Hook != nil && in.pos > in.hooked {
		in.Hook(in.buf[in.hooked:in.pos])
	}
	in.hooked = in.pos
}

// AtEOF reports whether the stream has no more bytes. It may block to
// read ahead.
func (in *Input) AtEOF() bool {
	return in.pos >= len(in.buf) && in.fill() != nil
}

// PeekByte returns the next byte without consuming it. It may refill the
// buffer, after which LastByte is no longer valid.
func (in *Input) PeekByte() (byte, error) {
	if in.pos >= len(in.buf) {
		if err := in.fill(); err != nil {
			return 0, err
		}
	}
	return in.buf[in.pos], nil
}
