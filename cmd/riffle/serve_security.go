package main

import (
	"github.com/spf13/pflag"

	"github.com/riffle-dev/riffle/internal/server"
)

// addSecurityFlags adds serve's TLS and listen-policy flags to f; they
// override the config keys tls.cert, tls.key and insecureListenWithoutTLS.
func addSecurityFlags(f *pflag.FlagSet, c *server.Config) {
	f.StringVar(&c.TLS.Cert, "tls-cert", "", "PEM certificate (chain) to serve TLS with, for REST, gRPC and the registry on the one port")
	f.StringVar(&c.TLS.Key, "tls-key", "", "PEM private key of --tls-cert")
	f.BoolVar(&c.InsecureListenWithoutTLS, "insecure-listen-without-tls", false, "allow --listen on a non-loopback address without TLS (tokens then cross the network in clear text)")
}

func applySecurityFlags(f *pflag.FlagSet, cfg *server.Config, flags server.Config) {
	if f.Changed("tls-cert") {
		cfg.TLS.Cert = flags.TLS.Cert
	}
	if f.Changed("tls-key") {
		cfg.TLS.Key = flags.TLS.Key
	}
	if f.Changed("insecure-listen-without-tls") {
		cfg.InsecureListenWithoutTLS = flags.InsecureListenWithoutTLS
	}
}
