package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// tlsListener wraps ln in TLS with the configured certificate, offering
// HTTP/2 (gRPC and REST) and HTTP/1.1 through ALPN.
func (s *Server) tlsListener(ln net.Listener, hs *http.Server) (net.Listener, error) {
	cert, err := tls.LoadX509KeyPair(s.cfg.TLS.Cert, s.cfg.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("server: tls.cert/tls.key (--tls-cert, --tls-key): %w", err)
	}
	hs.Protocols.SetHTTP2(true)
	hs.TLSConfig = &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
	return tls.NewListener(ln, hs.TLSConfig), nil
}

// selfTLS sends the server's own registry requests over TLS when the port
// serves only TLS, whichever scheme the registry client chose (it tries
// https and falls back to http for loopback). The certificate may name a host rather than the
// loopback address dialled, so instead of the usual name check the peer
// must present exactly the configured certificate.
type selfTLS struct {
	s    *Server
	next http.RoundTripper
	tls  http.RoundTripper
}

func (s *Server) selfTLSTransport(next http.RoundTripper) http.RoundTripper {
	if !s.cfg.TLS.Enabled() {
		return next
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.TLS.Cert, s.cfg.TLS.Key)
	if err != nil || len(cert.Certificate) == 0 {
		return next // Serve reports the bad certificate
	}
	leaf := cert.Certificate[0]
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	t.TLSClientConfig = &tls.Config{
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], leaf) {
				return errors.New("server: the TLS certificate on this port is not the configured one")
			}
			return nil
		},
	}
	return &selfTLS{s: s, next: next, tls: t}
}

func (t *selfTLS) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.s.isSelf(r.URL.Host) {
		r = r.Clone(r.Context())
		r.URL.Scheme = "https"
		return t.tls.RoundTrip(r)
	}
	return t.next.RoundTrip(r)
}
