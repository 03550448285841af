package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/server"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("dataDir: /x\nlisten: 127.0.0.1:9\nlog:\n  level: debug\nregistry:\n  maxBlobBytes: 10\n"), 0o644)
	c, err := server.LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/x" || c.Listen != "127.0.0.1:9" || c.Log.Level != "debug" || c.Registry.MaxBlobBytes != 10 {
		t.Fatalf("config = %+v", c)
	}

	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o644)
	if _, err := server.LoadConfig(empty); err != nil {
		t.Fatalf("empty config: %v", err)
	}

	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("datadir: /x\n"), 0o644)
	if _, err := server.LoadConfig(typo); err == nil || !strings.Contains(err.Error(), "datadir") {
		t.Fatalf("unknown key: err = %v, want it named", err)
	}

	bad := server.Config{Log: server.LogConfig{Level: "loud"}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "log.level") {
		t.Fatalf("bad level: %v", err)
	}

	budget := filepath.Join(dir, "budget.yaml")
	os.WriteFile(budget, []byte("stream:\n  profileSeconds: 10\n  profileBytes: 64MiB\n  maxBackgroundBytes: 2GiB\n"), 0o644)
	if c, err := server.LoadConfig(budget); err != nil || c.Stream.ProfileSeconds != 10 || c.Stream.ProfileBytes != 64<<20 || c.Stream.MaxBackgroundBytes != 2<<30 {
		t.Fatalf("stream budgets: %+v, %v", c.Stream, err)
	}
	for _, bad := range []server.Config{
		{Stream: server.StreamConfig{ProfileSeconds: -1}},
		{Stream: server.StreamConfig{ProfileBytes: -1}},
	} {
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "stream.profile") {
			t.Errorf("%+v: err = %v, want one naming the key", bad.Stream, err)
		}
	}
}

func TestServeHealthMetricsShutdown(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, server.Config{DataDir: dir, Listen: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()

	base := "http://" + ln.Addr().String()
	tok := adminToken(t, srv)
	waitFor(t, func() bool {
		a, err := server.ReadAddr(dir)
		return err == nil && a == ln.Addr().String()
	})
	// In order: /metrics must see the requests before it. The counter is
	// incremented after a response is written, so a client can read its
	// response before the count moves: poll for it.
	for _, c := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/v2/", "{}"},
	} {
		if b, err := getBody(base+c.path, tok); err != nil || !strings.Contains(b, c.want) {
			t.Fatalf("GET %s: %q, %v; want 200 containing %q", c.path, b, err, c.want)
		}
	}
	want := `riffle_http_requests_total{api="registry",code="200",method="GET"} 1`
	waitFor(t, func() bool {
		b, err := getBody(base+"/metrics", tok)
		return err == nil && strings.Contains(b, want)
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := server.ReadAddr(dir); err == nil {
		t.Fatal("serve.addr left behind after shutdown")
	}
}

// getBody returns the body of a 200 response to GET url with tok as
// bearer token.
func getBody(url, tok string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// TestListenTakenFails: a taken address is an error that names it and the
// fix, never a silent move to another port, also for the default address.
func TestListenTakenFails(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := filepath.Join(t.TempDir(), "data")
	_, err = server.Listen(server.Config{DataDir: dir, Listen: taken.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("listen on a taken address: err = %v, want it named with the fix", err)
	}

	// The default address: hold it, unless something else already does;
	// either way it is taken.
	if def, err := net.Listen("tcp", server.DefaultListen); err == nil {
		defer def.Close()
	}
	ln, err := server.Listen(server.Config{DataDir: dir})
	if err == nil {
		ln.Close()
		t.Fatalf("listen with %s taken: listened on %s, want an error", server.DefaultListen, ln.Addr())
	}
	if !strings.Contains(err.Error(), server.DefaultListen) {
		t.Fatalf("listen with %s taken: err = %v, want it named", server.DefaultListen, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("data dir created by a failed listen: %v", err)
	}
}

// TestDataDirInUse: a second server on one data directory says who holds it
// (PID and address), both from New and from Listen on the same address.
func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	_, _, addr := startServer(t, dir)
	waitFor(t, func() bool { a, err := server.ReadAddr(dir); return err == nil && a == addr })

	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, server.ErrDataDirInUse) {
			t.Fatalf("%s: err = %v, want ErrDataDirInUse", what, err)
		}
		for _, want := range []string{"in use by another riffle serve", fmt.Sprintf("pid %d", os.Getpid()), addr, "--data-dir"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("%s: err = %v, want it to contain %q", what, err, want)
			}
		}
	}
	srv, err := server.New(context.Background(), server.Config{DataDir: dir}, nil)
	if err == nil {
		srv.Close()
	}
	check("second New", err)
	ln, err := server.Listen(server.Config{DataDir: dir, Listen: addr})
	if err == nil {
		ln.Close()
	}
	check("Listen on the first server's address", err)
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if ok() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("condition not met in 10s")
}

func TestPushedImagesAreIndexed(t *testing.T) {
	dir := t.TempDir()
	ctx, srv, addr := startServer(t, dir)

	img, err := imagegen.Build(imagegen.AllFeatures())
	if err != nil {
		t.Fatal(err)
	}
	c := registryClient(adminToken(t, srv))
	ref := addr + "/p/r/features:v1"
	if err := c.Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		h, _ := l.Digest()
		d := digest.Digest(h.String())
		waitFor(t, func() bool { _, _, err := srv.Indexes().Get(d); return err == nil })
		resp := get(t, "http://"+addr+"/index/v1/layers/"+d.String(), adminToken(t, srv))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET index of %s: %s", d, resp.Status)
		}
	}
}

// startServer runs a server on dir (a new temp dir when empty) on a free
// loopback port until the test ends.
func startServer(t *testing.T, dir string) (context.Context, *server.Server, string) {
	t.Helper()
	return startServerWith(t, server.Config{DataDir: dir})
}

// startServerWith is startServer with more of the config.
func startServerWith(t *testing.T, cfg server.Config) (context.Context, *server.Server, string) {
	t.Helper()
	return startServerLog(t, cfg, nil)
}

// startServerLog is startServerWith logging to log.
func startServerLog(t *testing.T, cfg server.Config, log *slog.Logger) (context.Context, *server.Server, string) {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return ctx, srv, ln.Addr().String()
}

// TestConfigSizes: byte sizes may be written with units, and a bad value
// is named with what it must look like rather than Go's type names.
func TestConfigSizes(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := server.LoadConfig(write("cache:\n  maxBytes: 10GiB\nregistry:\n  maxBlobBytes: 1.5 GB\n"))
	if err != nil || c.Cache.MaxBytes != 10<<30 || c.Registry.MaxBlobBytes != 1_500_000_000 {
		t.Fatalf("sizes with units: %+v, %v", c, err)
	}
	if c, err := server.LoadConfig(write("cache:\n  maxBytes: 4096\n")); err != nil || c.Cache.MaxBytes != 4096 {
		t.Fatalf("size in bytes: %+v, %v", c, err)
	}
	for body, want := range map[string][]string{
		"cache:\n  maxBytes: lots\n":        {"cache.maxBytes", "10GiB"},
		"registry:\n  maxBlobBytes: true\n": {"registry.maxBlobBytes", "whole number"},
		"cache:\n  maxBytes: 10 parsecs\n":  {"cache.maxBytes", "512MiB"},
		"listen: [a]\n":                     {"listen", "a string"},
	} {
		_, err := server.LoadConfig(write(body))
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%q: err = %v, want it to contain %q", body, err, w)
			}
		}
		if err != nil && (strings.Contains(err.Error(), "int64") || strings.Contains(err.Error(), "Go struct")) {
			t.Errorf("%q: err = %v names Go types", body, err)
		}
	}
}

// TestDocsConfigLoads: the example in docs/config.md is a valid config,
// so the documented keys and value forms cannot drift from the loader.
func TestDocsConfigLoads(t *testing.T) {
	doc, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("docs/config.md has no ```yaml block")
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte(block), 0o644)
	c, err := server.LoadConfig(p)
	if err != nil {
		t.Fatalf("docs/config.md's example: %v", err)
	}
	if err := c.Validate(); err != nil || c.Cache.MaxBytes != 20<<30 {
		t.Fatalf("docs/config.md's example: %+v, %v", c, err)
	}
}
