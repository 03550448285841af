package server

import (
	"crypto/tls"
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
