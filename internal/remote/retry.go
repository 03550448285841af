package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RetryPolicy bounds retries of idempotent requests (GET, HEAD, and PUT or
// DELETE with a replayable body) that fail with a connection error, a
// timeout, 408, 429 or a 5xx gateway/availability status.
type RetryPolicy struct {
	// MaxAttempts is the total number of tries per request (default 5;
	// 1 disables retries).
	MaxAttempts int
	// InitialDelay is the first backoff (default 200ms); each retry
	// doubles it, and every delay is jittered to between half and all
	// of its nominal value so that many clients do not retry in step.
	InitialDelay time.Duration
	// MaxDelay caps a single backoff, including one a server asks for
	// with Retry-After (default 10s).
	MaxDelay time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 5
	}
	if p.InitialDelay <= 0 {
		p.InitialDelay = 200 * time.Millisecond
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = 10 * time.Second
	}
	return p
}

// delay is the backoff before retry number n (1-based), or what the
// server's Retry-After asks for, capped by MaxDelay.
func (p RetryPolicy) delay(n int, resp *http.Response) time.Duration {
	if resp != nil {
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return min(d, p.MaxDelay)
		}
	}
	d := p.InitialDelay << min(n-1, 20)
	if d <= 0 || d > p.MaxDelay {
		d = p.MaxDelay
	}
	return d/2 + rand.N(d/2+1)
}

// retryAfter parses a Retry-After value: delta seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil {
		return max(time.Duration(s)*time.Second, 0), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

func retryableStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryableError reports whether err is a transient network failure.
// Certificate, TLS-mismatch and policy errors are permanent: retrying them
// would only delay the message the user needs.
func retryableError(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrTimeout) {
		return true
	}
	if errors.Is(err, ErrInsecureRefused) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var recErr tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &recErr) || errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) {
		return false
	}
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	var opErr *net.OpError
	return errors.As(err, &netErr) || errors.As(err, &opErr)
}

// replayable reports whether req may be sent again.
func replayable(req *http.Request) bool {
	noBody := req.Body == nil || req.Body == http.NoBody
	switch req.Method {
	case http.MethodGet, http.MethodHead:
		return noBody
	case http.MethodPut, http.MethodDelete:
		return noBody || req.GetBody != nil
	}
	return false
}

// retryTransport applies the per-request timeout and the retry policy.
type retryTransport struct {
	c    *Client
	next http.RoundTripper
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	policy := t.c.retry
	attempts := policy.MaxAttempts
	if !replayable(req) {
		attempts = 1
	}
	for n := 1; ; n++ {
		if n > 1 {
			if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				req = req.Clone(req.Context())
				req.Body = body
			}
			t.c.stats.retries.Add(1)
		}
		resp, err := t.attempt(req)
		last := n >= attempts
		switch {
		case err != nil:
			if last || !retryableError(err) || req.Context().Err() != nil {
				return nil, err
			}
		case retryableStatus(resp.StatusCode):
			if last {
				return resp, nil
			}
			// Drain a little so the connection can be reused.
			io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
		default:
			return resp, nil
		}
		timer := time.NewTimer(policy.delay(n, resp))
		select {
		case <-req.Context().Done():
			timer.Stop()
			return nil, req.Context().Err()
		case <-timer.C:
		}
	}
}

// attempt sends req once under the per-request timeout: the timer runs
// until headers arrive, then restarts on every body read, so only a stall
// (not a long transfer) trips it.
func (t *retryTransport) attempt(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	timedOut := make(chan struct{})
	var once sync.Once
	timer := time.AfterFunc(t.c.timeout, func() { once.Do(func() { close(timedOut) }); cancel() })
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		timer.Stop()
		cancel()
		if isClosed(timedOut) && req.Context().Err() == nil {
			return nil, fmt.Errorf("%w: %s %s: no response within %s: %w", ErrTimeout, req.Method, req.URL.Redacted(), t.c.timeout, err)
		}
		return nil, err
	}
	if !timer.Stop() {
		// Fired between the response and Stop: the body is already cut.
		cancel()
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s %s: no response within %s", ErrTimeout, req.Method, req.URL.Redacted(), t.c.timeout)
	}
	timer.Reset(t.c.timeout)
	resp.Body = &idleBody{rc: resp.Body, timer: timer, timeout: t.c.timeout, cancel: cancel, timedOut: timedOut, parent: req.Context(), what: req.Method + " " + req.URL.Redacted()}
	return resp, nil
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// idleBody restarts the request's timer on every read and releases the
// request's context on Close.
type idleBody struct {
	rc       io.ReadCloser
	timer    *time.Timer
	timeout  time.Duration
	cancel   context.CancelFunc
	timedOut chan struct{}
	parent   context.Context
	what     string
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF && isClosed(b.timedOut) && b.parent.Err() == nil {
		return n, fmt.Errorf("%w: %s: no data for %s: %w", ErrTimeout, b.what, b.timeout, err)
	}
	if n > 0 {
		b.timer.Reset(b.timeout)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}
