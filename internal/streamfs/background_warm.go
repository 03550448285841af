package streamfs

import (
	"context"
	"io"
	"math"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/remote"
)

// A warm node (an earlier mount's readers left most of a layer's spans in
// the cache, but its layer stream never completed) extracts the layer from
// those spans instead of streaming it from the registry again: the store
// gets the same uncompressed stream at local-disk speed, with no
// decompression, and the image settles in seconds without the link. The
// spans were verified when they were cached and the store checks the
// layer's diffID, as for a stream from the registry. Spans missing from the
// cache are fetched by range (and cached, like any span) on the way.

// openLayerStream returns layer l's uncompressed stream for the store:
// from the cache when it holds at least half of the layer's spans (the
// range fetches of the rest then cost no more than streaming the whole
// layer), else from the registry with one request, gated so that blocked
// reads get the link first.
func (m *MountPoint) openLayerStream(ctx context.Context, l *bgLayer) (io.ReadCloser, error) {
	if f, ok := m.img.Layers[l.idx].(spanRunFetcher); ok && f.StreamsBySpans() && !m.opts.SingleStream {
		return m.openChunked(ctx, l, f), nil // background_chunks.go
	}
	l.planned.Store(math.MaxInt64) // one stream, in order: all of it
	if m.mostlyCached(l.idx) {
		return &cachedLayer{m: m, ctx: ctx, l: l.idx}, nil
	}
	ctx = remote.WithReceiveWindow(ctx, streamWindow)
	ls := m.img.Layers[l.idx].(LayerStreamer)
	return ls.OpenStream(ctx, func(r io.Reader) io.Reader { return &gatedReader{r: r, m: m, l: l, ctx: ctx} })
}

// mostlyCached reports whether the cache holds at least half of layer i's
// spans.
func (m *MountPoint) mostlyCached(i int) bool {
	spans := m.spans[i]
	have := 0
	for s := range spans {
		if m.cached(i, s) {
			have++
		}
	}
	return len(spans) > 0 && 2*have >= len(spans)
}

// cachedLayer reads a layer's uncompressed stream span by span from the
// cache, fetching (and caching) the spans it lacks.
type cachedLayer struct {
	m    *MountPoint
	ctx  context.Context
	l    int
	next int               // the span to open next
	e    *cache.Entry      // the span being read, nil between spans
	cur  *io.SectionReader // reads e
}

func (c *cachedLayer) Read(p []byte) (int, error) {
	for c.cur == nil {
		if c.next >= len(c.m.spans[c.l]) {
			return 0, io.EOF
		}
		if err := c.open(c.next); err != nil {
			return 0, err
		}
		c.next++
	}
	n, err := c.cur.Read(p)
	if err == io.EOF {
		c.closeSpan()
		err = nil
	}
	return n, err
}

// open opens span s for reading: from the cache, or fetched. Missing spans
// just ahead are fetched in the background meanwhile, so a layer with a
// few holes does not wait one round trip per hole.
func (c *cachedLayer) open(s int) error {
	m := c.m
	e, err := m.streamSpan(c.ctx, c.l, s)
	if err != nil {
		return err
	}
	for j := s + 1; j <= s+m.opts.ReadAhead && j < len(m.spans[c.l]); j++ {
		if !m.cache.Has(cache.SpanKey(m.img.Layers[c.l].Digest(), j)) {
			m.prefetch(c.l, j)
		}
	}
	c.e, c.cur = e, io.NewSectionReader(e, 0, e.Size())
	return nil
}

func (c *cachedLayer) closeSpan() {
	if c.e != nil {
		c.e.Close()
	}
	c.e, c.cur = nil, nil
}

// Close releases the span being read.
func (c *cachedLayer) Close() error {
	c.closeSpan()
	return nil
}

// streamSpan returns span s of layer l for a layer stream: from the cache
// (counted in background_cached_bytes), else fetched and cached.
func (m *MountPoint) streamSpan(ctx context.Context, l, s int) (*cache.Entry, error) {
	if e, err := m.cache.Get(ctx, cache.SpanKey(m.img.Layers[l].Digest(), s)); err == nil {
		m.metrics.bgCached.Add(float64(e.Size()))
		return e, nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.ReadTimeout)
	defer cancel()
	e, _, err := m.span(ctx, l, s, prioPrefetch)
	return e, err
}
