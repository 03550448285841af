package index

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Magic starts every serialized index.
const Magic = "RIFFLEIX"

const (
	headerLen  = len(Magic) + 2
	trailerLen = sha256.Size

	// The smallest encodings of a span and a file; they bound the counts
	// Unmarshal accepts by the input length.
	minSpanLen = 1 + 1 + 1 + 1 + sha256.Size // a detached span has no window length
	minFileLen = 15

	maxWindowLen = 2 * WindowSize // a stored window never compresses to more

	// maxSpanUSize bounds what Decode may allocate for one span. Gzip
	// spans exceed SpanSize by at most one DEFLATE block; a zstd frame
	// larger than this makes the layer not streamable.
	maxSpanUSize = 2 * MaxSpanSize
)

const (
	spanBitsMask   = 0x07
	spanHeaderFlag = 0x08
	spanWindowFlag = 0x10 // detached: a window sum follows
	flagDiffID     = 0x01
	flagDetached   = 0x02
)

// MarshalBinary encodes x in the format described in FORMAT.md. The
// encoding is canonical: equal indexes give equal bytes.
func (x *Index) MarshalBinary() ([]byte, error) {
	if err := x.Validate(); err != nil {
		return nil, err
	}
	if x.Kind.fromTOC() {
		return nil, fmt.Errorf("index: a %s index is not stored; make it from the layer's TOC with FromTOC", x.Kind)
	}
	return x.encode(), nil
}

// encode writes x without checking it (tests use it to forge indexes).
func (x *Index) encode() []byte {
	e := &encoder{b: make([]byte, 0, 256+len(x.Spans)*64+len(x.Files)*96)}
	e.b = append(e.b, Magic...)
	e.b = binary.LittleEndian.AppendUint16(e.b, Version)
	e.b = append(e.b, byte(x.Kind))
	e.str(x.MediaType)
	e.b = append(e.b, digestBytes(x.BlobDigest)...)
	e.uvarint(uint64(x.BlobSize))
	var flags byte
	if x.DiffID != "" {
		flags |= flagDiffID
	}
	if x.Detached {
		flags |= flagDetached
	}
	e.b = append(e.b, flags)
	if x.DiffID != "" {
		e.b = append(e.b, digestBytes(x.DiffID)...)
	}
	e.uvarint(uint64(x.UncompressedSize))
	e.uvarint(uint64(x.SpanSize))
	e.str(x.NotStreamable)
	e.uvarint(uint64(len(x.Spans)))
	var prevC int64
	for i := range x.Spans {
		s := &x.Spans[i]
		e.uvarint(uint64(s.USize))
		e.uvarint(uint64(s.COffset - prevC))
		prevC = s.COffset
		e.uvarint(uint64(s.CSize))
		fl := s.Bits & spanBitsMask
		if s.Header {
			fl |= spanHeaderFlag
		}
		hasSum := s.WindowSum != [32]byte{}
		if hasSum {
			fl |= spanWindowFlag
		}
		e.b = append(e.b, fl)
		if !x.Detached {
			e.str(string(s.Window))
		} else if hasSum {
			e.b = append(e.b, s.WindowSum[:]...)
		}
		e.b = append(e.b, s.Digest[:]...)
		if x.Kind != KindTar { // a tar span's USum is its Digest
			e.b = append(e.b, s.USum[:]...)
		}
	}
	e.uvarint(uint64(len(x.Files)))
	prev := ""
	for i := range x.Files {
		f := &x.Files[i]
		p := commonPrefix(prev, f.Name)
		e.uvarint(uint64(p))
		e.str(f.Name[p:])
		prev = f.Name
		e.b = append(e.b, f.Type)
		e.varint(f.Mode)
		e.varint(f.UID)
		e.varint(f.GID)
		e.str(f.Uname)
		e.str(f.Gname)
		e.uvarint(uint64(f.Size))
		e.varint(f.ModTime.Unix())
		e.uvarint(uint64(f.ModTime.Nanosecond()))
		e.str(f.Linkname)
		e.varint(f.Devmajor)
		e.varint(f.Devminor)
		keys := make([]string, 0, len(f.PAX))
		for k := range f.PAX {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		e.uvarint(uint64(len(keys)))
		for _, k := range keys {
			e.str(k)
			e.str(f.PAX[k])
		}
		if f.IsRegular() {
			e.uvarint(uint64(f.Offset))
			e.b = append(e.b, f.Digest[:]...)
		}
	}
	sum := sha256.Sum256(e.b)
	return append(e.b, sum[:]...)
}

type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }

func digestBytes(d digest.Digest) []byte {
	b := make([]byte, sha256.Size)
	if d != "" {
		hex.Decode(b, []byte(d.Encoded())) // Validate has checked the form
	}
	return b
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// ErrVersion is returned (wrapped) by Unmarshal for an index written in
// another format version: a store holding one should build it again.
var ErrVersion = errors.New("index: unsupported format version")

// Unmarshal decodes and validates an index. It accepts only what
// MarshalBinary produces for a valid index, byte for byte, so hostile or
// damaged input is rejected with an error starting "index: " rather than
// reaching a consumer. Allocations are bounded by len(b).
func Unmarshal(b []byte) (*Index, error) {
	if len(b) < headerLen+trailerLen {
		return nil, fmt.Errorf("index: %d bytes is too short for an index", len(b))
	}
	if string(b[:len(Magic)]) != Magic {
		return nil, errors.New("index: bad magic; not a Riffle layer index")
	}
	if v := binary.LittleEndian.Uint16(b[len(Magic):]); v != Version {
		return nil, fmt.Errorf("%w: format version %d is not supported (this build reads version %d); rebuild the index", ErrVersion, v, Version)
	}
	body, sum := b[:len(b)-trailerLen], b[len(b)-trailerLen:]
	if s := sha256.Sum256(body); !bytes.Equal(s[:], sum) {
		return nil, errors.New("index: checksum mismatch; the index is damaged or truncated")
	}
	d := &decoder{b: body, pos: headerLen}
	x := &Index{}
	x.Kind = Kind(d.byte())
	if x.Kind.fromTOC() {
		return nil, fmt.Errorf("index: a %s index is never stored; make it with FromTOC", x.Kind)
	}
	x.MediaType = d.str()
	x.BlobDigest = d.digest()
	x.BlobSize = d.size("blob size")
	flags := d.byte()
	if flags&^(flagDiffID|flagDetached) != 0 {
		d.fail("unknown header flags %#x", flags)
	}
	x.Detached = flags&flagDetached != 0
	if flags&flagDiffID != 0 {
		x.DiffID = d.digest()
	}
	x.UncompressedSize = d.size("uncompressed size")
	x.SpanSize = d.size("span size")
	x.NotStreamable = d.str()
	n := d.count("span", minSpanLen)
	if n > 0 {
		x.Spans = make([]Span, n)
	}
	var c, u int64
	for i := range x.Spans {
		s := &x.Spans[i]
		s.UOffset = u
		s.USize = d.size("span size")
		c += d.size("span offset")
		s.COffset = c
		s.CSize = d.size("span length")
		fl := d.byte()
		known := byte(spanBitsMask | spanHeaderFlag)
		if x.Detached {
			known |= spanWindowFlag
		}
		if fl&^known != 0 {
			d.fail("span %d: unknown flags %#x", i, fl)
		}
		s.Bits = fl & spanBitsMask
		s.Header = fl&spanHeaderFlag != 0
		if !x.Detached {
			if w := d.str(); w != "" {
				s.Window = []byte(w)
			}
		} else if fl&spanWindowFlag != 0 {
			copy(s.WindowSum[:], d.bytes(sha256.Size))
			if s.WindowSum == [32]byte{} {
				d.fail("span %d: zero window digest", i)
			}
		}
		copy(s.Digest[:], d.bytes(sha256.Size))
		if x.Kind == KindTar {
			s.USum = s.Digest
		} else {
			copy(s.USum[:], d.bytes(sha256.Size))
		}
		u += s.USize
		if d.err != nil || u < 0 || c < 0 {
			break
		}
	}
	n = d.count("file", minFileLen)
	if n > 0 {
		x.Files = make([]File, n)
	}
	prev := ""
	for i := range x.Files {
		f := &x.Files[i]
		p := d.uvarint()
		suffix := d.str()
		if p > uint64(len(prev)) {
			d.fail("file %d: name prefix %d is longer than the previous name", i, p)
			break
		}
		f.Name = prev[:p] + suffix
		if commonPrefix(prev, f.Name) != int(p) {
			d.fail("file %d: name prefix is not canonical", i)
		}
		prev = f.Name
		f.Type = d.byte()
		f.Mode = d.varint()
		f.UID = d.varint()
		f.GID = d.varint()
		f.Uname = d.str()
		f.Gname = d.str()
		f.Size = d.size("file size")
		sec := d.varint()
		nsec := d.uvarint()
		if nsec >= 1e9 {
			d.fail("file %q: mtime nanoseconds %d out of range", f.Name, nsec)
		}
		f.ModTime = time.Unix(sec, int64(nsec))
		f.Linkname = d.str()
		f.Devmajor = d.varint()
		f.Devminor = d.varint()
		npax := d.count("PAX record", 2)
		var lastKey string
		for j := 0; j < npax && d.err == nil; j++ {
			k, v := d.str(), d.str()
			if j > 0 && k <= lastKey {
				d.fail("file %q: PAX records are not sorted or repeat %q", f.Name, k)
			}
			lastKey = k
			if f.PAX == nil {
				f.PAX = make(map[string]string, npax)
			}
			f.PAX[k] = v
		}
		if f.IsRegular() {
			f.Offset = d.size("file offset")
			copy(f.Digest[:], d.bytes(sha256.Size))
		}
		if d.err != nil {
			break
		}
	}
	if d.err == nil && d.pos != len(d.b) {
		d.fail("%d unexpected bytes after the file table", len(d.b)-d.pos)
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

// decoder reads the body; the first error sticks and later reads return
// zero values, so the parse code stays linear.
type decoder struct {
	b   []byte
	pos int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("index: at byte %d: %s", d.pos, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || d.pos >= len(d.b) {
		d.fail("unexpected end of index")
		return 0
	}
	c := d.b[d.pos]
	d.pos++
	return c
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b)-d.pos {
		d.fail("unexpected end of index")
		return nil
	}
	b := d.b[d.pos : d.pos+n]
	d.pos += n
	return b
}

// uvarint reads a minimally encoded uvarint, so every value has exactly
// one encoding.
func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.pos:])
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	if n > 1 && d.b[d.pos+n-1] == 0 {
		d.fail("non-canonical varint")
		return 0
	}
	d.pos += n
	return v
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

// size reads a non-negative int64.
func (d *decoder) size(what string) int64 {
	v := d.uvarint()
	if v > 1<<62 {
		d.fail("%s %d is too large", what, v)
		return 0
	}
	return int64(v)
}

// count reads a number of items of at least minLen bytes each, refusing
// counts the remaining input cannot hold, so a forged count cannot make
// us allocate more than the input justifies.
func (d *decoder) count(what string, minLen int) int {
	v := d.uvarint()
	if v > uint64((len(d.b)-d.pos)/minLen) {
		d.fail("%s count %d exceeds what %d remaining bytes can hold", what, v, len(d.b)-d.pos)
		return 0
	}
	return int(v)
}

func (d *decoder) str() string {
	n := d.uvarint()
	if n > uint64(len(d.b)-d.pos) {
		d.fail("string length %d exceeds the remaining %d bytes", n, len(d.b)-d.pos)
		return ""
	}
	return string(d.bytes(int(n)))
}

func (d *decoder) digest() digest.Digest {
	b := d.bytes(sha256.Size)
	if b == nil {
		return ""
	}
	return digest.Digest(fmt.Sprintf("sha256:%x", b))
}

// Validate checks the invariants every consumer relies on; Unmarshal and
// MarshalBinary call it, and indexes made by FromTOC pass it too.
func (x *Index) Validate() error {
	if x.Kind < KindTar || x.Kind > KindZstdChunked {
		return fmt.Errorf("index: unknown layer kind %d", x.Kind)
	}
	if x.BlobDigest.Algorithm() != digest.SHA256 || x.BlobDigest.Validate() != nil {
		return fmt.Errorf("index: blob digest %q is not a sha256 digest", x.BlobDigest)
	}
	if x.DiffID != "" && (x.DiffID.Algorithm() != digest.SHA256 || x.DiffID.Validate() != nil) {
		return fmt.Errorf("index: diff ID %q is not a sha256 digest", x.DiffID)
	}
	if x.BlobSize < 0 || x.UncompressedSize < 0 {
		return errors.New("index: negative size")
	}
	if x.SpanSize < MinSpanSize || x.SpanSize > MaxSpanSize {
		return fmt.Errorf("index: span size %d is outside [%d, %d]", x.SpanSize, MinSpanSize, MaxSpanSize)
	}
	if err := x.validateSpans(); err != nil {
		return err
	}
	return x.validateFiles()
}

func (x *Index) validateSpans() error {
	var u int64
	gz := x.Kind == KindGzip
	for i := range x.Spans {
		s := &x.Spans[i]
		if s.UOffset != u {
			return fmt.Errorf("index: span %d starts at %d, want %d (spans must be sorted and contiguous)", i, s.UOffset, u)
		}
		if s.USize < 0 || (s.USize == 0 && i != len(x.Spans)-1) {
			return fmt.Errorf("index: span %d is empty", i)
		}
		if s.USize > maxSpanUSize {
			return fmt.Errorf("index: span %d is %d bytes, more than the %d a reader may be asked to hold", i, s.USize, int64(maxSpanUSize))
		}
		if s.CSize <= 0 || s.COffset < 0 || s.COffset > x.BlobSize || s.CSize > x.BlobSize-s.COffset {
			return fmt.Errorf("index: span %d [%d, +%d) lies outside the %d-byte blob", i, s.COffset, s.CSize, x.BlobSize)
		}
		if s.Bits > 7 {
			return fmt.Errorf("index: span %d: bit offset %d is more than 7", i, s.Bits)
		}
		hasSum := s.WindowSum != [32]byte{}
		if !gz && (s.Bits != 0 || s.Header || len(s.Window) != 0 || hasSum) {
			return fmt.Errorf("index: span %d has gzip checkpoint fields in a %s layer", i, x.Kind)
		}
		if x.Detached && len(s.Window) != 0 || !x.Detached && hasSum {
			return fmt.Errorf("index: span %d: a window and a window digest belong to an index that is detached (digest) or not (window), not both", i)
		}
		if i == 0 && !x.Kind.fromTOC() && s.COffset != 0 {
			return fmt.Errorf("index: span 0 starts at blob offset %d, want 0", s.COffset)
		}
		if i == 0 && gz && !s.Header {
			return errors.New("index: span 0 of a gzip layer must start at the member header")
		}
		if s.Header && (s.Bits != 0 || len(s.Window) != 0 || hasSum) {
			return fmt.Errorf("index: span %d starts at a gzip header but has a bit offset or window", i)
		}
		if i > 0 {
			p := &x.Spans[i-1]
			want := p.COffset + p.CSize
			if s.Bits != 0 {
				want-- // the boundary byte is shared
			}
			if x.Kind.fromTOC() {
				if s.COffset < want {
					return fmt.Errorf("index: span %d overlaps span %d", i, i-1)
				}
			} else if s.COffset != want {
				return fmt.Errorf("index: span %d starts at blob offset %d, want %d (spans must be contiguous)", i, s.COffset, want)
			}
		}
		if len(s.Window) > 0 {
			if err := checkWindow(s, s.Window); err != nil {
				return fmt.Errorf("index: span %d: %w", i, err)
			}
		}
		u += s.USize
		if u < 0 {
			return fmt.Errorf("index: span %d: size overflow", i)
		}
	}
	if len(x.Spans) > 0 {
		if u != x.UncompressedSize {
			return fmt.Errorf("index: spans cover %d bytes, the stream has %d", u, x.UncompressedSize)
		}
		if last := &x.Spans[len(x.Spans)-1]; !x.Kind.fromTOC() && last.COffset+last.CSize != x.BlobSize {
			return fmt.Errorf("index: spans end at blob offset %d, the blob has %d bytes", last.COffset+last.CSize, x.BlobSize)
		}
	}
	return nil
}

// checkWindow reports whether w is a well-formed stored window for span
// s: at most maxWindowLen bytes that decode to 1 to WindowSize bytes, no
// more than the stream holds before the span.
func checkWindow(s *Span, w []byte) error {
	if len(w) > maxWindowLen {
		return fmt.Errorf("bad window: %d bytes stored", len(w))
	}
	d, err := decodeWindow(w)
	if err != nil {
		return err
	}
	if int64(len(d)) > s.UOffset || len(d) == 0 {
		return fmt.Errorf("bad window: %d bytes at offset %d", len(d), s.UOffset)
	}
	return nil
}

func (x *Index) validateFiles() error {
	seen := make(map[string]struct{}, len(x.Files))
	for i := range x.Files {
		f := &x.Files[i]
		if c, err := cleanName(f.Name); err != nil || c != f.Name {
			if err == nil {
				err = fmt.Errorf("not in clean form (%q)", c)
			}
			return fmt.Errorf("index: file %d name %q: %v", i, f.Name, err)
		}
		if _, dup := seen[f.Name]; dup {
			return fmt.Errorf("index: file %q appears twice", f.Name)
		}
		seen[f.Name] = struct{}{}
		switch f.Type {
		case tar.TypeReg:
			if f.Size < 0 || f.Offset < 0 || f.Offset > x.UncompressedSize || f.Size > x.UncompressedSize-f.Offset {
				return fmt.Errorf("index: file %q data [%d, +%d) lies outside the %d-byte stream", f.Name, f.Offset, f.Size, x.UncompressedSize)
			}
		case tar.TypeLink:
			if c, err := cleanName(f.Linkname); err != nil || c != f.Linkname {
				return fmt.Errorf("index: file %q: hard link target %q is not a clean relative path", f.Name, f.Linkname)
			}
		case tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo, tar.TypeGNUSparse, tar.TypeCont:
		default:
			return fmt.Errorf("index: file %q has unknown type %q", f.Name, f.Type)
		}
		if !f.IsRegular() && (f.Size != 0 || f.Offset != 0 || f.Digest != [32]byte{}) {
			return fmt.Errorf("index: file %q of type %q has data fields", f.Name, f.Type)
		}
		if strings.IndexByte(f.Linkname, 0) >= 0 {
			return fmt.Errorf("index: file %q: link target contains a NUL byte", f.Name)
		}
		for k := range f.PAX {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return fmt.Errorf("index: file %q: bad PAX key %q", f.Name, k)
			}
		}
	}
	return nil
}
