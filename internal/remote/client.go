package remote

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Defaults for [Options].
const (
	DefaultTimeout   = 60 * time.Second
	DefaultUserAgent = "riffle"
)

// ErrInsecureRefused is returned for a plain-HTTP request to a host that is
// neither loopback nor listed in Options.Insecure.
var ErrInsecureRefused = errors.New("remote: plain HTTP refused")

// ErrTimeout is returned when a request makes no progress for
// Options.Timeout.
var ErrTimeout = errors.New("remote: request timed out")

// Options configures a [Client]. The zero value is a working default.
type Options struct {
	// Keychain finds credentials per registry. Nil means the docker
	// config.json (DOCKER_CONFIG or ~/.docker) and its credential helpers,
	// falling back to anonymous access.
	Keychain authn.Keychain

	// Insecure lists registries ("host" or "host:port") that may be reached
	// over plain HTTP. Loopback hosts always may; everything else must use
	// https.
	Insecure []string

	// Timeout bounds each HTTP request's wait for response headers and any
	// stall while reading its body (default DefaultTimeout). It is not a
	// limit on a whole transfer, so streaming a large blob never times out
	// while bytes keep arriving.
	Timeout time.Duration

	// Retry is the retry policy for idempotent requests.
	Retry RetryPolicy

	// UserAgent is sent with every request (default DefaultUserAgent).
	UserAgent string

	// Transport is the base transport (default: a clone of
	// http.DefaultTransport). Tests use it to interpose on the wire.
	Transport http.RoundTripper

	// UnreachableAfter is how long every request to a registry host must
	// have failed (no answer, network errors, timeouts, 502-504) before
	// requests to it fail at once with ErrUnreachable, until a probe sent
	// every ProbeInterval gets an answer (defaults
	// DefaultUnreachableAfter and DefaultProbeInterval; negative: never).
	UnreachableAfter time.Duration
	ProbeInterval    time.Duration
}

// Stats counts a Client's traffic since it was created.
type Stats struct {
	// Requests is the number of HTTP requests sent, retries included.
	Requests int64
	// Retries is how many of those were retries.
	Retries int64
	// BytesFetched is the number of response body bytes received.
	BytesFetched int64
	// RangeReads is the number of Blob.ReadAt calls that went to the
	// network.
	RangeReads int64
}

type counters struct {
	requests, retries, bytes, rangeReads atomic.Int64
}

// Client is a registry client. It is safe for concurrent use.
type Client struct {
	keychain  authn.Keychain
	insecure  []string
	timeout   time.Duration
	retry     RetryPolicy
	userAgent string
	base      http.RoundTripper // the unauthenticated stack, shared by all registries
	stats     counters

	mu    sync.Mutex
	authz map[string]http.RoundTripper // registry + scopes -> authenticated transport
}

// New returns a Client configured by opts.
func New(opts Options) *Client {
	c := &Client{
		keychain:  opts.Keychain,
		timeout:   opts.Timeout,
		retry:     opts.Retry.withDefaults(),
		userAgent: opts.UserAgent,
		authz:     make(map[string]http.RoundTripper),
	}
	if c.keychain == nil {
		c.keychain = authn.DefaultKeychain
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	for _, h := range opts.Insecure {
		if h = strings.TrimSpace(strings.ToLower(h)); h != "" {
			c.insecure = append(c.insecure, h)
		}
	}
	base := opts.Transport
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// A lazy filesystem issues many small ranged reads to one
		// registry at once; net/http's default of 2 idle connections per
		// host would reconnect for most of them.
		t.MaxIdleConnsPerHost = 64
		base = t
	}
	var rt http.RoundTripper = &policyTransport{c: c, next: base}
	rt = &retryTransport{c: c, next: rt}
	if opts.UnreachableAfter >= 0 {
		rt = newBreaker(cmp.Or(opts.UnreachableAfter, DefaultUnreachableAfter), cmp.Or(opts.ProbeInterval, DefaultProbeInterval), rt)
	}
	// A userAgent transport at the bottom keeps go-containerregistry from
	// adding its own (it checks for one before wrapping).
	c.base = transport.NewUserAgent(rt, c.userAgent)
	return c
}

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Requests:     c.stats.requests.Load(),
		Retries:      c.stats.retries.Load(),
		BytesFetched: c.stats.bytes.Load(),
		RangeReads:   c.stats.rangeReads.Load(),
	}
}

// AllowsHTTP reports whether host ("host" or "host:port") may be reached
// over plain HTTP: loopback hosts and hosts in Options.Insecure.
func (c *Client) AllowsHTTP(host string) bool {
	host = strings.ToLower(host)
	hostname := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		hostname = h
	}
	hostname = strings.Trim(hostname, "[]")
	if isLoopback(hostname) {
		return true
	}
	return slices.Contains(c.insecure, host) || slices.Contains(c.insecure, hostname)
}

func isLoopback(hostname string) bool {
	if hostname == "localhost" || strings.HasSuffix(hostname, ".localhost") {
		return true
	}
	ip := net.ParseIP(hostname)
	return ip != nil && ip.IsLoopback()
}

// transportFor returns a transport authenticated for scopes on reg, doing
// the auth handshake (ping, token exchange) on first use.
func (c *Client) transportFor(ctx context.Context, reg name.Registry, scopes ...string) (http.RoundTripper, error) {
	scopes = slices.Clone(scopes)
	slices.Sort(scopes)
	key := reg.Scheme() + "://" + reg.RegistryStr() + " " + strings.Join(scopes, " ")
	c.mu.Lock()
	rt, ok := c.authz[key]
	c.mu.Unlock()
	if ok {
		return rt, nil
	}
	auth, err := authn.Resolve(ctx, c.keychain, reg)
	if err != nil {
		return nil, fmt.Errorf("remote: credentials for %s: %w", reg.RegistryStr(), err)
	}
	rt, err = transport.NewWithContext(ctx, reg, auth, c.base, scopes)
	if err != nil {
		return nil, fmt.Errorf("remote: connecting to %s: %w", reg.RegistryStr(), explain(err, reg.RegistryStr()))
	}
	c.mu.Lock()
	c.authz[key] = rt
	c.mu.Unlock()
	return rt, nil
}

// policyTransport enforces the plain-HTTP rule and counts traffic. It sits
// at the bottom of the stack so that pings, token realms and redirects are
// all subject to it.
type policyTransport struct {
	c    *Client
	next http.RoundTripper
}

func (p *policyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !p.c.AllowsHTTP(req.URL.Host) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%w to %s: only loopback hosts and hosts in the insecure list may use http (add %q to Options.Insecure / --insecure to allow it)",
			ErrInsecureRefused, req.URL.Host, req.URL.Host)
	}
	p.c.stats.requests.Add(1)
	resp, err := p.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, n: &p.c.stats.bytes}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// Sentinels for registry answers callers act on. They are wrapped together
// with the registry's own error, which keeps its codes and message.
var (
	// ErrUnauthorized means the registry wants credentials that were not
	// found or were refused (HTTP 401).
	ErrUnauthorized = errors.New("authentication required or refused")
	// ErrDenied means the credentials lack permission (HTTP 403).
	ErrDenied = errors.New("access denied")
	// ErrNotFound means the repository, manifest or blob does not exist
	// (HTTP 404).
	ErrNotFound = errors.New("not found")
)

// explain adds a sentinel and the fix to a registry error on host.
func explain(err error, host string) error {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return err
	}
	switch terr.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: %w; log in with `docker login %s` (credentials are read from the docker config.json in DOCKER_CONFIG or ~/.docker) or check them", err, ErrUnauthorized, host)
	case http.StatusForbidden:
		return fmt.Errorf("%w: %w; the credentials for %s lack permission for this repository", err, ErrDenied, host)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %w", err, ErrNotFound)
	}
	return err
}
