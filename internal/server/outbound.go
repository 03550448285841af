package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// outbound decides which addresses the server may connect to for a
// registry named by a job (outbound.allowRegistries). Loopback (the
// embedded registry) and public addresses are allowed; private,
// link-local, CGNAT, multicast and unspecified addresses need an entry.
// The check runs at submit on the resolved addresses and again in the
// dialer on the address actually connected to, so DNS that changes its
// answer in between (rebinding) gains nothing.
type outbound struct {
	hosts    map[string]bool // "host" and "host:port" entries, lowercase
	prefixes []netip.Prefix  // CIDR and single-address entries
}

func newOutbound(allow []string) *outbound {
	o := &outbound{hosts: map[string]bool{}}
	for _, a := range allow {
		a = strings.ToLower(strings.TrimSpace(a))
		if p, err := netip.ParsePrefix(a); err == nil {
			o.prefixes = append(o.prefixes, p.Masked())
		} else if ip, err := netip.ParseAddr(a); err == nil {
			o.prefixes = append(o.prefixes, netip.PrefixFrom(ip, ip.BitLen()))
		} else {
			o.hosts[a] = true
		}
	}
	return o
}

// ipAllowed reports whether ip may be connected to.
func (o *outbound) ipAllowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	for _, p := range o.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return publicIP(ip)
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func publicIP(ip netip.Addr) bool {
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip)
}

// checkHost resolves a registry host ("host" or "host:port") and refuses
// it if any of its addresses is not allowed, unless the host itself is
// listed.
func (o *outbound) checkHost(ctx context.Context, hostport string) error {
	hostport = strings.ToLower(hostport)
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if o.hosts[hostport] || o.hosts[host] {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("registry host %s cannot be resolved: %w", host, err)
	}
	for _, ip := range ips {
		if !o.ipAllowed(ip) {
			return fmt.Errorf("registry %s is at %s, a non-public address; Riffle connects there only if outbound.allowRegistries in the config lists %s or a range containing it", hostport, ip, host)
		}
	}
	return nil
}

// control is a net.Dialer Control hook refusing connections to addresses
// that are not allowed. Listed host names are checked at submit only: the
// dialer sees addresses, so their addresses must be listed too, or be
// public, to be reached.
func (o *outbound) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("server: outbound connection to %s refused: not an IP address", address)
	}
	if !o.ipAllowed(ap.Addr()) {
		return fmt.Errorf("server: outbound connection to %s refused: a non-public address not in outbound.allowRegistries", ap.Addr())
	}
	return nil
}

// transport is the HTTP transport for registry traffic: connections are
// checked by control, and error responses lose bodies that are not the
// registry's JSON errors, so a job's events and submit errors never echo
// what some other service on that address answered.
func (o *outbound) transport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64 // as remote's default transport: many ranged reads
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: o.control}
	t.DialContext = d.DialContext
	return quietErrors{t}
}

type quietErrors struct{ next http.RoundTripper }

func (q quietErrors) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := q.next.RoundTrip(r)
	if err != nil {
		// net/http quotes the first bytes of a reply that is not HTTP.
		if strings.Contains(err.Error(), "malformed HTTP") {
			return nil, fmt.Errorf("registry %s did not answer with HTTP", r.URL.Host)
		}
		return nil, err
	}
	if resp.StatusCode >= 400 && !strings.Contains(resp.Header.Get("Content-Type"), "json") {
		resp.Body.Close()
		resp.Body = http.NoBody
		resp.ContentLength = 0
	}
	return resp, nil
}

// registryTransport is the transport of every registry client of the
// server: its own registry directly (selfRoute), every other one under the
// outbound rules with quiet errors.
func (s *Server) registryTransport() http.RoundTripper {
	return s.selfRouteTransport(s.outbound.transport())
}
