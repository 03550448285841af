package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
)

// readFile reads file n's bytes at off into dest from the span cache,
// fetching missing spans. It returns the number of bytes read (short only
// at the end of the file).
//
// streak is how many bytes the caller has read contiguously up to off: a
// reader streaming the file (streak of at least streamingStreak) gets the
// next Options.ReadAhead spans of the file fetched in the background.
// reader is true for reads a process is blocked on (not promotion): their
// fetches pause the background streams, they are recorded in the profile,
// and they drive read-ahead along the layer.
func (m *MountPoint) readFile(ctx context.Context, n *node, dest []byte, off, streak int64, reader bool) (int, error) {
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
	prio := prioPrefetch
	if reader {
		prio = prioBlocked
	}
	for pos < stop {
		e, k, err := m.readSpan(ctx, n, i, pos, stop, streak, prio)
		if err != nil {
			return done, err
		}
		_, err = e.ReadAt(dest[done:done+int(k)], pos-spans[i].Offset)
		e.Close()
		if err != nil {
			return done, fmt.Errorf("streamfs: read cached span: %w", err)
		}
		pos += k
		done += int(k)
		i++
	}
	if reader && off == 0 {
		m.fetchNeeded(n, false) // a loader reading a header
	}
	return done, nil
}

// readSpan returns span i of file n's layer, open, for a read of the
// layer's [pos, stop), and how many of those bytes it holds. It records
// the span in the profile and starts read-ahead for readers (prio
// prioBlocked).
func (m *MountPoint) readSpan(ctx context.Context, n *node, i int, pos, stop, streak int64, prio priority) (*cache.Entry, int64, error) {
	spans := m.spans[n.layer]
	if i >= len(spans) {
		return nil, 0, fmt.Errorf("streamfs: offset %d is past the layer's spans", pos)
	}
	reader := prio == prioBlocked
	if reader {
		m.profile.recordSpan(n.layer, i)
	}
	var onMiss func()
	if reader && !m.opts.NoPrefetch {
		onMiss = func() { m.missAhead(n, i, streak) }
	}
	e, missed, err := m.spanOr(ctx, n.layer, i, prio, onMiss)
	if err != nil {
		return nil, 0, err
	}
	k := min(stop, spans[i].Offset+spans[i].Size) - pos
	if !m.opts.NoPrefetch {
		m.readAhead(n, i, pos+k, streak, reader && missed)
	}
	return e, k, nil
}

// readAhead starts fetching spans a reader is likely to want next, after
// it read span i of n's layer up to pos. Reads that reach the last quarter
// of a span start fetching the next one, if the file goes on into it; a
// reader streaming the file gets more ahead; a reader that missed span i
// right after reading span i-1 of the same layer is walking the layer's
// files in order (many small files) and gets the next spans of the layer.
//
// And once a mount's readers have missed missAheadAfter times, every miss
// fetches the next MissAhead spans of the layer: files read together mostly
// sit together in a layer (a package's modules and libraries, a
// directory's files), and a cold reader that opens them one after another,
// as an interpreter importing modules does, otherwise waits a round trip
// for each. Cold python3 importing numpy, scipy and pandas missed about 160
// times; 41 % of those were the span right after an earlier miss, 65 %
// within four. Not from the first miss: a short start (a shell, its
// libraries) is done in a few misses, and on a slow link spans it does not
// read would only delay them. (missAhead counts the misses, and fetches
// most of these spans with the missed one; readAhead fetches the rest.)
//
// While the layer's prefetch pack is still coming, a miss (mostly a wait
// for the pack) fetches nothing ahead, and no span the pack brings is
// fetched: the pack holds what readers of the image read first, in order,
// and guesses beside it only take the link from it (with a learned
// profile at 100 Mbit/s, miss-ahead fetched 24 MB by range that the task
// never read or that the pack brought later, and the import took 7.5 s
// instead of 5.5 s).
func (m *MountPoint) readAhead(n *node, i int, pos, streak int64, missed bool) {
	ps := m.packs[n.layer].Load()
	if ps != nil {
		if reading, _ := ps.coming(i); reading {
			missed = false
		} else {
			ps = nil
		}
	}
	spans := m.spans[n.layer]
	sp := spans[i]
	ahead, last := 0, n.off+n.size
	if streak >= streamingStreak {
		ahead = m.opts.ReadAhead
	} else if pos > sp.Offset+sp.Size*3/4 {
		ahead = 1
	}
	prev := m.lastSpan[n.layer].Swap(int64(i))
	if missed && prev == int64(i-1) {
		ahead, last = m.opts.ReadAhead, m.neighboursEnd(n)
	}
	if missed && m.blockedMisses.Load() > missAheadAfter {
		ahead, last = max(ahead, m.opts.MissAhead), m.neighboursEnd(n)
	}
	for j := i + 1; j <= i+ahead && j < len(spans) && spans[j].Offset < last; j++ {
		if ps != nil {
			if _, brings := ps.coming(j); brings {
				continue
			}
		}
		if !m.streamCovers(n.layer, spans[j].Offset) && m.missRunFor(n.layer, j) == nil {
			m.prefetch(n.layer, j)
		}
	}
}

// fetchFileTail starts fetching, beside the blocked fetch of span i, the
// spans holding the rest of file n if it ends within fileTailAhead after
// span i: a file that crosses a span boundary is mostly read whole right
// away (a loader maps a library, python reads a module), and its next span
// would otherwise cost one more round trip once span i is in. Cold python3
// importing numpy, scipy and pandas at 100 Mbit/s and 60 ms blocked 71
// times; 6 of those were the rest of the file the previous one read.
func (m *MountPoint) fetchFileTail(n *node, i int) {
	spans := m.spans[n.layer]
	end := n.off + n.size
	if i+1 >= len(spans) || end <= spans[i+1].Offset || end-spans[i+1].Offset > fileTailAhead {
		return
	}
	if m.packComing(n.layer, i) {
		return // as readAhead: nothing beside a pack still coming
	}
	for j := i + 1; j < len(spans) && spans[j].Offset < end; j++ {
		if !m.cached(n.layer, j) && !m.streamCovers(n.layer, spans[j].Offset) {
			m.prefetch(n.layer, j)
		}
	}
}

// fetchOpenTail starts fetching the last openTailBytes of file n as it is
// opened, when n is a shared library or an executable of more than one
// span: a loader reads the header at the start and then at once touches
// the data segment at the end (.dynamic, .got, .data, which it
// relocates), one more round trip each time. Cold python3 importing
// numpy, scipy and pandas at 100 Mbit/s and 60 ms blocked on the end of
// 11 such files after reading their start (openblas, lapack, libcrypto,
// libstdc++, python3.11 itself). Not dropped when the prefetchers are
// busy (they were at most of those opens, with the spans after a miss).
// As readAhead: nothing beside a pack still coming, nothing the streams
// bring, nothing for a task walking the image.
func (m *MountPoint) fetchOpenTail(n *node) {
	if m.opts.NoPrefetch || n.local.Load() != nil || !loadable(n) || m.walking() {
		return
	}
	spans := m.spans[n.layer]
	first, last := spanAt(spans, n.off), spanAt(spans, n.off+n.size-1)
	if first >= last || last >= len(spans) {
		return
	}
	if m.packComing(n.layer, first) {
		return
	}
	from := max(first+1, spanAt(spans, n.off+n.size-openTailBytes))
	for j := from; j <= last; j++ {
		if m.openTails.Load() >= maxOpenTails {
			return
		}
		if !m.cached(n.layer, j) && !m.streamCovers(n.layer, spans[j].Offset) {
			m.openTails.Add(1)
			m.fetchAhead(n.layer, j, func() { m.openTails.Add(-1) })
		}
	}
}

// openTailBytes is how much of the end of a loadable file fetchOpenTail
// fetches: the data segment of most libraries is smaller.
const openTailBytes = 2 << 20

// maxOpenTails bounds the spans fetchOpenTail fetches at once: the tails
// of five or so libraries, which a loader opens one after another. An
// image whose files are all executable (data shards with mode 0755)
// would otherwise have a task opening many of them start a range fetch
// for each, all competing with its blocked reads.
const maxOpenTails = 16

// neighboursEnd is where read-ahead after a miss in file n stops: the
// layer's end, for files read together with those next to them (a
// package's modules, a directory walked in order), or n's own end for a
// versioned shared library or a program in a bin directory. The files next to those are
// the rest of their directory in name order (libgcrypt after libexpat,
// x86_64-linux-gnu-as after uname), which a loader or a shell opens by
// name, not by place: cold python3 importing numpy, scipy and pandas at
// 100 Mbit/s and 60 ms fetched 13.4 MB after such files and read 4.4 MB of
// it; stopping at their end cut its range bytes from 83 to 71 MB and its
// time from 8.9 to 8.5 s.
func (m *MountPoint) neighboursEnd(n *node) int64 {
	dir, b := path.Split(n.name)
	switch path.Base(dir) {
	case "bin", "sbin", "libexec":
		if n.perm&0o111 != 0 {
			return n.off + n.size
		}
	}
	if strings.Contains(b, ".so.") {
		return n.off + n.size
	}
	return m.layerSize(n.layer)
}

// loadable reports whether n looks like a file a loader maps: a shared
// library (named *.so or *.so.*) or an executable.
func loadable(n *node) bool {
	b := path.Base(n.name)
	return n.perm&0o111 != 0 || strings.HasSuffix(b, ".so") || strings.Contains(b, ".so.")
}

// packComing reports whether layer l's prefetch pack is still being read
// when a reader is at span i.
func (m *MountPoint) packComing(l, i int) bool {
	ps := m.packs[l].Load()
	if ps == nil {
		return false
	}
	reading, _ := ps.coming(i)
	return reading
}

// fileTailAhead bounds the rest of a file fetched beside a blocked read
// (see fetchFileTail): about one span.
const fileTailAhead = 1 << 20

// missAheadAfter is how many blocked misses a mount has before each miss
// also fetches the spans after it (see readAhead).
const missAheadAfter = 8

// streamingStreak is how much a reader must have read contiguously to be
// treated as streaming the file.
const streamingStreak = 4 << 20

// spanAt returns the index of the span holding offset pos.
func spanAt(spans []Span, pos int64) int {
	return sort.Search(len(spans), func(i int) bool { return spans[i].Offset+spans[i].Size > pos })
}

// Fetch priorities. Blocked reads come first and pause the background
// streams; the profile comes next and pauses them too; read-ahead uses
// spare prefetchers and does not.
type priority uint8

const (
	prioBlocked priority = iota
	prioProfile
	prioHint // Options.Hints: as urgent as the profile, not counted as it
	prioPrefetch
)

// span returns span s of layer l from the cache, fetching it once however
// many readers want it (cache.Fill shares one fill among its callers). It
// reports whether the span was missing.
func (m *MountPoint) span(ctx context.Context, l, s int, prio priority) (*cache.Entry, bool, error) {
	return m.spanOr(ctx, l, s, prio, nil)
}

// spanOr is span calling onMiss (if not nil) when the span is missing,
// before waiting for it.
func (m *MountPoint) spanOr(ctx context.Context, l, s int, prio priority, onMiss func()) (*cache.Entry, bool, error) {
	key := cache.SpanKey(m.img.Layers[l].Digest(), s)
	if e, err := m.cache.Get(ctx, key); err == nil {
		m.metrics.hits.Inc()
		if prio == prioBlocked {
			m.profile.hit(l, s)
		}
		return e, false, nil
	}
	m.metrics.misses.Inc()
	if onMiss != nil {
		onMiss()
	}
	e, err := m.cache.Fill(ctx, key, m.spans[l][s].Size, func(ctx context.Context, w io.Writer) error {
		if r := m.missRunFor(l, s); r != nil {
			data, err := m.fromMissRun(ctx, r, s, prio)
			if err == nil {
				if prio == prioProfile {
					m.profile.markProfiled(l, s)
					m.metrics.profileSpans.Inc()
					m.metrics.profileBytes.Add(float64(len(data)))
				}
				_, err = w.Write(data)
				return err
			}
			if ctx.Err() != nil {
				return err
			}
			// The run failed before this span: fetch it alone.
		}
		// A prefetch pack about to deliver the span saves fetching it twice.
		data := m.waitPack(ctx, l, s)
		if data != nil {
			_, err := w.Write(data)
			return err
		}
		data, err := m.fetch(ctx, l, s, prio)
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	})
	if err != nil {
		return nil, true, fmt.Errorf("streamfs: layer %s span %d: %w", m.img.Layers[l].Digest(), s, err)
	}
	return e, true, nil
}

// wireSizer is a Layer that knows how many compressed bytes fetching a
// span costs (indexLayer does), for honest byte counts.
type wireSizer interface {
	SpanWireSize(n int) int64
}

// endUrgent ends an urgent fetch (see MountPoint.urgent), noting when.
func (m *MountPoint) endUrgent() {
	m.lastUrgent.Store(time.Now().UnixNano())
	m.urgent.Add(-1)
}

// active notes that the task opened a file, or read one from the cache
// (see readersBusy). It stores at most once a millisecond: it
// runs on every open and read.
func (m *MountPoint) active() {
	now := time.Now().UnixNano()
	if now-m.lastActive.Load() > int64(time.Millisecond) {
		m.lastActive.Store(now)
	}
}

// fetch gets span s of layer l from the registry, retrying failures
// (corrupt data included) up to Options.Retries times while ctx lasts.
func (m *MountPoint) fetch(ctx context.Context, l, s int, prio priority) ([]byte, error) {
	layer, want := m.img.Layers[l], m.spans[l][s].Size
	if prio != prioPrefetch {
		m.urgent.Add(1)
		defer m.endUrgent()
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		start := time.Now()
		data, err := layer.FetchSpan(ctx, s)
		if err == nil && int64(len(data)) != want {
			err = fmt.Errorf("%w: got %d bytes, want %d", ErrCorrupt, len(data), want)
		}
		if ws, ok := layer.(wireSizer); ok && (err == nil || errors.Is(err, ErrCorrupt)) {
			m.metrics.spanWire.Add(float64(ws.SpanWireSize(s)))
		}
		if err == nil {
			m.metrics.latency.Observe(time.Since(start).Seconds())
			m.metrics.spans.Inc()
			m.metrics.bytes.Add(float64(len(data)))
			switch prio {
			case prioProfile:
				m.profile.markProfiled(l, s)
				m.metrics.profileSpans.Inc()
				m.metrics.profileBytes.Add(float64(len(data)))
			case prioHint:
				m.metrics.hintSpans.Inc()
			}
			return data, nil
		}
		if errors.Is(ctx.Err(), context.Canceled) && errors.Is(err, context.Canceled) {
			// Given up (unmounting, or the reader went away): not a
			// problem with the registry, and not worth a warning. (A
			// fetch that timed out is one.)
			return nil, err
		}
		m.metrics.errors.Inc()
		m.recordProblem(l, s, err)
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
	m.fetchAhead(l, s, func() { <-m.prefetchSem })
}

// fetchAhead fills span s of layer l in the background, as prefetch but
// never dropped: for spans a reader is about to read (see fetchOpenTail).
// done, if not nil, runs when it is over.
func (m *MountPoint) fetchAhead(l, s int, done func()) {
	if s >= len(m.spans[l]) {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		if done != nil {
			defer done()
		}
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.ReadTimeout)
		defer cancel()
		e, missed, err := m.span(ctx, l, s, prioPrefetch)
		if err != nil {
			return
		}
		if !missed && m.advise(l, s) {
			// Cached: have the kernel read it from disk now, so that
			// a reader streaming across span files does not wait for
			// the disk at each one (its own read-ahead stops at the
			// end of a span file). A hint: its failure changes nothing.
			_ = unix.Fadvise(int(e.File().Fd()), 0, 0, unix.FADV_WILLNEED)
		}
		e.Close()
	}()
}

// advise reports whether span s of layer l is past the last span the
// kernel was asked to read ahead for that layer, and records it: a reader
// streaming a layer's spans asks once per span, not at every read.
func (m *MountPoint) advise(l, s int) bool {
	for {
		prev := m.advised[l].Load()
		if int64(s) <= prev {
			return false
		}
		if m.advised[l].CompareAndSwap(prev, int64(s)) {
			return true
		}
	}
}

// copyBufs holds the buffers promotion copies through: one per running
// promotion, not one per file.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// promote stores file n's whole content in the cache under its digest, in
// the background, from the (now cached) spans, so that later opens use
// passthrough. The cache checks the digest.
func (m *MountPoint) promote(n *node) {
	if !m.promotes(n) {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		// Not cancelled by unmounting: a mount shutting down (riffle run
		// when its container exits) finishes the copies it has begun, from
		// cached spans only (copyFile), so the next mount opens the file by
		// passthrough. Unmounting waits for them.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(m.ctx), m.opts.ReadTimeout+time.Duration(n.size/(1<<20))*time.Second)
		defer cancel()
		e, err := m.cache.Fill(ctx, n.digest.String(), n.size, func(ctx context.Context, w io.Writer) error {
			return m.copyFile(ctx, n, w)
		})
		if err != nil {
			m.log.Warn("streamfs: caching whole file failed", "digest", n.digest, "err", err)
			return
		}
		e.Close()
	}()
}

// promotes reports whether file n is stored whole in the cache once it has
// been read whole. Files of a layer that streams in the background are not:
// the layer store will hold them whole (and settle the image). Files of a
// layer with no stream (switched off, too big, failed) are, or a warm node
// that never settles would serve them from spans forever.
func (m *MountPoint) promotes(n *node) bool {
	if m.opts.NoPassthrough || n.size == 0 {
		return false
	}
	if m.background == nil {
		return true
	}
	switch m.background.layers[n.layer].getState() {
	case LayerOff, LayerFailed:
		return true
	}
	return false
}

// copyFile writes file n's content to w straight from its cached spans.
func (m *MountPoint) copyFile(ctx context.Context, n *node, w io.Writer) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	spans := m.spans[n.layer]
	for pos, stop := n.off, n.off+n.size; pos < stop; {
		i := spanAt(spans, pos)
		if i >= len(spans) {
			return fmt.Errorf("streamfs: offset %d is past the layer's spans", pos)
		}
		sp := spans[i]
		var e *cache.Entry
		var err error
		if m.ctx.Err() != nil {
			// Unmounting: nothing more is fetched.
			e, err = m.cache.Get(ctx, cache.SpanKey(m.img.Layers[n.layer].Digest(), i))
		} else {
			e, _, err = m.span(ctx, n.layer, i, prioPrefetch)
		}
		if err != nil {
			return err
		}
		k := min(stop, sp.Offset+sp.Size) - pos
		_, err = io.CopyBuffer(w, io.NewSectionReader(e, pos-sp.Offset, k), *bp)
		e.Close()
		if err != nil {
			return err
		}
		pos += k
	}
	return nil
}
