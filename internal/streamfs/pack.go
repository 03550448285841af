package streamfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

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

// A PackSource that is also a PackPlanner is told, as a mount starts
// reading its profile, the layers whose packs it will ask for (none, say,
// on a warm node): a source that asked for packs ahead drops the others.
type PackPlanner interface {
	PlanPacks(layers []digest.Digest)
}

// packLayer is a Layer whose spans can come from a pack: its index places
// and verifies them (indexLayer).
type packLayer interface {
	packIndex() *index.Index
}

func (l *indexLayer) packIndex() *index.Index { return l.x }

// packBufSize is the read buffer of a pack stream.
const packBufSize = 256 << 10

// expectPack registers that layer l's pack of the profile spans want is
// about to be read, so readers of those spans may wait for it from now on:
// until its header arrives, spans are where a pack of the profile would
// hold them. It returns nil when the layer's spans cannot come from a
// pack.
func (m *MountPoint) expectPack(l int, want []int) *packStream {
	pl, ok := m.img.Layers[l].(packLayer)
	if !ok || m.opts.Packs == nil || len(want) == 0 {
		return nil
	}
	ps := newPackStream(expectedPack(pl.packIndex(), want))
	m.packs[l].Store(ps)
	return ps
}

// readPack fetches layer l's prefetch pack (registered by expectPack as
// ps) in one stream and puts each of its spans, verified against the
// index, into the cache, as profile prefetches. It returns the spans of
// want (in their order) the pack did not deliver: none was found, the
// pack ended early or broke, a span was corrupt, or the pack is older
// than the profile. The caller fetches those by range. Spans already
// cached are skipped (their bytes read and dropped).
func (m *MountPoint) readPack(l int, want []int, ps *packStream) []int {
	defer func() {
		m.packs[l].Store(nil)
		ps.end()
	}()
	d := m.img.Layers[l].Digest()
	x := m.img.Layers[l].(packLayer).packIndex()
	// A pack that stops moving for ReadTimeout is given up (the rest of
	// the profile is fetched by range), as a span fetch would be.
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	idle := time.AfterFunc(m.opts.ReadTimeout, cancel)
	defer idle.Stop()
	ps.mu.Lock()
	ps.onMove = func() { idle.Reset(m.opts.ReadTimeout) }
	ps.mu.Unlock()
	rc, err := m.opts.Packs.Pack(ctx, d)
	if err != nil {
		if !errors.Is(err, ErrNoPack) && m.ctx.Err() == nil {
			m.log.Warn("streamfs: prefetch pack unavailable; fetching the profile by range", "layer", d, "err", err)
		}
		return want
	}
	defer rc.Close()
	// The pack is profile data: background streams pause while it runs.
	m.urgent.Add(1)
	defer m.endUrgent()
	m.metrics.packs.Inc()
	delivered, err := m.unpack(l, x, ps, bufio.NewReaderSize(&wireCounter{r: rc, m: m}, packBufSize))
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

// packWorkers is how many spans of one pack are verified, decoded and
// cached at once while the next spans arrive. Decoding is the pack's
// bottleneck, not the link: one goroutine took 50 to 115 ms a span (about
// 24 MB/s of a 50 MB/s link) while the task competed for the CPU.
const packWorkers = 2

// unpack reads a pack of layer l from r and caches its spans. It returns
// the spans now in the cache, and the error that ended it early. While it
// runs, reads of spans the pack is about to deliver wait for it
// (waitPack). One goroutine reads the spans off the wire in order;
// packWorkers decode and cache them.
func (m *MountPoint) unpack(l int, x *index.Index, ps *packStream, r *bufio.Reader) (map[int]bool, error) {
	h, err := ReadPackHeader(r)
	if err == nil {
		err = h.Check(x)
	}
	if err != nil {
		return nil, err
	}
	ps.place(h.Spans)
	type item struct {
		e   PackSpan
		buf []byte
	}
	var (
		mu        sync.Mutex
		delivered = make(map[int]bool, len(h.Spans))
		werr      error
		wg        sync.WaitGroup
	)
	work := make(chan item, packWorkers)
	stop := make(chan struct{})
	for range packWorkers {
		wg.Go(func() {
			var scratch []byte // decoded spans, reused: see unpackSpan
			for it := range work {
				ok, err := m.unpackSpan(l, x, ps, it.e, it.buf, &scratch)
				mu.Lock()
				if ok {
					delivered[it.e.Span] = true
				}
				if err != nil && werr == nil {
					werr = err
					close(stop)
				}
				mu.Unlock()
			}
		})
	}
read:
	for _, e := range h.Spans {
		buf := getWireBuf(e.Size)
		if _, rerr := io.ReadFull(r, buf); rerr != nil {
			wireBufs.Put(&buf)
			err = fmt.Errorf("streamfs: pack span %d: %w", e.Span, rerr)
			break
		}
		select {
		case work <- item{e, buf}:
		case <-stop:
			wireBufs.Put(&buf)
			break read
		}
	}
	close(work)
	wg.Wait()
	if werr != nil {
		err = werr
	}
	return delivered, err
}

// unpackSpan caches span e of a pack, read into buf (which it releases),
// verified; it reports whether the span is in the cache now. An error
// ends the pack. It decodes into scratch, which is free again when it
// returns: the decoded span is only offered to readers until it is in the
// cache, and a reader that took it wrote it within the cache fill that
// fillFromPack waits for (cache.Fill runs one fill per span).
func (m *MountPoint) unpackSpan(l int, x *index.Index, ps *packStream, e PackSpan, buf []byte, scratch *[]byte) (bool, error) {
	defer wireBufs.Put(&buf)
	if m.cached(l, e.Span) {
		ps.pass(e)
		return true, nil
	}
	data, err := decodePackSpan(x, e, buf, scratch)
	if err != nil {
		// Verified data only: this span is fetched by range instead.
		ps.pass(e)
		m.metrics.corrupt.Inc()
		m.log.Warn("streamfs: prefetch pack span does not match the index", "layer", x.BlobDigest, "span", e.Span, "err", err)
		return false, nil
	}
	ps.offer(e, data)
	err = m.fillFromPack(l, e.Span, data)
	ps.withdraw(e.Span)
	if err != nil {
		// A reader that took the offered data may still be writing it
		// (the pack's fill gave up, say on unmount): decode the next span
		// elsewhere.
		*scratch = nil
	}
	if err != nil && m.ctx.Err() != nil {
		return false, err
	}
	return err == nil, nil
}

// packStream is a pack being read, as readers waiting for it see it.
type packStream struct {
	mu sync.Mutex
	// pos is the pack data bytes read so far.
	pos int64
	// at is the data offset of each span still to come.
	at map[int]int64
	// ready holds decoded spans while they are being stored, so a reader
	// whose fill of the span started first takes the data from here
	// instead of waiting for the pack's own fill (which would wait for it).
	ready map[int][]byte
	// moved is closed and replaced whenever the pack moves on.
	moved chan struct{}
	ended bool
	// stalled is set when a reader waited maxPackWait in vain; readers do
	// not wait for the pack again until it moves on.
	stalled bool
	// onMove, if set, runs (under mu) whenever the pack moves on; set
	// before the pack is read.
	onMove func()
}

func newPackStream(spans []PackSpan) *packStream {
	ps := &packStream{ready: map[int][]byte{}, moved: make(chan struct{})}
	ps.place(spans)
	return ps
}

// place sets where the pack's spans lie, from its header.
func (ps *packStream) place(spans []PackSpan) {
	at := make(map[int]int64, len(spans))
	var off int64
	for _, e := range spans {
		at[e.Span] = off
		off += e.Size
	}
	ps.mu.Lock()
	ps.at = at
	ps.wakeLocked()
	ps.mu.Unlock()
}

// expectedPack is the layout of a pack of the profile spans want.
func expectedPack(x *index.Index, want []int) []PackSpan {
	out := make([]PackSpan, 0, len(want))
	for _, s := range want {
		// The layer's compressed size stands in for the frame's until
		// the header says.
		if p, err := x.PlanSpans(s, s+1); err == nil && Packable(x, s) {
			out = append(out, PackSpan{Span: s, Size: p.Length})
		}
	}
	return out
}

// pass notes that span e was read and will not be offered. Spans are
// handed on in pack order but finish in any order: pos only moves forward.
func (ps *packStream) pass(e PackSpan) {
	ps.mu.Lock()
	ps.advanceLocked(e)
	delete(ps.at, e.Span)
	ps.wakeLocked()
	ps.mu.Unlock()
}

// offer makes span e's decoded data available to waiting readers.
func (ps *packStream) offer(e PackSpan, data []byte) {
	ps.mu.Lock()
	ps.advanceLocked(e)
	delete(ps.at, e.Span)
	ps.ready[e.Span] = data
	ps.wakeLocked()
	ps.mu.Unlock()
}

// advanceLocked moves pos past span e, if it is still to come.
func (ps *packStream) advanceLocked(e PackSpan) {
	if off, ok := ps.at[e.Span]; ok {
		ps.pos = max(ps.pos, off+e.Size)
	}
}

// coming reports whether the pack is still being read (not ended, not
// stalled), and whether span s is among the spans it has still to bring.
func (ps *packStream) coming(s int) (reading, brings bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.ended || ps.stalled {
		return false, false
	}
	_, brings = ps.at[s]
	return true, brings
}

// brings reports whether the pack, still being read, has span s to bring
// or holds its data while it is stored.
func (ps *packStream) brings(s int) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if _, ok := ps.ready[s]; ok {
		return true
	}
	_, ok := ps.at[s]
	return ok && !ps.ended && !ps.stalled
}

// withdraw drops span s's data once it is in the cache.
func (ps *packStream) withdraw(s int) {
	ps.mu.Lock()
	delete(ps.ready, s)
	ps.mu.Unlock()
}

// end wakes every waiter for good: the pack delivers nothing more.
func (ps *packStream) end() {
	ps.mu.Lock()
	ps.ended = true
	ps.onMove = nil
	clear(ps.at)
	ps.wakeLocked()
	ps.mu.Unlock()
}

func (ps *packStream) wakeLocked() {
	close(ps.moved)
	ps.moved = make(chan struct{})
	ps.stalled = false
	if ps.onMove != nil {
		ps.onMove()
	}
}

// giveUp notes that a reader waited for the pack in vain.
func (ps *packStream) giveUp() {
	ps.mu.Lock()
	ps.stalled = true
	ps.mu.Unlock()
}

// next returns span s's data if the pack has it now; else, whether it is
// still coming within window bytes, and a channel closed when the pack
// moves on.
func (ps *packStream) next(s int, window int64) (data []byte, coming bool, moved <-chan struct{}) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if d, ok := ps.ready[s]; ok {
		return d, false, nil
	}
	off, ok := ps.at[s]
	return nil, ok && !ps.ended && !ps.stalled && off-ps.pos <= window, ps.moved
}

// DefaultPackWait is the default Options.PackWait.
const DefaultPackWait = 4 << 20

// maxPackWait bounds one read's wait for a pack (a stalled pack must not
// hold reads up; they fetch by range after it). A variable for tests.
var maxPackWait = 3 * time.Second

// waitPack returns span s of layer l from the layer's pack, waiting for
// it when the pack is about to deliver it (within Options.PackWait); nil
// when the pack will not (soon), so the caller fetches it by range.
func (m *MountPoint) waitPack(ctx context.Context, l, s int) []byte {
	ps := m.packs[l].Load()
	if ps == nil {
		return nil
	}
	window := m.opts.PackWait
	if window <= 0 {
		window = DefaultPackWait
	}
	var t *time.Timer
	for {
		data, coming, moved := ps.next(s, window)
		if data != nil || !coming {
			return data
		}
		if t == nil {
			m.metrics.packWaits.Inc()
			t = time.NewTimer(maxPackWait)
			defer t.Stop()
		}
		select {
		case <-moved:
		case <-t.C:
			ps.giveUp()
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// cached reports whether span s of layer l is in the cache (without
// counting a cache hit or miss: callers choose a path by it).
func (m *MountPoint) cached(l, s int) bool {
	return m.cache.Has(cache.SpanKey(m.img.Layers[l].Digest(), s))
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
