package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// serveTLS returns the TLS config of the listener, offering HTTP/2 (gRPC
// and REST) and HTTP/1.1 through ALPN, and leaves the certificate chain in
// DataDir/serve.crt for the CLI; nil when TLS is off. It first removes a
// serve.crt that a killed server left behind.
func (s *Server) serveTLS() (*tls.Config, error) {
	os.Remove(CertFile(s.cfg.DataDir))
	if !s.cfg.TLS.Enabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.TLS.Cert, s.cfg.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("server: tls.cert/tls.key (--tls-cert, --tls-key): %w", err)
	}
	// The CLI on this machine trusts exactly this certificate.
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(CertFile(s.cfg.DataDir), chain, 0o644); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// CertFile is where a server serving TLS leaves its certificate chain in
// dataDir (public), for clients on the same machine.
func CertFile(dataDir string) string { return filepath.Join(dataDir, "serve.crt") }

// selfRoute sends the server's requests to its own registry straight to
// its listener, whatever name or address the image reference uses: past the
// outbound rules (the server's own address may well be private), and over
// TLS pinned to the configured certificate when the port serves TLS (the
// certificate may name a host other than the address dialled, so instead
// of the usual name check the peer must present exactly that certificate).
// Everything else goes to next.
type selfRoute struct {
	s    *Server
	next http.RoundTripper
	self http.RoundTripper
	tls  bool
}

func (s *Server) selfRouteTransport(next http.RoundTripper) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	route := &selfRoute{s: s, next: next, self: t}
	if !s.cfg.TLS.Enabled() {
		return route
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.TLS.Cert, s.cfg.TLS.Key)
	if err != nil || len(cert.Certificate) == 0 {
		return route // Serve reports the bad certificate
	}
	leaf := cert.Certificate[0]
	t.TLSClientConfig = &tls.Config{
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], leaf) {
				return errors.New("server: the TLS certificate on this port is not the configured one")
			}
			return nil
		},
	}
	route.tls = true
	return route
}

func (t *selfRoute) RoundTrip(r *http.Request) (*http.Response, error) {
	if !t.s.isSelf(r.URL.Host) {
		return t.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	if r.Host == "" {
		r.Host = r.URL.Host // the registry names itself by it in Location headers
	}
	r.URL.Host = t.s.dialAddr()
	r.URL.Scheme = "http"
	if t.tls {
		r.URL.Scheme = "https" // whichever the registry client chose
	}
	return t.self.RoundTrip(r)
}

// dialAddr is the address the server's own requests connect to: its
// listener, on loopback when it listens on every address.
func (s *Server) dialAddr() string {
	addr, _ := s.addr.Load().(string)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() == nil {
			return net.JoinHostPort("::1", port)
		}
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}
