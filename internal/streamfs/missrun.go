package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/index"
)

// A missRun fetches, with one request, the span a blocked read missed and
// the spans after it that the read's guesses want next (missAhead), and
// decodes each as soon as its bytes are in, in order: the blocked span
// first, then each of the others one transfer time later, rather than all
// of them together after a second round trip, sharing the link, as one
// request per span did. Cold python3 importing numpy, scipy and pandas at
// 100 Mbit/s and 60 ms spent 6.5 s blocked on its own span fetches (164
// ms each, about 95 ms of it round trip and transfer) and 3.0 s waiting
// for spans fetched ahead to arrive.
type missRun struct {
	l, first, end int
	done          []chan struct{} // per span, closed once data or err is set
	data          [][]byte
	err           error // for the spans past the last one decoded
}

// missRunLayer is a Layer a missRun can read (indexLayer).
type missRunLayer interface {
	spanRunStreamer
	// DecodeNext decodes span n from wire, its SpanRange bytes, taking
	// its history from prev, the output before it.
	DecodeNext(n int, prev, wire, out []byte) ([]byte, error)
}

// runKey names span s of layer l.
type runKey struct{ l, s int }

// missAhead is called when a blocked read of file n misses span i (before
// it is fetched). It guesses which spans after i the task reads next and,
// if any, fetches them with span i in one missRun:
//   - the rest of n, when it ends within fileTailAhead after span i (a
//     file that crosses a span boundary is mostly read whole right away: a
//     loader maps a library, python reads a module);
//   - the next ReadAhead spans of n for a reader streaming it;
//   - the next ReadAhead spans of the layer when the reader read span i-1
//     last (walking the layer's files in order);
//   - the next MissAhead spans of the layer once the mount's readers have
//     missed more than missAheadAfter times (see readAhead).
//
// The run stops at the first span that is cached, being fetched, or
// brought by the layer's stream. Nothing is guessed while the layer's
// prefetch pack is coming (see readAhead). Without a run, the rest of a
// short file is fetched beside span i by range.
func (m *MountPoint) missAhead(n *node, i int, streak int64) {
	l := n.layer
	if m.packComing(l, i) {
		return // a wait for the pack, mostly
	}
	misses := m.blockedMisses.Add(1)
	if m.missRunFor(l, i) != nil {
		return // brought by a run already (and what follows it)
	}
	rl, ok := m.img.Layers[l].(missRunLayer)
	if !ok || !rl.StreamsBySpans() || m.cache.Busy(cache.SpanKey(m.img.Layers[l].Digest(), i)) {
		m.fetchFileTail(n, i)
		return
	}
	spans := m.spans[l]
	ahead, last := 0, n.off+n.size
	if i+1 < len(spans) && last > spans[i+1].Offset && last-spans[i+1].Offset <= fileTailAhead {
		ahead = spanAt(spans, last-1) - i
	}
	if streak >= streamingStreak {
		ahead = max(ahead, m.opts.ReadAhead)
	}
	own := ahead // the file's own spans
	if m.lastSpan[l].Load() == int64(i-1) {
		ahead, last = max(ahead, m.opts.ReadAhead), m.neighboursEnd(n)
	}
	if misses > missAheadAfter {
		ahead, last = max(ahead, m.opts.MissAhead), m.neighboursEnd(n)
	}
	// Guesses past the file take a prefetcher, as readAhead's do: a task
	// missing faster than they arrive (walking the image past its
	// stream) gets them no more than Options.Prefetchers at a time.
	release := func() {}
	if ahead > own {
		select {
		case m.prefetchSem <- struct{}{}:
			release = func() { <-m.prefetchSem }
		default:
			ahead, last = own, n.off+n.size
		}
	}
	end := i + 1
	for end < len(spans) && end <= i+ahead && spans[end].Offset < last && m.runnable(l, end) {
		end++
	}
	if end == i+1 || !m.startMissRun(rl, l, i, end, release) {
		release()
	}
}

// runnable reports whether a missRun may fetch span s of layer l: nobody
// has it or is getting it.
func (m *MountPoint) runnable(l, s int) bool {
	if m.cache.Busy(cache.SpanKey(m.img.Layers[l].Digest(), s)) || m.streamCovers(l, m.spans[l][s].Offset) {
		return false
	}
	m.runMu.Lock()
	defer m.runMu.Unlock()
	return m.missRuns[runKey{l, s}] == nil
}

// missRunFor returns the missRun bringing span s of layer l, or nil.
func (m *MountPoint) missRunFor(l, s int) *missRun {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	return m.missRuns[runKey{l, s}]
}

// startMissRun starts fetching spans [first, end) of layer l in one
// missRun, or as many of them as no other run claimed meanwhile, and
// calls done when it is over. It reports false, and starts nothing, if
// that leaves only the missed span.
func (m *MountPoint) startMissRun(rl missRunLayer, l, first, end int, done func()) bool {
	m.runMu.Lock()
	for s := first; s < end; s++ {
		if m.missRuns[runKey{l, s}] != nil {
			end = s
		}
	}
	if end-first < 2 {
		m.runMu.Unlock()
		return false
	}
	r := &missRun{l: l, first: first, end: end, done: make([]chan struct{}, end-first), data: make([][]byte, end-first)}
	for k := range r.done {
		r.done[k] = make(chan struct{})
	}
	for s := first; s < end; s++ {
		m.missRuns[runKey{l, s}] = r
	}
	m.runMu.Unlock()
	m.metrics.missRuns.Inc()
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer done()
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.ReadTimeout)
		defer cancel()
		stored := m.readMissRun(ctx, rl, r)
		// Readers that asked meanwhile share the stores (cache.Fill);
		// once they are over, the cache has the spans.
		stored()
		m.runMu.Lock()
		for s := first; s < end; s++ {
			if m.missRuns[runKey{l, s}] == r {
				delete(m.missRuns, runKey{l, s})
			}
		}
		m.runMu.Unlock()
	}()
	return true
}

// readMissRun reads r's request, handing each span to its waiters and
// storing it in the cache as it is decoded. It returns a function that
// waits for the stores.
func (m *MountPoint) readMissRun(ctx context.Context, rl missRunLayer, r *missRun) (wait func()) {
	stores := make(chan struct{}, r.end-r.first)
	started := 0
	wait = func() {
		for range started {
			<-stores
		}
	}
	next := r.first
	fail := func(err error) {
		if ctx.Err() == nil {
			// Waiters fetch their spans on their own, which records
			// any problem the registry has for good.
			m.metrics.errors.Inc()
			if errors.Is(err, ErrCorrupt) {
				m.metrics.corrupt.Inc()
			}
			m.log.Debug("streamfs: a fetch of spans after a miss failed", "layer", m.img.Layers[r.l].Digest(), "spans", fmt.Sprintf("[%d, %d)", next, r.end), "err", err)
		}
		r.err = err
		for ; next < r.end; next++ {
			close(r.done[next-r.first])
		}
	}
	start := time.Now()
	off, length, err := rl.SpanRange(r.first, r.end)
	if err != nil {
		fail(err)
		return wait
	}
	var (
		win     []byte
		winErr  error
		winDone = make(chan struct{})
	)
	go func() {
		defer close(winDone)
		win, winErr = rl.SpanWindow(ctx, r.first)
	}()
	defer func() { <-winDone }() // it ends with ctx
	body, err := rl.OpenRange(ctx, off, length)
	if err != nil {
		fail(err)
		return wait
	}
	defer body.Close()
	wire := make([]byte, length)
	var got int64
	var prev []byte // the output before span next
	for ; next < r.end; next++ {
		so, sn, err := rl.SpanRange(next, next+1)
		if err != nil {
			fail(err)
			return wait
		}
		lo, hi := so-off, so-off+sn
		if got < hi {
			k, err := io.ReadFull(body, wire[got:hi])
			got += int64(k)
			m.metrics.spanWire.Add(float64(k))
			if err != nil {
				fail(fmt.Errorf("streamfs: fetch spans [%d, %d) of layer %s: %w", r.first, r.end, m.img.Layers[r.l].Digest(), err))
				return wait
			}
		}
		var data []byte
		if next == r.first {
			<-winDone
			if winErr != nil {
				fail(winErr)
				return wait
			}
			var spans [][]byte
			if spans, err = rl.DecodeSpans(next, next+1, win, wire[lo:hi], nil); err == nil {
				data = spans[0]
			}
			m.metrics.latency.Observe(time.Since(start).Seconds())
		} else {
			data, err = rl.DecodeNext(next, prev, wire[lo:hi], nil)
		}
		if err != nil {
			fail(err)
			return wait
		}
		r.data[next-r.first] = data
		close(r.done[next-r.first])
		if len(data) >= index.WindowSize {
			prev = data
		} else {
			prev = append(prev[max(0, len(prev)-index.WindowSize):len(prev):len(prev)], data...)
		}
		started++
		go func(s int, data []byte) {
			defer func() { stores <- struct{}{} }()
			e, err := m.cache.Fill(ctx, cache.SpanKey(m.img.Layers[r.l].Digest(), s), int64(len(data)), func(_ context.Context, w io.Writer) error {
				_, err := w.Write(data)
				return err
			})
			if err != nil {
				return // unmounting, or the cache failed: a reader fetches it
			}
			e.Close()
			// Counted once stored, where a span fetched alone is too.
			m.metrics.spans.Inc()
			m.metrics.bytes.Add(float64(len(data)))
		}(next, data)
	}
	return wait
}

// span waits for span s of r, or for ctx.
func (r *missRun) span(ctx context.Context, s int) ([]byte, error) {
	select {
	case <-r.done[s-r.first]:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if d := r.data[s-r.first]; d != nil {
		return d, nil
	}
	return nil, r.err
}

// fromMissRun waits for span s of r, as urgent as a fetch of prio.
func (m *MountPoint) fromMissRun(ctx context.Context, r *missRun, s int, prio priority) ([]byte, error) {
	if prio != prioPrefetch {
		m.urgent.Add(1)
		defer m.endUrgent()
	}
	return r.span(ctx, s)
}
