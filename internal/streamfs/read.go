package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/riffle-dev/riffle/internal/cache"
)

// readFile reads file n's bytes at off into dest from the span cache,
// fetching missing spans. It returns the number of bytes read (short only
// at the end of the file).
//
// streak is how many bytes the caller has read contiguously up to off: a
// reader streaming the file (streak of at least streamingStreak) gets the
// next Options.ReadAhead spans of the file fetched in the background.
func (m *MountPoint) readFile(ctx context.Context, n *node, dest []byte, off, streak int64) (int, error) {
	if off >= n.size {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.ReadTimeout)
	defer cancel()
	end := min(off+int64(len(dest)), n.size)
	spans := m.spans[n.layer]
	pos, stop := n.off+off, n.off+end
	i := spanAt(spans, pos)
	done := 0
	for pos < stop {
		if i >= len(spans) {
			return done, fmt.Errorf("streamfs: offset %d is past the layer's spans", pos)
		}
		sp := spans[i]
		e, err := m.span(ctx, n.layer, i)
		if err != nil {
			return done, err
		}
		k := min(stop, sp.Offset+sp.Size) - pos
		_, err = e.ReadAt(dest[done:done+int(k)], pos-sp.Offset)
		e.Close()
		if err != nil {
			return done, fmt.Errorf("streamfs: read cached span: %w", err)
		}
		// Reads that reach the last quarter of a span start fetching the
		// next one, if the file goes on into it; a streaming reader gets
		// more ahead.
		if !m.opts.NoPrefetch {
			ahead := 0
			if streak >= streamingStreak {
				ahead = m.opts.ReadAhead
			} else if pos+k > sp.Offset+sp.Size*3/4 {
				ahead = 1
			}
			for j := i + 1; j <= i+ahead && j < len(spans) && spans[j].Offset < n.off+n.size; j++ {
				m.prefetch(n.layer, j)
			}
		}
		pos += k
		done += int(k)
		i++
	}
	return done, nil
}

// streamingStreak is how much a reader must have read contiguously to be
// treated as streaming the file.
const streamingStreak = 4 << 20

// spanAt returns the index of the span holding offset pos.
func spanAt(spans []Span, pos int64) int {
	return sort.Search(len(spans), func(i int) bool { return spans[i].Offset+spans[i].Size > pos })
}

// span returns span s of layer l from the cache, fetching it once however
// many readers want it (cache.Fill shares one fill among its callers).
func (m *MountPoint) span(ctx context.Context, l, s int) (*cache.Entry, error) {
	key := cache.SpanKey(m.img.Layers[l].Digest(), s)
	if e, err := m.cache.Get(ctx, key); err == nil {
		m.metrics.hits.Inc()
		return e, nil
	}
	m.metrics.misses.Inc()
	e, err := m.cache.Fill(ctx, key, m.spans[l][s].Size, func(ctx context.Context, w io.Writer) error {
		data, err := m.fetch(ctx, l, s)
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("streamfs: layer %s span %d: %w", m.img.Layers[l].Digest(), s, err)
	}
	return e, nil
}

// fetch gets span s of layer l from the registry, retrying failures
// (corrupt data included) up to Options.Retries times while ctx lasts.
func (m *MountPoint) fetch(ctx context.Context, l, s int) ([]byte, error) {
	layer, want := m.img.Layers[l], m.spans[l][s].Size
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		start := time.Now()
		data, err := layer.FetchSpan(ctx, s)
		if err == nil && int64(len(data)) != want {
			err = fmt.Errorf("%w: got %d bytes, want %d", ErrCorrupt, len(data), want)
		}
		if err == nil {
			m.metrics.latency.Observe(time.Since(start).Seconds())
			m.metrics.spans.Inc()
			m.metrics.bytes.Add(float64(len(data)))
			return data, nil
		}
		m.metrics.errors.Inc()
		if errors.Is(err, ErrCorrupt) {
			m.metrics.corrupt.Inc()
		}
		m.log.Warn("streamfs: fetch failed", "layer", layer.Digest(), "span", s, "attempt", attempt, "err", err)
		if attempt >= m.opts.Retries || ctx.Err() != nil {
			return nil, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		backoff *= 2
	}
}

// prefetch fills span s of layer l in the background, if not cached yet.
// At most Options.Prefetchers run at once; more are dropped, not queued.
func (m *MountPoint) prefetch(l, s int) {
	if s >= len(m.spans[l]) {
		return
	}
	select {
	case m.prefetchSem <- struct{}{}:
	default:
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer func() { <-m.prefetchSem }()
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.ReadTimeout)
		defer cancel()
		if e, err := m.span(ctx, l, s); err == nil {
			e.Close()
		}
	}()
}

// promote stores file n's whole content in the cache under its digest, in
// the background, from the (now cached) spans, so that later opens use
// passthrough. The cache checks the digest.
func (m *MountPoint) promote(n *node) {
	if m.opts.NoPassthrough || n.size == 0 {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.ReadTimeout+time.Duration(n.size/(1<<20))*time.Second)
		defer cancel()
		e, err := m.cache.Fill(ctx, n.digest.String(), n.size, func(ctx context.Context, w io.Writer) error {
			buf := make([]byte, 1<<20)
			for off := int64(0); off < n.size; {
				k, err := m.readFile(ctx, n, buf, off, off)
				if err != nil {
					return err
				}
				if _, err := w.Write(buf[:k]); err != nil {
					return err
				}
				off += int64(k)
			}
			return nil
		})
		if err != nil {
			m.log.Warn("streamfs: caching whole file failed", "digest", n.digest, "err", err)
			return
		}
		e.Close()
	}()
}
