// Package linkproxy emulates a network link in user space: a TCP proxy that
// adds one-way latency and shares one bandwidth limit among all connections,
// the way a registry behind a 400 Mbit/s, 20 ms link behaves. The kernels
// here have no netem, so benchmarks put this between client and registry.
//
// Latency is applied per chunk: a chunk read from one side at time t is
// written to the other at t+Delay, so a request/response pays 2*Delay, as a
// real round trip does. Bandwidth is a token bucket shared by both
// directions of every connection (a half-duplex approximation that is
// accurate for registry traffic, which flows almost entirely one way).
//
// Each direction of a connection holds at most a window of bytes that
// have crossed the link but not been taken by the receiver, as a TCP
// receive window does: a receiver that stops reading stops using the link
// once its window is full, and the other connections get the bandwidth.
// Without that bound a paused reader's data would keep crossing the
// emulated link into the proxy's queue.
package linkproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Link is a running proxy.
type Link struct {
	ln     net.Listener
	target string
	delay  time.Duration
	bucket *bucket
	wg     sync.WaitGroup
	bytes  atomic.Int64
	// entered counts the bytes that have taken the link's bandwidth (they
	// may still be on their way to the receiver).
	entered atomic.Int64
}

// Start listens on a free loopback port and forwards to target (a loopback
// host:port), with one-way delay and a shared rate in bytes per second
// (0 = unlimited).
func Start(target string, delay time.Duration, bytesPerSec int64) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{ln: ln, target: target, delay: delay}
	if bytesPerSec > 0 {
		l.bucket = newBucket(bytesPerSec)
	}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Addr is the proxy's host:port.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Bytes is the number of bytes carried so far, both directions.
func (l *Link) Bytes() int64 { return l.bytes.Load() }

// Close stops accepting; open connections end when either side closes.
func (l *Link) Close() error {
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		go l.serve(c)
	}
}

func (l *Link) serve(client net.Conn) {
	server, err := net.Dial("tcp", l.target)
	if err != nil {
		client.Close()
		return
	}
	// Bytes past the window sit in the proxy's socket buffers towards each
	// side: keep those small, or they would widen the window by megabytes
	// (loopback autotunes them up to tcp_wmem's maximum).
	for _, c := range []net.Conn{client, server} {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetWriteBuffer(sockBuffer)
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pipe(server, client) }()
	go func() { defer wg.Done(); l.pipe(client, server) }()
	wg.Wait()
	client.Close()
	server.Close()
}

type chunk struct {
	data []byte
	due  time.Time
}

// sockBuffer is the send buffer of the proxy's own sockets.
const sockBuffer = 64 << 10

// minWindow is the least window a direction of a connection gets: about
// the default TCP receive buffer a connection starts with.
const minWindow = 256 << 10

// window is how many bytes one direction of a connection may have in
// flight: twice the bandwidth-delay product of the whole link, so that
// one connection alone can still fill it.
func (l *Link) window() int {
	if l.bucket == nil {
		return 64 << 20
	}
	w := int(2 * l.bucket.rate * l.delay.Seconds())
	return max(w, minWindow)
}

// credit counts the bytes of one direction in flight, bounded by a
// window.
type credit struct {
	mu    sync.Mutex
	cond  *sync.Cond
	used  int
	limit int
	done  bool
}

func newCredit(limit int) *credit {
	c := &credit{limit: limit}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// acquire waits until n more bytes fit in the window (or the writer has
// gone); a chunk larger than the window waits for an empty one.
func (c *credit) acquire(n int) {
	c.mu.Lock()
	for !c.done && c.used > 0 && c.used+n > c.limit {
		c.cond.Wait()
	}
	c.used += n
	c.mu.Unlock()
}

func (c *credit) release(n int) {
	c.mu.Lock()
	c.used -= n
	c.cond.Broadcast()
	c.mu.Unlock()
}

// close stops acquire from waiting: the writer no longer drains.
func (c *credit) close() {
	c.mu.Lock()
	c.done = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

// pipe copies src to dst, delaying each chunk by l.delay and pacing by the
// shared bucket. Reading and writing run separately so latency does not
// reduce throughput; the pipe holds at most a window of bytes, so a
// receiver that stops reading stops taking the link's bandwidth.
func (l *Link) pipe(dst, src net.Conn) {
	q := make(chan chunk, 4096)
	cr := newCredit(l.window())
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				cr.acquire(n)
				if l.bucket != nil {
					l.bucket.take(n)
				}
				l.entered.Add(int64(n))
				q <- chunk{data: buf[:n], due: time.Now().Add(l.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.data); err != nil {
			// The receiver is gone: stop reading from the sender, or the
			// rest of its response (a whole layer, when a client closes a
			// stream early) would keep taking the link's bandwidth.
			src.Close()
			cr.close()
			for range q { // drain so the reader can finish
			}
			break
		}
		cr.release(len(c.data))
		l.bytes.Add(int64(len(c.data)))
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// bucket is a token bucket with a small burst, shared by all pipes.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	tokens float64
	burst  float64
	last   time.Time
}

func newBucket(rate int64) *bucket {
	b := float64(rate) / 100 // 10 ms of burst
	if b < 64<<10 {
		b = 64 << 10
	}
	return &bucket{rate: float64(rate), tokens: b, burst: b, last: time.Now()}
}

func (b *bucket) take(n int) {
	b.mu.Lock()
	now := time.Now()
	b.tokens += now.Sub(b.last).Seconds() * b.rate
	if b.tokens > b.burst {
		b.tokens = b.burst
	}
	b.last = now
	b.tokens -= float64(n)
	wait := time.Duration(0)
	if b.tokens < 0 {
		wait = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
}
