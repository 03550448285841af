package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/indexsvc"
)

// otherIndexService is the index service of another riffle serve that
// cfg names (index.service), called with the token in index.tokenFile.
func otherIndexService(cfg IndexConfig) (indexsvc.HTTPSource, error) {
	tok, err := auth.ReadTokenFile(cfg.TokenFile)
	if err != nil {
		return indexsvc.HTTPSource{}, fmt.Errorf("config: index.tokenFile: %w", err)
	}
	if tok == "" {
		return indexsvc.HTTPSource{}, fmt.Errorf("config: index.tokenFile %s is empty: put a token of %s in it", cfg.TokenFile, cfg.Service)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64 // many window and pack requests at once
	if cfg.CAFile != "" {
		pemBytes, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return indexsvc.HTTPSource{}, fmt.Errorf("config: index.caFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return indexsvc.HTTPSource{}, fmt.Errorf("config: index.caFile %s holds no PEM certificate", cfg.CAFile)
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return indexsvc.HTTPSource{BaseURL: cfg.Service, Client: &http.Client{Transport: bearerTransport{tok, t}}}, nil
}

// bearerTransport sends a bearer token with every request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
