package remote_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// rcvbuf is the kernel's receive buffer size of c; false once c is closed.
func rcvbuf(c net.Conn) (int, bool) {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int
	var serr error
	if err := raw.Control(func(fd uintptr) { n, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil || serr != nil {
		return 0, false
	}
	return n, true
}

// TestReceiveWindow checks that a blob stream opened under
// WithReceiveWindow runs on a connection of its own with that receive
// buffer, and that other requests keep the kernel's.
func TestReceiveWindow(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	var mu sync.Mutex
	var conns []net.Conn
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	c := newClient(remote.Options{Transport: tr})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	b, err := c.Blob(ctx, r.host+"/p/r/img", dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	const window = 192 << 10
	rc, err := b.Open(remote.WithReceiveWindow(ctx, window))
	if err != nil {
		t.Fatal(err)
	}
	// Linux doubles the value set, for its bookkeeping.
	mu.Lock()
	var small []net.Conn
	for _, c := range conns {
		if n, ok := rcvbuf(c); ok && n == 2*window {
			small = append(small, c)
		}
	}
	mu.Unlock()
	if len(small) != 1 {
		t.Fatalf("%d connections have SO_RCVBUF %d, want the stream's alone", len(small), 2*window)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("stream read %d bytes, err %v; want the blob's %d", len(got), err, len(want))
	}
	// The stream's connection is not handed to later requests.
	p := make([]byte, 1000)
	if _, err := b.ReadAt(p, 10); err != nil {
		t.Fatal(err)
	}
	if _, ok := rcvbuf(small[0]); ok {
		t.Errorf("the stream's connection is still open after the stream ended")
	}
}
