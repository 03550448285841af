package index

import (
	"archive/tar"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// Version is the version of the binary format written by MarshalBinary.
const Version = 2

// DefaultSpanSize is the amount of uncompressed data between checkpoints
// when Options.SpanSize is zero. It was chosen by measurement (see
// FORMAT.md, "Choosing the span size"): with detached windows the index a
// node reads first does not grow with the number of spans, and a cold
// python import was fastest with 1 MiB spans (4 MiB fetched 1.7 times
// the bytes; 512 KiB took more round trips).
const DefaultSpanSize = 1 << 20

// MinSpanSize and MaxSpanSize bound Options.SpanSize.
const (
	MinSpanSize = 64 << 10
	MaxSpanSize = 1 << 30
)

// WindowSize is the size of the DEFLATE history a gzip checkpoint carries.
const WindowSize = 32 << 10

// ErrNotStreamable is returned (wrapped, with the reason) by PlanRange on
// an Index whose layer cannot be read lazily, such as a large layer that
// is one zstd frame. Test with errors.Is; Index.NotStreamable holds the
// reason.
var ErrNotStreamable = errors.New("index: layer is not streamable")

// ErrCorrupt is wrapped by every error that reports fetched data not
// matching the index (a span digest mismatch or undecodable span). The
// caller should refetch, and never use the data.
var ErrCorrupt = errors.New("index: fetched data does not match the index")

// Kind is the encoding of a layer blob.
type Kind uint8

// The kinds of layer an Index describes.
const (
	KindTar         Kind = 1 // uncompressed tar: spans are plain byte ranges
	KindGzip        Kind = 2 // gzip (one or more members): spans start at checkpoints
	KindZstd        Kind = 3 // zstd: spans are runs of whole frames
	KindEStargz     Kind = 4 // eStargz, from its TOC: one span per chunk
	KindZstdChunked Kind = 5 // zstd:chunked, from its TOC: one span per chunk
)

func (k Kind) String() string {
	switch k {
	case KindTar:
		return "tar"
	case KindGzip:
		return "gzip"
	case KindZstd:
		return "zstd"
	case KindEStargz:
		return "estargz"
	case KindZstdChunked:
		return "zstd:chunked"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// fromTOC reports whether spans were made from a TOC, in which case the
// uncompressed offsets are virtual and span digests cover uncompressed data.
func (k Kind) fromTOC() bool { return k == KindEStargz || k == KindZstdChunked }

// Index describes one layer blob: its files and how to read any range of
// its uncompressed tar stream with one Range request.
type Index struct {
	Kind      Kind
	MediaType string // as given to Build; informational

	BlobDigest digest.Digest // sha256 of the blob as stored in the registry
	BlobSize   int64
	// DiffID is the sha256 of the uncompressed tar stream, comparable with
	// the image config's rootfs.diff_ids. Empty for TOC-based layers.
	DiffID digest.Digest
	// UncompressedSize is the length of the uncompressed stream the spans
	// and file offsets address. For TOC-based layers it is virtual: the
	// concatenated chunk contents.
	UncompressedSize int64
	SpanSize         int64 // the SpanSize the index was built with

	// NotStreamable is empty for a streamable layer, or says why reads
	// cannot be served by range requests (the file table is still valid).
	NotStreamable string

	Spans []Span // contiguous in uncompressed space, sorted
	Files []File // in tar order; names are unique (the last tar entry wins)

	// Detached is set for an index whose gzip windows are kept apart
	// (Detach): its spans carry WindowSum instead of Window, so the index
	// a node fetches before the first read is the file table and the span
	// list, not ~12 KB of window per span. A plan whose first span needs
	// a window (NeedsWindow) is decoded with DecodeWindow, which checks the
	// window against WindowSum.
	Detached bool

	tocChunks [][]tocChunk // per span, for TOC-based kinds
}

// Span is a run of the uncompressed stream that can be fetched with one
// Range request and decoded on its own.
type Span struct {
	UOffset int64 // first uncompressed byte
	USize   int64 // uncompressed length, > 0
	COffset int64 // first blob byte to fetch
	CSize   int64 // blob bytes to fetch, > 0

	// Gzip only. Bits is how many low bits of the first fetched byte belong
	// to the previous deflate block (0-7). Header is set when the span
	// starts at a gzip member header rather than at a checkpoint. Window is
	// the zstd-compressed inflate history (up to 32 KiB) preceding the
	// checkpoint; empty for Header spans and right after a member start.
	Bits   uint8
	Header bool
	Window []byte
	// WindowSum is set instead of Window in a detached index (see
	// Index.Detached): the sha256 of the stored window, which a reader
	// fetches when it needs it and hands to DecodeWindow. Zero
	// when the span has no window.
	WindowSum [32]byte

	// Digest is the sha256 of the CSize fetched bytes (for TOC-based
	// layers: of the USize uncompressed bytes, the TOC's chunkDigest).
	Digest [32]byte
	// USum is the sha256 of the span's USize uncompressed bytes: equal to
	// Digest for a tar layer, zero for TOC-based layers (their chunks are
	// checked by the TOC). It lets span data that arrives in another
	// encoding than the layer's, such as a recompressed prefetch pack, be
	// checked against the index.
	USum [32]byte
}

// File is one tar entry.
type File struct {
	// Name is cleaned: no leading "/" or "./", no trailing "/", no "."
	// or ".." components; the root directory is ".".
	Name     string
	Type     byte  // tar type flag (tar.TypeReg, tar.TypeDir, ...)
	Mode     int64 // permission and mode bits as in the tar header
	UID, GID int64
	Uname    string
	Gname    string
	Size     int64 // content size for regular files; 0 otherwise
	ModTime  time.Time
	// Linkname is the target of a symlink (verbatim) or of a hard link
	// (cleaned like Name).
	Linkname           string
	Devmajor, Devminor int64
	// PAX holds the entry's PAX records other than those already
	// represented above (path, linkpath, size, uid, gid, uname, gname,
	// mtime): xattrs as "SCHILY.xattr.<name>", atime, ctime, and others.
	PAX map[string]string
	// Offset is where the content starts in the uncompressed stream
	// (regular files only).
	Offset int64
	// Digest is the sha256 of the content (regular files only).
	Digest [32]byte
}

// IsRegular reports whether f carries content.
func (f *File) IsRegular() bool { return f.Type == tar.TypeReg || f.Type == tar.TypeRegA }

// Xattrs returns f's extended attributes (from its SCHILY.xattr PAX
// records), or nil.
func (f *File) Xattrs() map[string]string {
	var m map[string]string
	for k, v := range f.PAX {
		if len(k) > len(paxXattr) && k[:len(paxXattr)] == paxXattr {
			if m == nil {
				m = make(map[string]string)
			}
			m[k[len(paxXattr):]] = v
		}
	}
	return m
}

const paxXattr = "SCHILY.xattr."

// Streamable reports whether ranges of the layer can be read lazily.
func (x *Index) Streamable() bool { return x.NotStreamable == "" && len(x.Spans) > 0 }

// SpanAt returns the index of the span holding uncompressed offset off,
// or -1 when off is outside the stream.
func (x *Index) SpanAt(off int64) int {
	i := sort.Search(len(x.Spans), func(i int) bool {
		s := &x.Spans[i]
		return s.UOffset+s.USize > off
	})
	if i == len(x.Spans) || off < 0 || off < x.Spans[i].UOffset {
		return -1
	}
	return i
}

// Plan is one Range request that serves a range of the uncompressed
// stream: the spans [First, End) and the blob bytes [Offset, Offset+Length)
// that hold them.
type Plan struct {
	First, End int
	Offset     int64
	Length     int64
}

// PlanRange returns the request that serves the uncompressed range
// [off, off+n). A range that straddles checkpoints is still one request:
// it covers consecutive spans, whose compressed bytes are contiguous. For
// a cache that stores whole spans, call PlanSpans for only the missing
// ones instead.
func (x *Index) PlanRange(off, n int64) (Plan, error) {
	if !x.Streamable() {
		return Plan{}, fmt.Errorf("%w: %s", ErrNotStreamable, x.NotStreamable)
	}
	if n <= 0 || off < 0 || off+n > x.UncompressedSize || off+n < off {
		return Plan{}, fmt.Errorf("index: range [%d, +%d) is outside the %d-byte stream", off, n, x.UncompressedSize)
	}
	first := x.SpanAt(off)
	last := x.SpanAt(off + n - 1)
	if first < 0 || last < 0 {
		return Plan{}, fmt.Errorf("index: range [%d, +%d) is not covered by spans", off, n)
	}
	return x.PlanSpans(first, last+1)
}

// SpanRange returns the spans [first, end) that hold the uncompressed
// range [off, off+n), for a cache that checks which it already has before
// calling PlanSpans for the rest.
func (x *Index) SpanRange(off, n int64) (first, end int, err error) {
	p, err := x.PlanRange(off, n)
	if err != nil {
		return 0, 0, err
	}
	return p.First, p.End, nil
}

// PlanFile is PlanRange for [off, off+n) of regular file f's content,
// clipped to the file's end. It fails for an empty range, such as a read
// at or past the end of the file.
func (x *Index) PlanFile(f *File, off, n int64) (Plan, error) {
	if !f.IsRegular() {
		return Plan{}, fmt.Errorf("index: %s is not a regular file", f.Name)
	}
	if off < 0 || off >= f.Size || n <= 0 {
		return Plan{}, fmt.Errorf("index: range [%d, +%d) is outside %s (%d bytes)", off, n, f.Name, f.Size)
	}
	return x.PlanRange(f.Offset+off, min(n, f.Size-off))
}

// PlanSpans returns the request that fetches spans [first, end).
func (x *Index) PlanSpans(first, end int) (Plan, error) {
	if !x.Streamable() {
		return Plan{}, fmt.Errorf("%w: %s", ErrNotStreamable, x.NotStreamable)
	}
	if first < 0 || end > len(x.Spans) || first >= end {
		return Plan{}, fmt.Errorf("index: span range [%d, %d) is outside [0, %d)", first, end, len(x.Spans))
	}
	start := x.Spans[first].COffset
	stop := start
	for i := first; i < end; i++ {
		s := &x.Spans[i]
		stop = max(stop, s.COffset+s.CSize)
	}
	return Plan{First: first, End: end, Offset: start, Length: stop - start}, nil
}

// NeedsWindow reports whether decoding a plan that starts at span n needs
// a window the index does not hold: the index is detached and the span
// starts at a checkpoint with history before it.
func (x *Index) NeedsWindow(n int) bool {
	return x.Detached && n >= 0 && n < len(x.Spans) && x.Spans[n].WindowSum != [32]byte{}
}

// Detach returns a copy of x whose spans carry the sha256 of their window
// instead of the window, and the windows, by span (nil where a span has
// none). The copy marshals to the small index a node fetches first; the
// windows are served on their own. Detaching a detached index or a
// non-gzip one returns an equal copy and no windows.
func (x *Index) Detach() (*Index, [][]byte) {
	y := *x
	if x.Kind != KindGzip || x.Detached {
		return &y, nil
	}
	y.Detached = true
	y.Spans = make([]Span, len(x.Spans))
	windows := make([][]byte, len(x.Spans))
	for i, s := range x.Spans {
		if len(s.Window) > 0 {
			s.WindowSum = sha256Sum(s.Window)
			windows[i] = s.Window
			s.Window = nil
		}
		y.Spans[i] = s
	}
	return &y, windows
}

// CheckWindow reports whether w is span n's stored window in a detached
// index, and whether it is well formed: it must match WindowSum and
// decode to at most WindowSize bytes, none before the stream's start.
func (x *Index) CheckWindow(n int, w []byte) error {
	if !x.NeedsWindow(n) {
		return fmt.Errorf("index: span %d takes no separate window", n)
	}
	if sha256Sum(w) != x.Spans[n].WindowSum {
		return fmt.Errorf("%w: span %d: window digest mismatch", ErrCorrupt, n)
	}
	if err := checkWindow(&x.Spans[n], w); err != nil {
		return fmt.Errorf("%w: span %d: %w", ErrCorrupt, n, err)
	}
	return nil
}

// Decode verifies the blob bytes fetched for p (exactly p.Length bytes
// from p.Offset) against the span digests and returns the uncompressed
// content of each span of p, in order: out[i] is span p.First+i, of length
// Spans[p.First+i].USize. Digest mismatches and undecodable data wrap
// ErrCorrupt. For KindTar the slices alias fetched. Decode is safe for
// concurrent use.
func (x *Index) Decode(p Plan, fetched []byte) ([][]byte, error) {
	return x.DecodeInto(p, fetched, nil)
}

// DecodeInto is Decode using buf, when it has DecodeSize(p) bytes of
// capacity, for its output and scratch space (the spans then alias buf),
// so that a caller decoding many plans can reuse one buffer instead of
// allocating about three times the plan's size each time. Only gzip uses
// buf; other kinds allocate (zstd) or alias fetched (tar) as Decode does.
func (x *Index) DecodeInto(p Plan, fetched, buf []byte) ([][]byte, error) {
	return x.DecodeWindow(p, nil, fetched, buf)
}

// DecodeWindow is DecodeInto for a detached index: window is the stored
// window of span p.First, fetched apart from the index, when NeedsWindow
// says the span has one (nil otherwise). Decode checks it against the
// span's WindowSum first. Later spans of the plan take their history from
// the output before them, so a plan needs one window however many spans
// it covers.
func (x *Index) DecodeWindow(p Plan, window, fetched, buf []byte) ([][]byte, error) {
	if err := x.checkPlan(p, fetched); err != nil {
		return nil, err
	}
	// Verify first: nothing untrusted reaches a decompressor.
	if x.NeedsWindow(p.First) {
		if len(window) == 0 {
			return nil, fmt.Errorf("index: span %d: the index is detached and no window was given; fetch it first", p.First)
		}
		if err := x.CheckWindow(p.First, window); err != nil {
			return nil, err
		}
	} else if window != nil {
		return nil, fmt.Errorf("index: span %d takes no separate window", p.First)
	}
	return x.decodeVerified(p, window, nil, fetched, buf)
}

// DecodeAfter is DecodeWindow for a reader that has decoded the spans
// before the plan: the first span takes its history from prev, the
// uncompressed bytes just before it (at least WindowSize of them, or all
// from the stream's start), instead of a window. A reader of consecutive
// runs of spans (one request, or one stream cut in chunks) so needs no
// window but the first one's. A short prev is an error that is not
// ErrCorrupt: decode with the window instead.
func (x *Index) DecodeAfter(p Plan, prev, fetched, buf []byte) ([][]byte, error) {
	if err := x.checkPlan(p, fetched); err != nil {
		return nil, err
	}
	s := &x.Spans[p.First]
	if x.Kind != KindGzip || s.Header {
		// No history to take: the span decodes on its own.
		return x.decodeVerified(p, nil, nil, fetched, buf)
	}
	need := min(WindowSize, s.UOffset)
	if int64(len(prev)) < need {
		return nil, fmt.Errorf("index: span %d needs %d bytes of history, got %d", p.First, need, len(prev))
	}
	return x.decodeVerified(p, nil, prev[int64(len(prev))-need:], fetched, buf)
}

// checkPlan checks that plan p lies in the index and that fetched holds
// its bytes.
func (x *Index) checkPlan(p Plan, fetched []byte) error {
	if p.First < 0 || p.End > len(x.Spans) || p.First >= p.End {
		return fmt.Errorf("index: plan spans [%d, %d) are outside [0, %d)", p.First, p.End, len(x.Spans))
	}
	if int64(len(fetched)) != p.Length {
		return fmt.Errorf("%w: got %d bytes for a %d-byte plan", ErrCorrupt, len(fetched), p.Length)
	}
	return nil
}

// decodeVerified checks the span digests of plan p, then decodes it. The
// first span's history is hist (raw bytes) when given, else window (a
// checked stored window), else the index's own.
func (x *Index) decodeVerified(p Plan, window, hist, fetched, buf []byte) ([][]byte, error) {
	if !x.Kind.fromTOC() {
		for i := p.First; i < p.End; i++ {
			b, err := spanBytes(&x.Spans[i], p, fetched)
			if err != nil {
				return nil, err
			}
			if sha256Sum(b) != x.Spans[i].Digest {
				return nil, fmt.Errorf("%w: span %d digest mismatch", ErrCorrupt, i)
			}
		}
	}
	switch x.Kind {
	case KindTar:
		out := make([][]byte, 0, p.End-p.First)
		for i := p.First; i < p.End; i++ {
			b, _ := spanBytes(&x.Spans[i], p, fetched)
			out = append(out, b)
		}
		return out, nil
	case KindGzip:
		return x.decodeGzip(p, window, hist, fetched, buf)
	case KindZstd:
		return x.decodeZstd(p, fetched)
	case KindEStargz, KindZstdChunked:
		return x.decodeTOC(p, fetched)
	}
	return nil, fmt.Errorf("index: unknown layer kind %d", x.Kind)
}

// DecodeSize is the capacity DecodeInto needs in buf to allocate nothing
// for plan p.
func (x *Index) DecodeSize(p Plan) int64 {
	var total, maxC int64
	for i := p.First; i < p.End && i < len(x.Spans); i++ {
		total += x.Spans[i].USize
		maxC = max(maxC, x.Spans[i].CSize)
	}
	if x.Kind != KindGzip {
		return total
	}
	return total + maxC + maxAlignPrefix + inflatePad
}

// spanBytes returns the part of fetched that holds span s.
func spanBytes(s *Span, p Plan, fetched []byte) ([]byte, error) {
	lo := s.COffset - p.Offset
	hi := lo + s.CSize
	if lo < 0 || hi > int64(len(fetched)) {
		return nil, fmt.Errorf("index: span at %d is outside the plan [%d, +%d)", s.COffset, p.Offset, p.Length)
	}
	return fetched[lo:hi], nil
}

// ReadAt is a convenience for tools and tests: it serves
// [off, off+len(p)) of the uncompressed stream by fetching the plan's
// bytes with fetch (one call) and decoding them.
func (x *Index) ReadAt(p []byte, off int64, fetch func(off, n int64) ([]byte, error)) error {
	if len(p) == 0 {
		return nil
	}
	plan, err := x.PlanRange(off, int64(len(p)))
	if err != nil {
		return err
	}
	data, err := fetch(plan.Offset, plan.Length)
	if err != nil {
		return err
	}
	spans, err := x.Decode(plan, data)
	if err != nil {
		return err
	}
	n := 0
	for i, b := range spans {
		s := &x.Spans[plan.First+i]
		lo := max(off+int64(n)-s.UOffset, 0)
		n += copy(p[n:], b[lo:])
	}
	return nil
}

// DecodeNext is DecodeWindow for the one span n, taking its history from
// prev, the uncompressed bytes just before the span (at least WindowSize
// of them, or all from the stream's start), instead of a window: a reader
// of consecutive spans from one request decodes each as its bytes arrive,
// with no window but the first one's. fetched holds exactly the bytes
// PlanSpans(n, n+1) names. It verifies them as DecodeWindow does.
func (x *Index) DecodeNext(n int, prev, fetched, buf []byte) ([]byte, error) {
	p, err := x.PlanSpans(n, n+1)
	if err != nil {
		return nil, err
	}
	out, err := x.DecodeAfter(p, prev, fetched, buf)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
