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

// pipe copies src to dst, delaying each chunk by l.delay and pacing by the
// shared bucket. Reading and writing run separately so latency does not
// reduce throughput (the pipe holds up to a bandwidth-delay product).
func (l *Link) pipe(dst, src net.Conn) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				if l.bucket != nil {
					l.bucket.take(n)
				}
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
			for range q { // drain so the reader can finish
			}
			break
		}
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
