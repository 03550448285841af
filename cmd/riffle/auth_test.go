package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/server"
)

// TestAuthTokensCLI: the local admin token is picked up from the data
// directory; a token made with `riffle auth tokens create` works with its
// role and no more; after `revoke` it is refused, saying so.
func TestAuthTokensCLI(t *testing.T) {
	for _, v := range []string{"RIFFLE_SERVER", "RIFFLE_TOKEN", "RIFFLE_PROJECT", "CLOUDSDK_CORE_PROJECT", "RIFFLE_LOCATION", "CLOUDSDK_BATCH_LOCATION"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DataDir: dir, Listen: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if a, err := server.ReadAddr(dir); err == nil && a == ln.Addr().String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve.addr not written")
		}
	}
	run := func(token string, args ...string) (string, error) {
		t.Setenv("RIFFLE_TOKEN", token)
		cmd := newRootCmd()
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(append(args, "--data-dir", dir))
		err := cmd.ExecuteContext(ctx)
		return out.String() + errOut.String(), err
	}
	secret, err := run("", "auth", "tokens", "create", "--role", "viewer", "--project", "p", "--name", "ci-reader")
	if err != nil {
		t.Fatalf("create with the local admin token: %v\n%s", err, secret)
	}
	secret = strings.Fields(secret)[0]
	if !strings.HasPrefix(secret, "rfl_") {
		t.Fatalf("create printed %q, want the token first", secret)
	}
	if out, err := run("", "auth", "tokens", "list"); err != nil || !strings.Contains(out, "ci-reader") || !strings.Contains(out, "viewer@p") || strings.Contains(out, secret) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := run(secret, "batch", "jobs", "list", "--project", "p"); err != nil {
		t.Fatalf("viewer list: %v\n%s", err, out)
	}
	if out, err := run(secret, "batch", "jobs", "submit", "x", "--project", "p", "--script-text", "true"); err == nil || !strings.Contains(out+err.Error(), "editor") {
		t.Fatalf("viewer submit: %v\n%s, want a refusal naming editor", err, out)
	}
	if out, err := run(secret, "auth", "tokens", "list"); err == nil || !strings.Contains(err.Error(), "admin") {
		t.Fatalf("viewer lists tokens: %v\n%s", err, out)
	}
	if out, err := run("", "auth", "tokens", "revoke", "ci-reader"); err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	if out, err := run(secret, "batch", "jobs", "list", "--project", "p"); err == nil || !strings.Contains(out+err.Error(), "revoked") {
		t.Fatalf("revoked token: %v\n%s", err, out)
	}
}

// TestServeRefusesNetworkWithoutTLS: `riffle serve --listen` on a network
// address without TLS does not start, and says which flag overrides it.
func TestServeRefusesNetworkWithoutTLS(t *testing.T) {
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"serve", "--data-dir", t.TempDir(), "--listen", "0.0.0.0:0"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "--insecure-listen-without-tls") || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("serve on 0.0.0.0 without TLS: %v\n%s", err, out.String())
	}
	if strings.Contains(out.String(), "riffle serving") {
		t.Fatalf("it said it was serving:\n%s", out.String())
	}
}

// TestCLIOverTLS: against a server that serves TLS, the CLI on the same
// machine still works with no flags: it trusts the certificate the server
// left in its data directory and sends the admin token.
func TestCLIOverTLS(t *testing.T) {
	for _, v := range []string{"RIFFLE_SERVER", "RIFFLE_TOKEN", "RIFFLE_CA_CERT", "RIFFLE_PROJECT", "CLOUDSDK_CORE_PROJECT", "RIFFLE_LOCATION", "CLOUDSDK_BATCH_LOCATION"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	certFile, keyFile := writeSelfSignedCert(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DataDir: dir, Listen: "127.0.0.1:0", TLS: server.TLSConfig{Cert: certFile, Key: keyFile}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	// serve.crt is written before serve.addr.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if a, err := server.ReadAddr(dir); err == nil && a == ln.Addr().String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve.addr not written")
		}
	}
	if _, err := os.Stat(server.CertFile(dir)); err != nil {
		t.Fatalf("serve.crt: %v", err)
	}
	run := func(args ...string) (string, error) {
		cmd := newRootCmd()
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(append(args, "--data-dir", dir))
		err := cmd.ExecuteContext(ctx)
		return out.String() + errOut.String(), err
	}
	if out, err := run("auth", "tokens", "list"); err != nil || !strings.Contains(out, "local admin") {
		t.Fatalf("tokens list over TLS: %v\n%s", err, out)
	}
	if out, err := run("batch", "jobs", "submit", "over-tls", "--script-text", "true"); err != nil {
		t.Fatalf("submit over TLS: %v\n%s", err, out)
	}
	if out, err := run("batch", "jobs", "list"); err != nil || !strings.Contains(out, "over-tls") {
		t.Fatalf("list over TLS: %v\n%s", err, out)
	}
	if out, err := run("batch", "jobs", "logs", "over-tls"); err != nil {
		t.Fatalf("logs over TLS: %v\n%s", err, out)
	}
	spec, _ := imagegen.Busybox("/bin/busybox")
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := imagegen.WriteOCILayout(layout, img, "v1"); err != nil {
		t.Fatal(err)
	}
	if out, err := run("image", "push", layout, ln.Addr().String()+"/p/r/busybox:v1"); err != nil {
		t.Fatalf("image push over TLS: %v\n%s", err, out)
	}
}

// writeSelfSignedCert writes a certificate for "riffle.example" (not the
// loopback address the CLI dials) and its key.
func writeSelfSignedCert(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "riffle.example"},
		DNSNames: []string{"riffle.example"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}
