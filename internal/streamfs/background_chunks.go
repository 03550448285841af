package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/remote"
)

// A layer whose index addresses its blob span by span (tar, gzip, zstd)
// is streamed into the store in chunks rather than with one request: runs
// of consecutive spans fetched by range and decoded by chunkWorkers
// goroutines at once, each from its span's checkpoint, and put back in
// order for the store. This gives a node of two cores two decompressors
// on one big layer, where a single stream is bound by one core, and it
// lets the stream skip what readers already fetched: a span in the node
// cache is copied from there, neither fetched nor decoded again. Every
// chunk is verified against the span digests as a span fetch is; the
// store checks the diffID of the whole stream, as always.

// Chunks are fetched with one request per run of uncached spans where the
// layer can (spanRunStreamer): a reader goroutine reads each chunk's
// compressed bytes from the run's body as they arrive and hands the chunk
// to the workers to decode. With a request per chunk the link sat idle a
// round trip between chunks: one big layer at 100 Mbit/s and 60 ms had a
// single chunk on the wire a third of the time (the other worker
// decoding), and streamed at 10.7 MB/s where the full pull took 12.2.

// spanRunFetcher is a Layer that can fetch a run of consecutive spans with
// one request (indexLayer).
type spanRunFetcher interface {
	// FetchSpans fetches spans [first, end), verified and decoded, and
	// the compressed bytes that took. With FetchSpansSize(first, end)
	// bytes of capacity in buf it works in buf, and the spans alias it.
	// fetched is called once the network part is over, before decoding.
	FetchSpans(ctx context.Context, first, end int, buf []byte, fetched func()) (spans [][]byte, wire int64, err error)
	FetchSpansSize(first, end int) int64
	// SpanWireSize is how many blob bytes fetching span n takes.
	SpanWireSize(n int) int64
	// StreamsBySpans reports whether the spans, in order, are the layer's
	// tar stream (not so for layers read through a table of contents).
	StreamsBySpans() bool
}

// spanRunStreamer is a spanRunFetcher that can also open one request for
// many chunks and decode each chunk from its part of the body
// (indexLayer).
type spanRunStreamer interface {
	spanRunFetcher
	// SpanRange is the blob range [off, off+n) spans [first, end) are
	// fetched from; consecutive runs may share a byte.
	SpanRange(first, end int) (off, n int64, err error)
	// OpenRange opens one request for the blob bytes [off, off+n).
	OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
	// SpanWindow is the window decoding from span first needs, if any.
	SpanWindow(ctx context.Context, first int) ([]byte, error)
	// DecodeSpans decodes and verifies spans [first, end) from wire, their
	// SpanRange bytes, working in out when it has room.
	DecodeSpans(first, end int, window, wire, out []byte) ([][]byte, error)
	// DecodeSpansAfter is DecodeSpans with prev, the uncompressed bytes
	// just before span first, for the window.
	DecodeSpansAfter(first, end int, prev, wire, out []byte) ([][]byte, error)
	// NeedsWindow reports whether decoding from span first needs a window
	// fetched apart from the index (SpanWindow).
	NeedsWindow(first int) bool
}

const (
	// chunkBytes is about how many compressed bytes one chunk request
	// fetches: big enough that the round trip is small beside the
	// transfer, small enough that a read blocked meanwhile waits little
	// behind it (chunks start only when no read is blocked).
	chunkBytes = 1 << 20
	// chunkWorkers fetch and decode chunks of one layer at once.
	chunkWorkers = 2
	// chunkDepth is how many chunks may be planned ahead of the store;
	// it bounds the decoded data held in memory to about
	// chunkDepth*chunkBytes times the compression ratio.
	chunkDepth = 3
	// maxRunSkip is how many bytes of a run a chunk may start past where
	// the last one ended (spans readers fetched meanwhile) for the reader
	// to read and drop them rather than open a new request: the link
	// carries them anyway, and a new request costs a round trip and the
	// old one's receive window.
	maxRunSkip = 2 << 20
)

// chunk is a run of spans [first, end) of the layer stream: in the cache
// (cached), or fetched and decoded into spans by a worker. A worker that
// fetches it alone leaves out the spans at its ends that readers fetched
// since it was planned: spans holds [lo, hi), the rest is in the cache.
type chunk struct {
	first, end int
	lo, hi     int
	cached     bool
	spans      [][]byte
	buf        *[]byte // the spans' memory (chunkedLayer.getBuf)
	err        error
	done       chan struct{} // closed once spans or err is set

	// Set by the run reader: the chunk's compressed bytes, in buf, and
	// its window, set before winDone is closed; or, instead of the
	// window, prev: the chunk just before it, whose tail it decodes after.
	wire    []byte
	win     []byte
	winErr  error
	winDone chan struct{}
	prev    *chunk

	// tail is the last index.WindowSize bytes of the chunk's spans (fewer
	// when they are shorter), set before done is closed, for the next
	// chunk to decode after.
	tail []byte
}

// chunkedLayer reads a layer's uncompressed stream chunk by chunk.
type chunkedLayer struct {
	m      *MountPoint
	l      *bgLayer
	f      spanRunFetcher
	ctx    context.Context
	cancel context.CancelFunc
	queue  chan *chunk  // planned chunks in stream order; closed after the last
	free   chan *[]byte // chunk memory to reuse
	mu     sync.Mutex
	bufs   []*[]byte // every chunk buffer mapped, to unmap at Close
	wg     sync.WaitGroup

	cur  *chunk
	next int               // the span of cur to read next
	data []byte            // unread part of a fetched span
	e    *cache.Entry      // the cached span being read, else nil
	sr   *io.SectionReader // reads e
}

func (m *MountPoint) openChunked(ctx context.Context, l *bgLayer, f spanRunFetcher) *chunkedLayer {
	ctx, cancel := context.WithCancel(ctx)
	c := &chunkedLayer{m: m, l: l, f: f, ctx: ctx, cancel: cancel, queue: make(chan *chunk, chunkDepth),
		free: make(chan *[]byte, chunkDepth+1)}
	jobs := make(chan *chunk)
	c.wg.Add(1 + chunkWorkers)
	go c.plan(jobs)
	work := jobs
	rs, _ := f.(spanRunStreamer)
	if rs != nil {
		work = make(chan *chunk)
		c.wg.Add(1)
		go c.read(rs, jobs, work)
	}
	for range chunkWorkers {
		go c.work(rs, work)
	}
	return c
}

func (c *chunkedLayer) cached(s int) bool {
	return c.m.cache.Has(cache.SpanKey(c.m.img.Layers[c.l.idx].Digest(), s))
}

// trim leaves out of chunk ch the spans at its ends that are cached or
// being fetched: readers may have fetched them since it was planned, the
// more so while it waited for its turn (the first chunks of a cold read
// of the bench image fetched 1.6 MB twice). The store reads those from the
// cache. It reports whether that left nothing to fetch (ch is then
// cached).
func (c *chunkedLayer) trim(ch *chunk) bool {
	for ch.lo < ch.hi && c.busy(ch.lo) {
		ch.lo++
	}
	for ch.hi > ch.lo && c.busy(ch.hi-1) {
		ch.hi--
	}
	if ch.lo == ch.hi {
		ch.cached = true
		return true
	}
	return false
}

// busy reports whether span s is cached or being fetched.
func (c *chunkedLayer) busy(s int) bool {
	return c.m.cache.Busy(cache.SpanKey(c.m.img.Layers[c.l.idx].Digest(), s))
}

// plan cuts the layer into chunks, deciding for each span as late as it
// can (chunkDepth ahead of the store) whether it is cached.
func (c *chunkedLayer) plan(jobs chan<- *chunk) {
	defer c.wg.Done()
	defer close(c.queue)
	defer close(jobs)
	n := len(c.m.spans[c.l.idx])
	for s := 0; s < n; {
		ch := &chunk{first: s, cached: c.cached(s), done: make(chan struct{})}
		var size int64
		e := s
		for e < n && (e == s || c.cached(e) == ch.cached) && (ch.cached || size < chunkBytes) {
			size += c.f.SpanWireSize(e)
			e++
		}
		ch.end = e
		ch.lo, ch.hi = s, e
		if ch.cached {
			close(ch.done)
		}
		select {
		case c.queue <- ch:
		case <-c.ctx.Done():
			return
		}
		last := c.m.spans[c.l.idx][e-1]
		c.l.planned.Store(last.Offset + last.Size)
		if !ch.cached {
			select {
			case jobs <- ch:
			case <-c.ctx.Done():
				return
			}
		}
		s = e
	}
}

// work decodes the chunks the run reader read, and fetches and decodes
// the others (and those whose run data failed), at background CPU
// priority, each fetch once no read is blocked on the link.
func (c *chunkedLayer) work(rs spanRunStreamer, jobs <-chan *chunk) {
	defer c.wg.Done()
	t := lowerThreadPriority()
	for ch := range jobs {
		t.follow(c.m)
		if ch.wire != nil {
			ch.err = c.decode(rs, ch)
			ch.wire, ch.win = nil, nil
			if ch.err != nil && c.ctx.Err() == nil {
				ch.err = c.fetch(ch)
			}
		} else {
			ch.err = c.fetch(ch)
		}
		if ch.err == nil && !ch.cached && ch.hi == ch.end {
			ch.tail = tailOf(ch.spans)
		}
		close(ch.done)
	}
}

// tailOf copies the last index.WindowSize bytes of spans (all of them when
// they are shorter): the history the next span decodes with.
func tailOf(spans [][]byte) []byte {
	var n int
	for _, b := range spans {
		n += len(b)
	}
	tail := make([]byte, min(n, index.WindowSize))
	k := len(tail)
	for i := len(spans) - 1; i >= 0 && k > 0; i-- {
		b := spans[i]
		k -= copy(tail[:k], b[max(len(b)-k, 0):])
	}
	return tail
}

// decode decodes a chunk the run reader read: after the chunk before it
// when readRun chained them, else (or when that one failed or left too
// little history) from its window.
func (c *chunkedLayer) decode(rs spanRunStreamer, ch *chunk) error {
	// SpanWindow ends with c.ctx: waiting for it even then keeps ch.win
	// its own until it is done.
	<-ch.winDone
	if err := c.ctx.Err(); err != nil {
		return err
	}
	out := (*ch.buf)[len(ch.wire):cap(*ch.buf)]
	var err error
	if p := ch.prev; p != nil {
		ch.prev = nil
		select {
		case <-p.done:
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
		if p.err == nil {
			ch.spans, err = rs.DecodeSpansAfter(ch.first, ch.end, p.tail, ch.wire, out)
			if err == nil || errors.Is(err, ErrCorrupt) {
				return c.countCorrupt(err)
			}
		}
		ch.win, ch.winErr = rs.SpanWindow(c.ctx, ch.first)
	}
	if ch.winErr != nil {
		return ch.winErr
	}
	ch.spans, err = rs.DecodeSpans(ch.first, ch.end, ch.win, ch.wire, out)
	return c.countCorrupt(err)
}

// countCorrupt counts err in the metrics when it is ErrCorrupt, and
// returns it.
func (c *chunkedLayer) countCorrupt(err error) error {
	if errors.Is(err, ErrCorrupt) {
		c.m.metrics.corrupt.Inc()
	}
	return err
}

// read passes the planned chunks on to the workers, reading the compressed
// bytes of each it may fetch freely (chunksFree) from one request per run
// of uncached spans. Chunks that take turns while readers are busy are
// left to the workers to fetch with a request each: a run's request would
// keep taking the link between turns.
func (c *chunkedLayer) read(rs spanRunStreamer, jobs <-chan *chunk, work chan<- *chunk) {
	defer c.wg.Done()
	defer close(work)
	var r runs
	defer c.closeRuns(&r)
	var last *chunk // the chunk passed on before ch
	for ch := range jobs {
		if last != nil && last.end != ch.first {
			last = nil
		}
		if c.m.chunksFree(c.l) {
			if err := c.readRun(rs, &r, ch, last); err != nil {
				// The workers fetch it by range, with retries.
				c.closeRuns(&r)
				ch.wire = nil
				if c.ctx.Err() == nil {
					c.m.log.Debug("streamfs: reading a chunk from its run failed; fetching it alone", "layer", c.m.img.Layers[c.l.idx].Digest(), "spans", fmt.Sprintf("[%d, %d)", ch.first, ch.end), "err", err)
				}
			}
		} else {
			c.closeRuns(&r)
		}
		select {
		case work <- ch:
		case <-c.ctx.Done():
			return
		}
		last = ch
	}
}

// readRun reads chunk ch's compressed bytes from the open run, opening a
// new run at ch when neither it nor the next run reaches it. When ch needs
// a window and prev, the chunk passed on before it, ends where ch starts,
// ch decodes after prev; else readRun starts fetching ch's window. Near
// the end of the open run it opens the next.
//
// A window costs a request to the index service and about 12 KB for a
// gzip layer with a detached index: fetched for every chunk, they were
// 3.6 MB of the 335 MB a cold read of the bench image moved. Decoding
// after the chunk before costs nothing while the link is the limit: a
// chunk's bytes take longer to arrive than the chunk before takes to
// decode.
func (c *chunkedLayer) readRun(rs spanRunStreamer, rr *runs, ch, prev *chunk) error {
	off, n, err := rs.SpanRange(ch.first, ch.end)
	if err != nil {
		return err
	}
	if err := c.m.pauseForReads(c.ctx, c.l); err != nil {
		return err
	}
	r := &rr.cur
	// split is how many of the chunk's bytes the open run brings when
	// the next run brings the rest (a run ends at maxRunBytes, where a
	// chunk need not).
	var split int64
	if !r.covers(off, n) {
		if k := r.end - off; k > 0 && k < n && r.covers(off, k) && rr.nextCovers(r.end, n-k) {
			split = k
		} else if rr.nextCovers(off, n) {
			rr.advance()
		} else {
			c.closeRuns(rr)
			if err := c.openRun(rs, r, ch.first, ch.end); err != nil {
				return err
			}
		}
	}
	ch.winDone = make(chan struct{})
	// Only a window to fetch is worth waiting for the chunk before: the
	// workers then decode one chunk at a time.
	chain := prev != nil && rs.NeedsWindow(ch.first)
	if chain {
		close(ch.winDone)
	} else {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer close(ch.winDone)
			ch.win, ch.winErr = rs.SpanWindow(c.ctx, ch.first)
		}()
	}
	if ch.buf == nil {
		ch.buf = c.getBuf(c.f.FetchSpansSize(ch.first, ch.end))
	}
	wire := (*ch.buf)[:n]
	if split > 0 {
		err = c.readCounted(r, wire[:split], off)
		if err == nil {
			rr.advance()
			err = c.readCounted(r, wire[split:], off+split)
		}
	} else {
		err = c.readCounted(r, wire, off)
	}
	if err != nil {
		<-ch.winDone
		return err
	}
	c.m.metrics.bgChunks.Inc()
	ch.wire = wire
	if chain {
		ch.prev = prev
	}
	c.openNextRun(rs, rr)
	return nil
}

// readCounted reads p from r at off (run.read), counting what came over
// the wire: the bytes the run moved past, dropped or read, even when it
// was cut (a byte shared with the last chunk was counted then).
func (c *chunkedLayer) readCounted(r *run, p []byte, off int64) error {
	pos := r.pos
	err := r.read(p, off)
	c.l.wire.Add(r.pos - pos)
	c.m.metrics.bgWire.Add(float64(r.pos - pos))
	return err
}

// openRun opens a run at span first, through span chEnd-1 (the chunk it
// is opened for, planned when its spans were not cached) and on up to the
// next span in the cache (or maxRunBytes).
func (c *chunkedLayer) openRun(rs spanRunStreamer, r *run, first, chEnd int) error {
	n := len(c.m.spans[c.l.idx])
	var size int64
	end := first
	for end < n && (end < chEnd || !c.cached(end) && size < maxRunBytes) {
		size += c.f.SpanWireSize(end)
		end++
	}
	off, length, err := rs.SpanRange(first, end)
	if err != nil {
		return err
	}
	body, err := rs.OpenRange(remote.WithReceiveWindow(c.ctx, streamWindow), off, length)
	if err != nil {
		return err
	}
	*r = run{body: body, pos: off, end: off + length, endSpan: end}
	c.m.metrics.bgRuns.Inc()
	return nil
}

// maxRunBytes bounds the compressed bytes one run request asks for (a
// variable for tests).
var maxRunBytes int64 = 64 << 20

// runLead is how many bytes before the end of the open run the next run's
// request is sent, so that its data follows without a round trip of idle
// link between them. The bench image's one big layer (325 of its 328 MB)
// streamed in 12 runs, cut at the spans readers had fetched and at
// maxRunBytes, each after a 60 ms round trip in which the link carried
// nothing of it.
const runLead = 2 << 20

// runs is the run reader's open run and the next one, opened before the
// open one ends.
type runs struct {
	cur  run
	next *nextRun
}

// nextRun is a run being opened in the background.
type nextRun struct {
	r    run
	err  error
	done chan struct{} // closed once r or err is set
}

// openNextRun starts opening the run after rr.cur once fewer than runLead
// of its bytes are left: at the first span past it that is not cached.
// Not while a read is blocked or the chunks take turns: a second request
// of the layer would take the link from the reads.
func (c *chunkedLayer) openNextRun(rs spanRunStreamer, rr *runs) {
	r := &rr.cur
	if rr.next != nil || r.body == nil || r.end-r.pos > runLead || c.m.urgent.Load() > 0 || !c.m.chunksFree(c.l) {
		return
	}
	n := len(c.m.spans[c.l.idx])
	s := r.endSpan
	for s < n && c.cached(s) {
		s++
	}
	if s >= n {
		return
	}
	p := &nextRun{done: make(chan struct{})}
	rr.next = p
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(p.done)
		p.err = c.openRun(rs, &p.r, s, s+1)
	}()
}

// nextCovers reports whether the next run, once open, can read the
// blob range [off, off+n).
func (rr *runs) nextCovers(off, n int64) bool {
	p := rr.next
	if p == nil {
		return false
	}
	<-p.done
	return p.err == nil && p.r.covers(off, n)
}

// advance closes the open run and makes the next one (nextCovers said
// yes) the open one.
func (rr *runs) advance() {
	rr.cur.close()
	rr.cur, rr.next = rr.next.r, nil
}

// dropNext closes the next run, once it is open, without waiting for it.
func (c *chunkedLayer) dropNext(rr *runs) {
	p := rr.next
	if p == nil {
		return
	}
	rr.next = nil
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		<-p.done
		if p.err != nil && c.ctx.Err() == nil {
			c.m.log.Debug("streamfs: opening a layer's next run failed", "layer", c.m.img.Layers[c.l.idx].Digest(), "err", p.err)
		}
		p.r.close()
	}()
}

// closeRuns closes the open run and the next one.
func (c *chunkedLayer) closeRuns(rr *runs) {
	rr.cur.close()
	c.dropNext(rr)
}

// run is one open request for a layer's blob bytes [pos, end), read
// chunk by chunk.
type run struct {
	body     io.ReadCloser
	pos, end int64
	endSpan  int     // the span after the last one the run brings
	tail     [8]byte // the last bytes before pos (consecutive chunks may share a byte)
	ntail    int
}

// covers reports whether the chunk at blob range [off, off+n) can be read
// from r.
func (r *run) covers(off, n int64) bool {
	return r.body != nil && off >= r.pos-int64(r.ntail) && off <= r.pos+maxRunSkip && off+n <= r.end
}

// read fills p with the blob bytes at off (covers said yes), dropping the
// bytes before off; r.pos moves past every byte it took from the body.
func (r *run) read(p []byte, off int64) error {
	if off > r.pos {
		skipped, err := io.CopyN(io.Discard, r.body, off-r.pos)
		r.pos += skipped
		if err != nil {
			return err
		}
	}
	q := p
	if off < r.pos {
		q = p[copy(p, r.tail[r.ntail-int(r.pos-off):r.ntail]):]
	}
	k, err := io.ReadFull(r.body, q)
	r.pos += int64(k)
	if err != nil {
		return err
	}
	r.ntail = copy(r.tail[:], p[max(0, len(p)-len(r.tail)):])
	return nil
}

func (r *run) close() {
	if r.body != nil {
		r.body.Close()
	}
	*r = run{}
}

func (c *chunkedLayer) fetch(ch *chunk) error {
	retries := max(c.m.opts.Retries, 1)
	var err error
	for range retries {
		if err = c.m.pauseForReads(c.ctx, c.l); err != nil {
			return err
		}
		if c.trim(ch) {
			return nil // not a turn
		}
		var release func()
		if release, err = c.m.chunkTurn(c.ctx, c.l); err != nil {
			return err
		}
		if c.trim(ch) {
			release()
			return nil
		}
		var wire int64
		if ch.buf == nil {
			ch.buf = c.getBuf(c.f.FetchSpansSize(ch.lo, ch.hi))
		}
		ch.spans, wire, err = c.f.FetchSpans(c.ctx, ch.lo, ch.hi, *ch.buf, release)
		release()
		c.l.wire.Add(wire)
		c.m.metrics.bgWire.Add(float64(wire))
		c.m.metrics.bgChunks.Inc()
		if err == nil || c.ctx.Err() != nil {
			return err
		}
		c.countCorrupt(err)
	}
	return err
}

// busyWindow is how long after its last blocked fetch, open, or read from
// the cache (or after it was mounted, while the task starts), a mount's
// readers count as busy.
const busyWindow = time.Second

// busyGap is the least time between two chunk fetches of a mount while its
// readers are busy and do not follow the streams: the streams then take
// about a seventh of a 400 Mbit/s link, as the single stream did when it
// paused for blocked reads. With chunks fetched freely, a cold python
// import took 13.5 s instead of 10 s: each read that blocked shared the
// link with several chunks.
const busyGap = 200 * time.Millisecond

// busyShare stretches busyGap on a slow link: turns start at least
// busyShare times as long apart as the last turn's fetch took, so the
// streams take at most about 1/busyShare of the link while readers are
// busy. At 100 Mbit/s and 60 ms RTT a 1 MB chunk takes about 140 ms, and
// chunks 200 ms apart took 69 of the 145 MB a cold python import moved
// over the link, queued ahead of the reads it blocked on.
const busyShare = 7

// turnGap is the least time between the starts of two chunk turns while
// readers are busy, when the last turn's fetch took took.
func turnGap(took time.Duration) time.Duration {
	return max(busyGap, busyShare*took)
}

// followRate is how many opens per second of files the streams made local
// show that the task reads what the streams bring (it walks the image):
// the streams then go at full speed even while some reads block.
const followRate = 50

// walkOpens is how many opens show a task that walks the image (reads
// most of its files, a copy or a scan), at least: it needs the streams at
// full speed even while its reads block. A cold python import of numpy,
// scipy and pandas opens about 1,200 files; reading every file of that
// image opens 4,000 within 3 s.
const walkOpens = 2500

// walking reports whether the task has opened more than walkOpens files
// or an eighth of the image's, whichever is more.
func (m *MountPoint) walking() bool {
	return m.opens.Load() > m.walkAt()
}

func (m *MountPoint) walkAt() int64 { return max(walkOpens, int64(len(m.nodes)/8)) }

// opened counts an open of a regular file; the one that makes the task
// walking wakes the chunks waiting for a turn.
func (m *MountPoint) opened() {
	if m.opens.Add(1) == m.walkAt()+1 && m.background != nil {
		m.background.wake()
	}
}

// localOpened counts an open of a file the streams made local.
func (m *MountPoint) localOpened() {
	m.metrics.localOpens.Inc()
	m.localOpens.Add(1)
}

// readersBusy reports whether a read is blocked on a fetch now or was
// within busyWindow, or the task opened files or read them from the cache
// within busyWindow (opens of files the streams made local count too;
// following then lets the streams run). The latter is a task starting from a warm
// cache: none of its reads block, but chunks streamed at full speed would
// take CPU and disk from it (a warm python import took 3.4 to 4.4 s with
// them, 2.0 to 2.5 s without).
func (m *MountPoint) readersBusy() bool {
	now := time.Now()
	return m.urgent.Load() > 0 || now.Sub(time.Unix(0, m.lastUrgent.Load())) < busyWindow ||
		now.Sub(time.Unix(0, m.lastActive.Load())) < busyWindow
}

// following reports whether the task opened files the streams made local
// at followRate or more over the last second or so.
func (m *MountPoint) following() bool {
	m.followMu.Lock()
	defer m.followMu.Unlock()
	now := time.Now()
	if d := now.Sub(m.followAt); d >= time.Second {
		n := m.localOpens.Load()
		m.followRate = float64(n-m.followOpens) / d.Seconds()
		m.followAt, m.followOpens = now, n
	}
	return m.followRate >= followRate
}

// chunkTurn waits until a chunk fetch may start: after the mount's packs
// are read, and then, while the mount's readers are busy and do not follow
// the streams, chunk fetches of all its layers take turns, one at a time
// and busyGap apart; else, and for a layer a read waits for, they start
// at once. release ends the turn.
func (m *MountPoint) chunkTurn(ctx context.Context, l *bgLayer) (release func(), err error) {
	b := m.background
	// The profile comes before the rest of the layers: no chunk while
	// the packs are read (they are what the task reads first; chunks
	// beside them took 0.6 to 0.8 s from a 4.4 s python import), unless a
	// reader waits for this layer's stream.
	for packs := false; !packs; {
		waited := b.waitedCh()
		if l.waiters.Load() > 0 {
			break
		}
		select {
		case <-m.packsDone:
			packs = true
		case <-waited:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// A read waiting for a stream ends any wait for a turn: the chunk it
	// needs may be this one (a shell waited 0.4 s for its first chunk,
	// queued behind the turns of other layers' chunks).
	for {
		waited := b.waitedCh()
		if m.turnsFree(l) {
			return func() {}, nil
		}
		select {
		case m.quietSlot <- struct{}{}:
		case <-waited:
			continue
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if wait := turnGap(time.Duration(m.lastChunkTook.Load())) - time.Since(time.Unix(0, m.lastChunk.Load())); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-waited:
				t.Stop()
				<-m.quietSlot
				continue
			case <-ctx.Done():
				t.Stop()
				<-m.quietSlot
				return nil, ctx.Err()
			}
		}
		start := time.Now()
		m.lastChunk.Store(start.UnixNano())
		var once sync.Once
		return func() {
			once.Do(func() {
				m.lastChunkTook.Store(int64(time.Since(start)))
				<-m.quietSlot
			})
		}, nil
	}
}

// turnsFree reports whether layer l's chunks start without taking turns:
// the mount's readers are not busy, or follow the streams, or walk the
// image, or a read waits for l's stream.
func (m *MountPoint) turnsFree(l *bgLayer) bool {
	return !m.readersBusy() || m.following() || m.walking() || l.waiters.Load() > 0
}

// chunksFree reports whether layer l's chunks may be fetched at once now,
// as chunkTurn would let them: after the packs, without turns.
func (m *MountPoint) chunksFree(l *bgLayer) bool {
	if l.waiters.Load() > 0 {
		return true
	}
	select {
	case <-m.packsDone:
	default:
		return false
	}
	return m.turnsFree(l)
}

// Read implements io.Reader for the store.
func (c *chunkedLayer) Read(p []byte) (int, error) {
	for {
		if len(c.data) > 0 {
			n := copy(p, c.data)
			c.data = c.data[n:]
			return n, nil
		}
		if c.sr != nil {
			n, err := c.sr.Read(p)
			if err == io.EOF {
				c.closeSpan()
				err = nil
			}
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		if err := c.nextSpan(); err != nil {
			return 0, err
		}
	}
}

// nextSpan makes the next span of the stream the one Read reads.
func (c *chunkedLayer) nextSpan() error {
	if c.cur == nil || c.next >= c.cur.end {
		var ch *chunk
		var ok bool
		select {
		case ch, ok = <-c.queue:
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
		if !ok {
			if err := c.ctx.Err(); err != nil {
				return err
			}
			return io.EOF
		}
		select {
		case <-ch.done:
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
		if ch.err == nil && !ch.cached && len(ch.spans) != ch.hi-ch.lo {
			ch.err = fmt.Errorf("got %d spans", len(ch.spans))
		}
		if ch.err != nil {
			return fmt.Errorf("streamfs: spans [%d, %d): %w", ch.first, ch.end, ch.err)
		}
		c.release()
		c.cur, c.next = ch, ch.first
	}
	s := c.next
	c.next++
	if !c.cur.cached && s >= c.cur.lo && s < c.cur.hi {
		i := s - c.cur.lo
		c.data, c.cur.spans[i] = c.cur.spans[i], nil
		if int64(len(c.data)) != c.m.spans[c.l.idx][s].Size {
			return fmt.Errorf("streamfs: span %d: %d bytes, the index says %d", s, len(c.data), c.m.spans[c.l.idx][s].Size)
		}
		return nil
	}
	return c.openCached(s)
}

// openCached opens span s from the cache, or fetches it when it left the
// cache since it was planned.
func (c *chunkedLayer) openCached(s int) error {
	e, err := c.m.streamSpan(c.ctx, c.l.idx, s) // background_warm.go
	if err != nil {
		return err
	}
	c.e, c.sr = e, io.NewSectionReader(e, 0, e.Size())
	return nil
}

func (c *chunkedLayer) closeSpan() {
	if c.e != nil {
		c.e.Close()
	}
	c.e, c.sr = nil, nil
}

// getBuf returns a buffer of at least n bytes of capacity, for a chunk:
// one that a chunk read earlier gave back, else a new one. Chunk memory
// is mapped outside the Go heap and reused: chunks pass about three times
// the image's size through memory, and on the heap that many bytes, under
// the mount's soft memory limit, made the garbage collector run most of
// the time (10 s of CPU while a task read the bench image whole).
func (c *chunkedLayer) getBuf(n int64) *[]byte {
	var b *[]byte
	select {
	case b = <-c.free:
	default:
		b = new([]byte)
		c.mu.Lock()
		c.bufs = append(c.bufs, b)
		c.mu.Unlock()
	}
	if int64(cap(*b)) < n {
		c.mu.Lock()
		unmapBuf(*b)
		*b = mapBuf(int((n + chunkRound - 1) / chunkRound * chunkRound))
		c.mu.Unlock()
	}
	return b
}

// chunkRound rounds chunk buffers up, so that one fits most chunks.
const chunkRound = 1 << 20

// mapBuf returns n bytes of anonymous memory outside the Go heap, or of
// heap when mapping fails.
func mapBuf(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]byte, n)
	}
	return b[:0]
}

// unmapBuf releases a buffer from mapBuf (heap ones are left to the GC).
func unmapBuf(b []byte) {
	if cap(b) > 0 {
		_ = unix.Munmap(b[:cap(b)])
	}
}

// release gives the memory of the chunk read last back, for the next
// chunk. Every span of it has been read.
func (c *chunkedLayer) release() {
	if c.cur == nil || c.cur.buf == nil {
		return
	}
	select {
	case c.free <- c.cur.buf:
	default:
	}
	c.cur.buf = nil
}

// Close stops the workers, waits for them and unmaps the chunk memory;
// nothing reads the stream afterwards.
func (c *chunkedLayer) Close() error {
	c.cancel()
	c.wg.Wait()
	c.closeSpan()
	c.data, c.cur = nil, nil
	c.mu.Lock()
	for _, b := range c.bufs {
		unmapBuf(*b)
		*b = nil
	}
	c.bufs = nil
	c.mu.Unlock()
	return nil
}
