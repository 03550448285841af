package server_test

import (
	"context"
	"io"
	"log/slog"
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
	waitFor(t, func() bool {
		a, err := server.ReadAddr(dir)
		return err == nil && a == ln.Addr().String()
	})
	// In order: /metrics shows request counters only after a request.
	for _, c := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/v2/", "{}"},
		{"/metrics", "riffle_http_requests_total"},
	} {
		path, want := c.path, c.want
		resp := get(t, base+path, adminToken(t, srv))
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Fatalf("GET %s: %s %q, want 200 containing %q", path, resp.Status, b, want)
		}
	}

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
