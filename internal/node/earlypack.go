package node

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// A mount asks for a layer's prefetch pack once its indexes are in and its
// tree is built. The profile arrives well before (one round trip against
// the indexes' megabytes), so the node asks for the packs then and lets
// their first bytes travel while the indexes do: at 100 Mbit/s and 60 ms
// the link otherwise stood idle for about 0.2 s between the last index
// byte and the first pack byte, on the critical path of a task that reads
// what the pack brings.
//
// The node decides from the profile and the cache alone, before the mount
// knows which layers are complete in the layer store; the mount then says
// which packs it reads (streamfs.PackPlanner) and the others are dropped.
// A layer settled by another image (its spans dropped from the cache) can
// so cost what its pack sent before the mount started: a fraction of a
// second of the link, in a case that is rare (a shared layer with a
// profile, settled, under an image that is not).

// earlyBuffer bounds how much of a pack an early request reads ahead of
// the mount; past it the socket's own buffer, then TCP, hold the rest.
const earlyBuffer = 8 << 20

// earlyChunk is the size of the reads that fill an early pack's buffer.
const earlyChunk = 256 << 10

// earlyPacks is the streamfs.PackSource of one mount: the packs asked for
// ahead, then the node's pack source for any other layer.
type earlyPacks struct {
	src streamfs.PackSource

	mu    sync.Mutex
	packs map[digest.Digest]*earlyPack
}

// startEarlyPacks asks src for the pack of every layer of p whose profile
// spans are mostly missing from cc (a mount would read those layers'
// packs, see streamfs's profileLists), under ctx (the node's lifetime),
// counting its readers in wg.
func startEarlyPacks(ctx context.Context, wg *sync.WaitGroup, src streamfs.PackSource, cc *cache.Cache, p *streamfs.Profile) *earlyPacks {
	e := &earlyPacks{src: src, packs: map[digest.Digest]*earlyPack{}}
	if p == nil {
		return e
	}
	for _, l := range p.Layers {
		if _, dup := e.packs[l.Digest]; dup || len(l.Spans) == 0 {
			continue
		}
		missing := 0
		for _, s := range l.Spans {
			if !cc.Has(cache.SpanKey(l.Digest, s)) {
				missing++
			}
		}
		if 2*missing < len(l.Spans) {
			continue
		}
		e.packs[l.Digest] = startEarlyPack(ctx, wg, src, l.Digest)
	}
	return e
}

// Pack hands over the pack asked for ahead, once, or asks src.
func (e *earlyPacks) Pack(ctx context.Context, layer digest.Digest) (io.ReadCloser, error) {
	e.mu.Lock()
	p := e.packs[layer]
	delete(e.packs, layer)
	e.mu.Unlock()
	if p == nil {
		return e.src.Pack(ctx, layer)
	}
	if err := p.opened(ctx); err != nil {
		p.Close()
		return nil, err
	}
	// The mount gives up a pack by cancelling ctx, as with any source.
	stop := context.AfterFunc(ctx, func() { p.Close() })
	return &earlyHandle{p: p, stop: stop}, nil
}

// PlanPacks drops the packs asked for ahead that the mount will not read
// (streamfs.PackPlanner): their layers turned out complete on the node, or
// the mount's own count of missing bytes said no.
func (e *earlyPacks) PlanPacks(layers []digest.Digest) {
	keep := map[digest.Digest]bool{}
	for _, d := range layers {
		keep[d] = true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for d, p := range e.packs {
		if !keep[d] {
			p.Close()
			delete(e.packs, d)
		}
	}
}

// drop closes every pack not handed over (the mount failed, or ended
// without asking).
func (e *earlyPacks) drop() { e.PlanPacks(nil) }

// earlyPack is one pack being read ahead into a bounded buffer.
type earlyPack struct {
	cancel context.CancelFunc
	ready  chan struct{} // closed once the source answered
	done   chan struct{} // closed when the filler has stopped

	mu     sync.Mutex
	cond   *sync.Cond
	err    error // of the request, or what ended the body (io.EOF)
	chunks [][]byte
	size   int // bytes in chunks
	closed bool
}

func startEarlyPack(ctx context.Context, wg *sync.WaitGroup, src streamfs.PackSource, d digest.Digest) *earlyPack {
	ctx, cancel := context.WithCancel(ctx)
	p := &earlyPack{cancel: cancel, ready: make(chan struct{}), done: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	// Cancelling ctx (Close of the node) wakes a filler waiting for room.
	context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.closed = true
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(p.done)
		p.fill(ctx, src, d)
	}()
	return p
}

func (p *earlyPack) fill(ctx context.Context, src streamfs.PackSource, d digest.Digest) {
	rc, err := src.Pack(ctx, d)
	if err != nil {
		p.finish(err)
		close(p.ready)
		return
	}
	defer rc.Close()
	close(p.ready)
	for {
		p.mu.Lock()
		for p.size >= earlyBuffer && !p.closed {
			p.cond.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		buf := make([]byte, earlyChunk)
		n, err := io.ReadFull(rc, buf)
		p.mu.Lock()
		if n > 0 {
			p.chunks = append(p.chunks, buf[:n])
			p.size += n
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF
		}
		if err != nil && p.err == nil {
			p.err = err
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (p *earlyPack) finish(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// opened waits for the source's answer to the request.
func (p *earlyPack) opened(ctx context.Context) error {
	select {
	case <-p.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil && p.size == 0 && !errors.Is(p.err, io.EOF) {
		return p.err
	}
	return nil
}

func (p *earlyPack) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.chunks) == 0 && p.err == nil && !p.closed {
		p.cond.Wait()
	}
	if p.closed {
		return 0, errEarlyClosed
	}
	if len(p.chunks) == 0 {
		return 0, p.err
	}
	n := copy(b, p.chunks[0])
	if n == len(p.chunks[0]) {
		p.chunks[0] = nil
		p.chunks = p.chunks[1:]
	} else {
		p.chunks[0] = p.chunks[0][n:]
	}
	p.size -= n
	p.cond.Broadcast()
	return n, nil
}

// Close stops the request and waits for its filler.
func (p *earlyPack) Close() error {
	p.mu.Lock()
	p.closed = true
	p.chunks, p.size = nil, 0
	p.cond.Broadcast()
	p.mu.Unlock()
	p.cancel()
	<-p.done
	return nil
}

var errEarlyClosed = errors.New("node: prefetch pack closed")

// earlyHandle is an early pack handed to a mount.
type earlyHandle struct {
	p    *earlyPack
	stop func() bool
}

func (h *earlyHandle) Read(b []byte) (int, error) { return h.p.read(b) }

func (h *earlyHandle) Close() error {
	h.stop()
	return h.p.Close()
}
