package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

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
