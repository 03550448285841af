package remote

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
)

type windowKey struct{}

// WithReceiveWindow returns a context whose Blob.Open streams run on
// connections of their own with a receive buffer of about n bytes, instead
// of the kernel's autotuned one (several MB). A reader that stops reading
// such a stream stops taking the link within about n bytes, so a
// background download yields the link to urgent requests at once. n
// should be near the link's bandwidth-delay product for the stream to
// still reach full rate. The connection is closed when the stream ends,
// not reused.
func WithReceiveWindow(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, windowKey{}, n)
}

// receiveWindow applies the context's receive window, if any, to req.
func receiveWindow(req *http.Request) *http.Request {
	n, _ := req.Context().Value(windowKey{}).(int)
	if n <= 0 {
		return req
	}
	req.Close = true
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		setReadBuffer(info.Conn, n)
	}}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
}

func setReadBuffer(c net.Conn, n int) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(n) // best effort: the stream works either way
	}
}
