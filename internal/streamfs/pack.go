package streamfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/index"
)

// PackSource gives the prefetch pack of a layer (see PackHeader) as one
// stream, for example the index service of riffle serve. It returns an
// error wrapping ErrNoPack when it has none.
type PackSource interface {
	Pack(ctx context.Context, layer digest.Digest) (io.ReadCloser, error)
}

// packLayer is a Layer whose spans can come from a pack: its index places
// and verifies them (indexLayer).
type packLayer interface {
	packIndex() *index.Index
}

func (l *indexLayer) packIndex() *index.Index { return l.x }

// packBufSize is the read buffer of a pack stream.
const packBufSize = 256 << 10

// readPack fetches layer l's prefetch pack in one stream and puts each of
// its spans, verified against the index, into the cache, as profile
// prefetches. It returns the spans of want (in their order) the pack did
// not deliver: none was found, the pack ended early or broke, a span was
// corrupt, or the pack is older than the profile. The caller fetches
// those by range. Spans already cached are skipped (their bytes read and
// dropped).
func (m *MountPoint) readPack(l int, want []int) []int {
	pl, ok := m.img.Layers[l].(packLayer)
	if !ok || m.opts.Packs == nil || len(want) == 0 {
		return want
	}
	d := m.img.Layers[l].Digest()
	rc, err := m.opts.Packs.Pack(m.ctx, d)
	if err != nil {
		if !errors.Is(err, ErrNoPack) && m.ctx.Err() == nil {
			m.log.Warn("streamfs: prefetch pack unavailable; fetching the profile by range", "layer", d, "err", err)
		}
		return want
	}
	defer rc.Close()
	// The pack is profile data: background streams pause while it runs.
	m.urgent.Add(1)
	defer m.urgent.Add(-1)
	m.metrics.packs.Inc()
	delivered, err := m.unpack(l, pl.packIndex(), bufio.NewReaderSize(&wireCounter{r: rc, m: m}, packBufSize))
	if err != nil && m.ctx.Err() == nil {
		m.log.Warn("streamfs: prefetch pack failed; fetching the rest of the profile by range", "layer", d, "delivered", len(delivered), "err", err)
	}
	var rest []int
	for _, s := range want {
		if !delivered[s] {
			rest = append(rest, s)
		}
	}
	return rest
}

// unpack reads a pack of layer l from r and caches its spans. It returns
// the spans now in the cache, and the error that ended it early.
func (m *MountPoint) unpack(l int, x *index.Index, r *bufio.Reader) (map[int]bool, error) {
	h, err := ReadPackHeader(r)
	if err == nil {
		err = h.Check(x)
	}
	if err != nil {
		return nil, err
	}
	delivered := make(map[int]bool, len(h.Spans))
	for _, ps := range h.Spans {
		buf := make([]byte, ps.Size)
		if _, err := io.ReadFull(r, buf); err != nil {
			return delivered, fmt.Errorf("streamfs: pack span %d: %w", ps.Span, err)
		}
		if m.cached(l, ps.Span) {
			delivered[ps.Span] = true
			continue
		}
		data, err := decodePackSpan(x, ps.Span, buf)
		if err != nil {
			// Verified data only: this span is fetched by range instead.
			m.metrics.corrupt.Inc()
			m.log.Warn("streamfs: prefetch pack span does not match the index", "layer", x.BlobDigest, "span", ps.Span, "err", err)
			continue
		}
		if err := m.fillFromPack(l, ps.Span, data); err != nil {
			if m.ctx.Err() != nil {
				return delivered, err
			}
			continue
		}
		delivered[ps.Span] = true
	}
	return delivered, nil
}

// decodePackSpan verifies and decodes span n's blob bytes from a pack.
func decodePackSpan(x *index.Index, n int, b []byte) ([]byte, error) {
	p, err := x.PlanSpans(n, n+1)
	if err != nil {
		return nil, err
	}
	out, err := x.Decode(p, b)
	if err != nil {
		if errors.Is(err, index.ErrCorrupt) {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil, err
	}
	if int64(len(out[0])) != x.Spans[n].USize {
		return nil, fmt.Errorf("%w: span %d decoded to %d bytes", ErrCorrupt, n, len(out[0]))
	}
	return out[0], nil
}

// cached reports whether span s of layer l is in the cache.
func (m *MountPoint) cached(l, s int) bool {
	e, err := m.cache.Get(m.ctx, cache.SpanKey(m.img.Layers[l].Digest(), s))
	if err != nil {
		return false
	}
	e.Close()
	return true
}

// fillFromPack stores a pack's decoded span s of layer l in the cache and
// counts it as a profile prefetch. A reader already fetching the span
// shares its fill (cache.Fill), so the span is stored once.
func (m *MountPoint) fillFromPack(l, s int, data []byte) error {
	e, err := m.cache.Fill(m.ctx, cache.SpanKey(m.img.Layers[l].Digest(), s), int64(len(data)), func(_ context.Context, w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	e.Close()
	m.profile.markProfiled(l, s)
	m.metrics.profileSpans.Inc()
	m.metrics.profileBytes.Add(float64(len(data)))
	m.metrics.packSpans.Inc()
	m.metrics.packBytes.Add(float64(len(data)))
	return nil
}

// wireCounter counts a pack's compressed bytes as they arrive.
type wireCounter struct {
	r io.Reader
	m *MountPoint
}

func (w *wireCounter) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	w.m.metrics.packWire.Add(float64(n))
	return n, err
}
