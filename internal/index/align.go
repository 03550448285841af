package index

// A gzip checkpoint sits between two deflate blocks, at bit Bits of its
// first byte. klauspost's inflate starts at a byte. Shifting the input
// would misalign stored blocks, which are aligned to the stream's bytes;
// instead alignPrefix puts empty deflate blocks in front of the span's
// bytes, Bits bits short of a whole number of bytes, so that the span's
// first block starts at bit Bits of an unshifted byte, exactly where it
// started in the layer. The empty blocks output nothing, so the window
// passed as dictionary is still the history the span's matches refer to.

// emptyFixed is a non-final fixed-Huffman block holding only its
// end-of-block code: 1 + 2 + 7 = 10 bits.
func emptyFixed(w *bitWriter) {
	w.put(0, 1) // BFINAL
	w.put(1, 2) // BTYPE fixed
	w.put(0, 7) // end of block, symbol 256
}

// emptyDynamic is a non-final dynamic-Huffman block holding only its
// end-of-block code, 93 bits long. Its literal/length code has a single
// code, end of block, of length 1, and its distance code a single code of
// length 1: RFC 1951 allows such one-code trees and every inflate in Go
// (and zlib) accepts them. Its code-length code has two symbols of length
// 1: 1 (code 0) and 18, repeat zero (code 1); HCLEN is 15 so that all 19
// code-length code lengths are sent, which is what makes the block odd.
func emptyDynamic(w *bitWriter) {
	w.put(0, 1)  // BFINAL
	w.put(2, 2)  // BTYPE dynamic
	w.put(0, 5)  // HLIT: 257 literal/length codes
	w.put(0, 5)  // HDIST: 1 distance code
	w.put(15, 4) // HCLEN: 19 code-length code lengths
	for _, sym := range [19]int{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15} {
		if sym == 1 || sym == 18 {
			w.put(1, 3)
		} else {
			w.put(0, 3)
		}
	}
	w.put(1, 1)      // 18: repeat zero ...
	w.put(138-11, 7) // ... 138 times
	w.put(1, 1)      // 18: repeat zero ...
	w.put(118-11, 7) // ... 118 times: literals 0-255 unused
	w.put(0, 1)      // 1: end of block has length 1
	w.put(0, 1)      // 1: distance 0 has length 1
	w.put(0, 1)      // end of block
}

// alignPrefixes[r] are empty blocks whose length in bits is r modulo 8,
// r in [1, 8), packed LSB first, with the bit count.
var alignPrefixes = func() (p [8]struct {
	b    []byte
	bits int
}) {
	// fixed: 10 bits, 2 mod 8; dynamic: 93 bits, 5 mod 8.
	plan := [8]struct{ dyn, fixed int }{1: {1, 2}, 2: {0, 1}, 3: {1, 3}, 4: {0, 2}, 5: {1, 0}, 6: {0, 3}, 7: {1, 1}}
	for r := 1; r < 8; r++ {
		var w bitWriter
		for range plan[r].dyn {
			emptyDynamic(&w)
		}
		for range plan[r].fixed {
			emptyFixed(&w)
		}
		if w.n%8 != r || len(w.b) > maxAlignPrefix {
			panic("index: bad alignment prefix")
		}
		p[r].b, p[r].bits = w.b, w.n
	}
	return p
}()

// maxAlignPrefix bounds the bytes alignedInput puts before a span.
const maxAlignPrefix = 16

// alignedInput returns, in scratch when it is big enough, an input for a
// byte-aligned inflate that starts at bit bits of in[0]: empty blocks up to
// bit bits of a byte, that byte's upper bits from in[0], the rest of in,
// then inflatePad zero bytes. With bits 0 it is a padded copy of in.
func alignedInput(bits uint8, in, scratch []byte) []byte {
	pre := alignPrefixes[bits]
	whole := pre.bits / 8 // bytes of the prefix before the shared byte
	n := whole + len(in) + inflatePad
	out := scratch[:0]
	if cap(out) < n {
		out = make([]byte, n)
	}
	out = out[:n]
	copy(out, pre.b[:whole])
	copy(out[whole:], in)
	if bits != 0 {
		low := byte(1)<<bits - 1
		out[whole] = pre.b[whole]&low | in[0]&^low
	}
	clear(out[whole+len(in):])
	return out
}

// bitWriter packs bits LSB first, as deflate does.
type bitWriter struct {
	b []byte
	n int // bits written
}

// put writes the low n bits of v, least significant first. Deflate's
// Huffman codes are sent most significant bit first; every code written
// here is one bit long, so the two orders agree.
func (w *bitWriter) put(v uint32, n int) {
	for i := range n {
		if w.n%8 == 0 {
			w.b = append(w.b, 0)
		}
		w.b[len(w.b)-1] |= byte(v>>i&1) << (w.n % 8)
		w.n++
	}
}
