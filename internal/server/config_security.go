package server

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
)

// TLSConfig is the certificate the one port serves with. With both set,
// every transport (REST over HTTP/1.1 and HTTP/2, gRPC over HTTP/2 via
// ALPN) runs over TLS.
type TLSConfig struct {
	// Cert is a PEM certificate chain file.
	Cert string `json:"cert,omitempty"`
	// Key is the PEM private key file of Cert.
	Key string `json:"key,omitempty"`
}

// Enabled reports whether a certificate is configured.
func (t TLSConfig) Enabled() bool { return t.Cert != "" && t.Key != "" }

// Who may read /metrics.
const (
	// MetricsLoopback: clients on loopback without a token; others need
	// the viewer role in every project ("*"). The default.
	MetricsLoopback = "loopback"
	// MetricsToken: everyone needs the viewer role in every project.
	MetricsToken = "token"
	// MetricsOpen: everyone, without a token.
	MetricsOpen = "open"
)

// AuthConfig configures access control. Tokens are always required (there
// is no switch to turn them off); see docs/security.md.
type AuthConfig struct {
	// Metrics is who may read /metrics: loopback (default), token or
	// open.
	Metrics string `json:"metrics,omitempty"`
}

// ScriptsConfig configures how script runnables run.
type ScriptsConfig struct {
	// UnconfinedForAdmin lets jobs submitted with an admin token run their
	// scripts directly on the host (as root, in the host's namespaces),
	// as Batch runs them on its VMs. Everyone else's scripts are always
	// confined. Default false: every script is confined.
	UnconfinedForAdmin bool `json:"unconfinedForAdmin,omitempty"`
	// HostNetwork gives confined scripts the host's network. Default
	// false: they get their own network namespace with only loopback.
	HostNetwork bool `json:"hostNetwork,omitempty"`
}

// OutboundConfig limits where the server connects on behalf of a job.
type OutboundConfig struct {
	// AllowRegistries lists hosts ("host", "host:port"), IP addresses and
	// CIDR ranges ("10.0.0.0/8") in private, link-local or otherwise
	// non-public ranges whose registries an imageUri may name. Loopback
	// (the embedded registry) and public addresses need no entry.
	AllowRegistries []string `json:"allowRegistries,omitempty"`
}

func (c Config) securityDefaults() Config {
	if c.Auth.Metrics == "" {
		c.Auth.Metrics = MetricsLoopback
	}
	return c
}

// validateSecurity checks the security keys.
func (c Config) validateSecurity() error {
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		return fmt.Errorf("config: tls.cert and tls.key (--tls-cert, --tls-key) must be given together")
	}
	switch c.Auth.Metrics {
	case "", MetricsLoopback, MetricsToken, MetricsOpen:
	default:
		return fmt.Errorf("config: auth.metrics %q: use loopback, token or open", c.Auth.Metrics)
	}
	for i, p := range c.HostPaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("config: hostPaths[%d] %q: give a clean absolute directory, like /srv/batch-data", i, p)
		}
	}
	for i, a := range c.Outbound.AllowRegistries {
		if strings.TrimSpace(a) == "" {
			return fmt.Errorf("config: outbound.allowRegistries[%d] is empty", i)
		}
		if strings.Contains(a, "/") {
			if _, err := netip.ParsePrefix(a); err != nil {
				return fmt.Errorf("config: outbound.allowRegistries[%d] %q: not a CIDR range: %v", i, a, err)
			}
		}
	}
	return nil
}

// checkListen refuses a non-loopback listen address without TLS, unless
// InsecureListenWithoutTLS says the operator accepts clear-text tokens.
func (c Config) checkListen(addr string) error {
	if c.TLS.Enabled() || c.InsecureListenWithoutTLS {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil // net.Listen reports it
	}
	if host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("server: refusing to listen on %s without TLS: tokens and data would cross the network in clear text; "+
		"give --tls-cert and --tls-key (config tls.cert, tls.key), listen on 127.0.0.1, "+
		"or pass --insecure-listen-without-tls (config insecureListenWithoutTLS: true) to accept the risk", addr)
}
