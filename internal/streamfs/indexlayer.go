package streamfs

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
)

// BlobReader reads ranges of a layer blob from its registry; *remote.Blob
// is one. It must return when ctx is done.
type BlobReader interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// IndexLayer returns the Layer that index x describes, reading spans from
// blob, and the windows of a detached x from windows (asking for those of
// repository repo, where blob is). A layer that x says
// cannot be read lazily, or a detached x without windows, gives a
// *NotEligibleError.
func IndexLayer(x *index.Index, repo string, blob BlobReader, windows WindowSource) (Layer, error) {
	if x == nil {
		return nil, NotEligible("", "the layer has no index")
	}
	if !x.Streamable() {
		reason := x.NotStreamable
		if reason == "" {
			reason = "its index has no spans"
		}
		return nil, NotEligible(x.BlobDigest, "%s", reason)
	}
	if x.Detached && windows == nil {
		return nil, NotEligible(x.BlobDigest, "its index came without windows and no service to fetch them from is configured")
	}
	return &indexLayer{x: x, repo: repo, blob: blob, windows: windows}, nil
}

type indexLayer struct {
	x       *index.Index
	repo    string // where blob is
	blob    BlobReader
	windows WindowSource // for a detached x

	wmu  sync.Mutex
	wins map[int][]byte // windows fetched, by span
}

// window returns the stored window span n needs to be decoded first in a
// plan: nil for a whole index (Decode takes it from x), else fetched from
// l.windows once and kept (about 12 KB each, only for spans read by range).
func (l *indexLayer) window(ctx context.Context, n int) ([]byte, error) {
	if !l.x.NeedsWindow(n) {
		return nil, nil
	}
	l.wmu.Lock()
	w, ok := l.wins[n]
	l.wmu.Unlock()
	if ok {
		return w, nil
	}
	w, err := l.windows.Window(ctx, l.repo, l.x.BlobDigest, n)
	if err != nil {
		return nil, fmt.Errorf("streamfs: window of span %d of %s: %w", n, l.x.BlobDigest, err)
	}
	if err := l.x.CheckWindow(n, w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	l.wmu.Lock()
	if l.wins == nil {
		l.wins = make(map[int][]byte)
	}
	l.wins[n] = w
	l.wmu.Unlock()
	return w, nil
}

// readPlan fetches plan p's blob bytes into wire and, at the same time,
// the window its first span needs (so a detached index costs no extra
// round trip). fetched is called when the blob bytes are in.
func (l *indexLayer) readPlan(ctx context.Context, p index.Plan, wire []byte, fetched func()) ([]byte, int, error) {
	var (
		win  []byte
		werr error
		done chan struct{}
	)
	if l.x.NeedsWindow(p.First) {
		done = make(chan struct{})
		go func() {
			defer close(done)
			win, werr = l.window(ctx, p.First)
		}()
	}
	got, err := l.blob.ReadAtContext(ctx, wire, p.Offset)
	if fetched != nil {
		fetched()
	}
	if done != nil {
		<-done
	}
	if err != nil && !(errors.Is(err, io.EOF) && int64(got) == p.Length) {
		return nil, got, fmt.Errorf("streamfs: fetch [%d, +%d) of %s: %w", p.Offset, p.Length, l.x.BlobDigest, err)
	}
	if werr != nil {
		return nil, got, werr
	}
	return win, got, nil
}

func (l *indexLayer) Digest() digest.Digest { return l.x.BlobDigest }

func (l *indexLayer) Entries() []Entry {
	out := make([]Entry, 0, len(l.x.Files))
	for i := range l.x.Files {
		f := &l.x.Files[i]
		e := Entry{
			Name:     f.Name,
			Type:     f.Type,
			Mode:     f.Mode,
			UID:      int(f.UID),
			GID:      int(f.GID),
			Size:     f.Size,
			ModTime:  f.ModTime,
			Linkname: f.Linkname,
			Devmajor: f.Devmajor,
			Devminor: f.Devminor,
			Xattrs:   f.Xattrs(),
			Offset:   f.Offset,
		}
		if f.IsRegular() {
			// As digest.NewDigestFromBytes, without its Sprintf: an
			// image has tens of thousands of files.
			e.Digest = digest.Digest("sha256:" + hex.EncodeToString(f.Digest[:]))
		}
		out = append(out, e)
	}
	return out
}

func (l *indexLayer) Spans() []Span {
	out := make([]Span, len(l.x.Spans))
	for i, s := range l.x.Spans {
		out[i] = Span{Offset: s.UOffset, Size: s.USize}
	}
	return out
}

// SpanWireSize is how many blob bytes fetching span n takes.
func (l *indexLayer) SpanWireSize(n int) int64 {
	plan, err := l.x.PlanSpans(n, n+1)
	if err != nil {
		return 0
	}
	return plan.Length
}

// wireBufs recycles the buffers compressed spans are fetched into (the
// decoded span is a new slice, except for uncompressed layers, whose
// spans alias the fetched bytes and so never come back here).
var wireBufs sync.Pool

func getWireBuf(n int64) []byte {
	if bp, ok := wireBufs.Get().(*[]byte); ok && int64(cap(*bp)) >= n {
		return (*bp)[:n]
	}
	return make([]byte, n)
}

func (l *indexLayer) FetchSpan(ctx context.Context, n int) ([]byte, error) {
	plan, err := l.x.PlanSpans(n, n+1)
	if err != nil {
		return nil, err
	}
	buf := getWireBuf(plan.Length)
	if l.x.Kind != index.KindTar {
		defer wireBufs.Put(&buf)
	}
	win, _, err := l.readPlan(ctx, plan, buf, nil)
	if err != nil {
		return nil, err
	}
	spans, err := l.x.DecodeWindow(plan, win, buf, nil)
	if err != nil {
		if errors.Is(err, index.ErrCorrupt) {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil, err
	}
	return spans[0], nil
}

// FetchSpans fetches spans [first, end) with one request, into buf when
// it has FetchSpansSize(first, end) bytes of capacity.
func (l *indexLayer) FetchSpans(ctx context.Context, first, end int, buf []byte, fetched func()) ([][]byte, int64, error) {
	plan, err := l.x.PlanSpans(first, end)
	if err != nil {
		return nil, 0, err
	}
	var wire, out []byte
	if int64(cap(buf)) >= plan.Length+l.x.DecodeSize(plan) {
		wire, out = buf[:plan.Length], buf[plan.Length:cap(buf)]
	} else {
		wire = make([]byte, plan.Length)
	}
	win, got, err := l.readPlan(ctx, plan, wire, fetched)
	if err != nil {
		return nil, int64(got), err
	}
	spans, err := l.decode(plan, win, wire, out)
	if err != nil {
		return nil, int64(got), err
	}
	return spans, int64(got), nil
}

// decode decodes plan from its blob bytes wire, marking corrupt data
// ErrCorrupt.
func (l *indexLayer) decode(plan index.Plan, window, wire, out []byte) ([][]byte, error) {
	spans, err := l.x.DecodeWindow(plan, window, wire, out)
	if errors.Is(err, index.ErrCorrupt) {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return spans, err
}

// FetchSpansSize is the buffer FetchSpans needs to allocate nothing.
func (l *indexLayer) FetchSpansSize(first, end int) int64 {
	plan, err := l.x.PlanSpans(first, end)
	if err != nil {
		return 0
	}
	return plan.Length + l.x.DecodeSize(plan)
}

// rangeOpener is a BlobReader that can also open one request for a range
// and hand over its body as it arrives (*remote.Blob).
type rangeOpener interface {
	OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
}

// SpanRange is the blob range [off, off+n) that spans [first, end) are
// fetched from (consecutive runs may share a byte; see index.Plan).
func (l *indexLayer) SpanRange(first, end int) (off, n int64, err error) {
	plan, err := l.x.PlanSpans(first, end)
	return plan.Offset, plan.Length, err
}

// OpenRange opens one request for the blob bytes [off, off+n), or fails
// when the blob reader cannot.
func (l *indexLayer) OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	ro, ok := l.blob.(rangeOpener)
	if !ok {
		return nil, fmt.Errorf("streamfs: layer %s: the blob reader cannot open ranges", l.x.BlobDigest)
	}
	return ro.OpenRange(ctx, off, n)
}

// SpanWindow is the stored window that decoding from span first needs
// (nil when it needs none).
func (l *indexLayer) SpanWindow(ctx context.Context, first int) ([]byte, error) {
	return l.window(ctx, first)
}

// DecodeSpans decodes and verifies spans [first, end) from wire, the
// blob bytes SpanRange names, with window from SpanWindow; with room in
// out it works there, and the spans alias it.
func (l *indexLayer) DecodeSpans(first, end int, window, wire, out []byte) ([][]byte, error) {
	plan, err := l.x.PlanSpans(first, end)
	if err != nil {
		return nil, err
	}
	return l.decode(plan, window, wire, out)
}

// NeedsWindow reports whether decoding from span first needs a window
// fetched apart from the index (a gzip span of a detached index).
func (l *indexLayer) NeedsWindow(first int) bool { return l.x.NeedsWindow(first) }

// DecodeSpansAfter is DecodeSpans for a reader that decoded the spans
// before first: prev, the uncompressed bytes just before span first (at
// least index.WindowSize of them, or all from the stream's start), stands
// in for the window.
func (l *indexLayer) DecodeSpansAfter(first, end int, prev, wire, out []byte) ([][]byte, error) {
	plan, err := l.x.PlanSpans(first, end)
	if err != nil {
		return nil, err
	}
	spans, err := l.x.DecodeAfter(plan, prev, wire, out)
	if errors.Is(err, index.ErrCorrupt) {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return spans, err
}

// StreamsBySpans reports whether the spans, in order, are the layer's tar
// stream: not for layers indexed from a table of contents, whose spans
// address a virtual stream.
func (l *indexLayer) StreamsBySpans() bool {
	switch l.x.Kind {
	case index.KindTar, index.KindGzip, index.KindZstd:
		return true
	}
	return false
}

// blobOpener is a BlobReader that can also stream the whole blob
// (*remote.Blob), checking its digest at the end.
type blobOpener interface {
	Open(ctx context.Context) (io.ReadCloser, error)
}

var _ LayerStreamer = (*indexLayer)(nil)

// OpenStream streams the blob with one request and decompresses it with
// klauspost/compress, several times faster than the span path's
// resumable inflate. Layers indexed from a TOC (eStargz, zstd:chunked)
// address a virtual stream and cannot be streamed this way.
func (l *indexLayer) OpenStream(ctx context.Context, wire func(io.Reader) io.Reader) (io.ReadCloser, error) {
	bo, ok := l.blob.(blobOpener)
	if !ok {
		return nil, fmt.Errorf("streamfs: layer %s: the blob reader cannot stream", l.x.BlobDigest)
	}
	switch l.x.Kind {
	case index.KindTar, index.KindGzip, index.KindZstd:
	default:
		return nil, fmt.Errorf("streamfs: layer %s: %s layers are read through their table of contents", l.x.BlobDigest, l.x.Kind)
	}
	rc, err := bo.Open(ctx)
	if err != nil {
		return nil, err
	}
	body := bufio.NewReaderSize(wire(rc), 128<<10)
	switch l.x.Kind {
	case index.KindGzip:
		zr, err := gzip.NewReader(body)
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("streamfs: layer %s: %w", l.x.BlobDigest, err)
		}
		return &stream{Reader: zr, body: body, closers: []func() error{zr.Close, rc.Close}}, nil
	case index.KindZstd:
		zr, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(streamMaxWindow), zstd.WithDecoderLowmem(true))
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("streamfs: layer %s: %w", l.x.BlobDigest, err)
		}
		return &stream{Reader: zr, body: body, closers: []func() error{func() error { zr.Close(); return nil }, rc.Close}}, nil
	}
	return &stream{Reader: body, body: body, closers: []func() error{rc.Close}}, nil
}

// streamMaxWindow bounds a zstd decoder's window in a layer stream (the
// format allows up to 3.75 TB); such layers fail to stream and stay on
// demand.
const streamMaxWindow = 128 << 20

// stream is a decompressed layer stream. At the end of the decompressed
// data it reads the body to its end, so the blob's digest is checked.
type stream struct {
	io.Reader
	body    io.Reader
	closers []func() error
	drained bool
}

func (s *stream) Read(p []byte) (int, error) {
	n, err := s.Reader.Read(p)
	if err == io.EOF && !s.drained {
		s.drained = true
		if _, derr := io.Copy(io.Discard, s.body); derr != nil {
			return n, fmt.Errorf("streamfs: layer stream: %w", derr)
		}
	}
	return n, err
}

func (s *stream) Close() error {
	var first error
	for _, c := range s.closers {
		if err := c(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// DecodeNext decodes and verifies span n alone from wire, its SpanRange
// bytes, taking its history from prev, the output before it (see
// index.Index.DecodeNext).
func (l *indexLayer) DecodeNext(n int, prev, wire, out []byte) ([]byte, error) {
	b, err := l.x.DecodeNext(n, prev, wire, out)
	if errors.Is(err, index.ErrCorrupt) {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return b, err
}
