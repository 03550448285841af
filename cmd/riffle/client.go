package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	batch "cloud.google.com/go/batch/apiv1"
	"golang.org/x/oauth2"
	"google.golang.org/api/option"

	"github.com/riffle-dev/riffle/internal/server"
)

// defaultServerAddr is where `riffle serve` listens when nothing else says
// otherwise (server.Config's default).
const defaultServerAddr = "127.0.0.1:8080"

// resolveServer finds the `riffle serve` a client command talks to, in
// this order: flagAddr (--server), $RIFFLE_SERVER, the address the running
// server recorded in dataDir (default server.DefaultDataDir()), and last
// 127.0.0.1:8080. It returns HOST:PORT; a scheme ("http://") given in the
// flag or variable is dropped, and an unspecified listen address
// (0.0.0.0, [::]) becomes loopback, since that is how this machine reaches
// it. Commands of other files (image, ...) should use it too so that
// every command finds the same server.
func resolveServer(flagAddr, dataDir string) string {
	addr := flagAddr
	if addr == "" {
		addr = os.Getenv("RIFFLE_SERVER")
	}
	if addr == "" {
		if dataDir == "" {
			dataDir = server.DefaultDataDir()
		}
		if a, err := server.ReadAddr(dataDir); err == nil && a != "" {
			addr = a
		}
	}
	if addr == "" {
		addr = defaultServerAddr
	}
	addr = strings.TrimSuffix(addr, "/")
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return addr
}

// newBatchClient returns the official Google Batch client (REST transport)
// pointed at a Riffle server, so the CLI speaks to Riffle exactly as any
// tool written for Google Batch does.
func newBatchClient(ctx context.Context, addr, dataDir string) (*batch.Client, error) {
	token := clientToken(dataDir)
	auth := option.WithoutAuthentication()
	if token != "" {
		auth = option.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: token}))
	}
	endpoint := "http://" + addr
	if tc := serverTLS(dataDir); tc != nil {
		// The client's own transport cannot be given a CA: give it one
		// that trusts the server and adds the token.
		endpoint, auth = "https://"+addr, option.WithHTTPClient(serverHTTPClient(dataDir))
	}
	c, err := batch.NewRESTClient(ctx,
		option.WithEndpoint(endpoint),
		auth,
		option.WithUserAgent("riffle/"+version))
	if err != nil {
		return nil, fmt.Errorf("batch client for %s: %w", addr, err)
	}
	return c, nil
}
