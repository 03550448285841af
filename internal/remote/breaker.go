package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Defaults of the unreachable-registry breaker (Options.UnreachableAfter
// and Options.ProbeInterval).
const (
	DefaultUnreachableAfter = 30 * time.Second
	DefaultProbeInterval    = 5 * time.Second
)

// ErrUnreachable is returned at once, without a request, for a registry
// host that has not answered for Options.UnreachableAfter, until a probe
// gets an answer from it again.
var ErrUnreachable = errors.New("remote: registry unreachable")

// breaker fails requests to a host at once while the host is unreachable.
// Without it, every read of data not yet local would wait out its own
// timeouts and retries against a registry that is gone, one after the
// other, and a task would hang for hours instead of failing.
//
// A host is unreachable once every request to it has failed (no
// response, a network error, a timeout, 502, 503 or 504, a caller giving
// up) for `after`, counted from the first failing request sent since its
// last answer, with no pause longer than `after` between failures. An
// answer of any other status, even an error, means it is reachable.
// While it is unreachable, a probe (GET /v2/) is sent at most every
// `every`; the first answer closes the breaker.
type breaker struct {
	after, every time.Duration
	next         http.RoundTripper

	mu    sync.Mutex
	hosts map[string]*hostHealth
}

type hostHealth struct {
	answered time.Time // last answer
	failing  time.Time // when the current run of failures started; zero: none
	lastFail time.Time // when the last failure ended
	down     bool      // requests fail at once
	probing  bool
	probed   time.Time
	lastErr  error
}

func newBreaker(after, every time.Duration, next http.RoundTripper) *breaker {
	return &breaker{after: after, every: every, next: next, hosts: map[string]*hostHealth{}}
}

func (b *breaker) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	if err := b.check(req.URL.Scheme, host); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	start := time.Now()
	resp, err := b.next.RoundTrip(req)
	switch {
	case err == nil && !unavailable(resp.StatusCode):
		b.answered(host)
	case err == nil:
		b.failed(host, start, fmt.Errorf("%s %s: %s", req.Method, req.URL.Redacted(), resp.Status))
	case hostFailure(err):
		b.failed(host, start, err)
	}
	return resp, err
}

// unavailable is a status that a proxy or load balancer answers for a
// registry behind it that is down.
func unavailable(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// hostFailure reports whether err says the host did not answer, not a
// refusal of ours (plain HTTP, certificates). A caller giving up counts:
// the host did not answer in the time the caller could give it (a shared
// cache fill is cancelled, not timed out, when its readers' deadlines
// pass). A request given up quickly cannot open the breaker alone: only
// a run of failures lasting UnreachableAfter does.
func hostFailure(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || retryableError(err)
}

// check returns ErrUnreachable for a host that is down, starting a probe
// when one is due.
func (b *breaker) check(scheme, host string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hosts[host]
	if h == nil || !h.down {
		return nil
	}
	if !h.probing && time.Since(h.probed) >= b.every {
		h.probing, h.probed = true, time.Now()
		go b.probe(scheme, host)
	}
	return fmt.Errorf("%w: %s has not answered since %s (%v); requests fail at once until it answers again",
		ErrUnreachable, host, h.failing.UTC().Format(time.RFC3339), h.lastErr)
}

func (b *breaker) answered(host string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hosts[host]
	if h == nil {
		h = &hostHealth{}
		b.hosts[host] = h
	}
	*h = hostHealth{answered: time.Now()}
}

func (b *breaker) failed(host string, start time.Time, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hosts[host]
	if h == nil {
		h = &hostHealth{}
		b.hosts[host] = h
	}
	if errors.Is(err, context.Canceled) {
		err = fmt.Errorf("no answer in %s", time.Since(start).Round(time.Millisecond))
	}
	h.lastErr = err
	// A run of failures is unbroken while each request was sent before,
	// or within UnreachableAfter of, the end of the previous failure: a
	// failure long after an old one starts a new run.
	if h.failing.IsZero() || start.Sub(h.lastFail) > b.after {
		// From the request's start, but not before the last answer.
		h.failing = start
		if h.answered.After(start) {
			h.failing = h.answered
		}
	}
	h.lastFail = time.Now()
	if !h.down && time.Since(h.failing) >= b.after {
		h.down, h.probed = true, time.Now()
	}
}

// probe asks host for /v2/; any answer but an unavailable status closes
// the breaker.
func (b *breaker) probe(scheme, host string) {
	ctx, cancel := context.WithTimeout(context.Background(), max(b.every, time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+host+"/v2/", nil)
	ok := false
	if err == nil {
		if resp, err := b.next.RoundTrip(req); err == nil {
			resp.Body.Close()
			ok = !unavailable(resp.StatusCode)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hosts[host]
	h.probing = false
	if ok {
		*h = hostHealth{answered: time.Now()}
	}
}
