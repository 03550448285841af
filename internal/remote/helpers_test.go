package remote_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// testRegistry is the real embedded registry behind an httptest server,
// optionally wrapped by a handler that misbehaves on purpose.
type testRegistry struct {
	reg  *registry.Registry
	srv  *httptest.Server
	host string
}

func startRegistry(t testing.TB, opts registry.Options, wrap func(http.Handler) http.Handler) *testRegistry {
	t.Helper()
	if opts.RootDir == "" {
		opts.RootDir = t.TempDir()
	}
	reg, err := registry.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = reg
	if wrap != nil {
		h = wrap(reg)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); reg.Close() })
	return &testRegistry{reg: reg, srv: srv, host: strings.TrimPrefix(srv.URL, "http://")}
}

// fastRetries keeps retry tests quick while still exercising backoff.
var fastRetries = remote.RetryPolicy{MaxAttempts: 4, InitialDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond}

func newClient(opts remote.Options) *remote.Client {
	if opts.Retry == (remote.RetryPolicy{}) {
		opts.Retry = fastRetries
	}
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	return remote.New(opts)
}

// smallSpec is a 3-layer image of a few hundred KiB.
func smallSpec(seed uint64) imagegen.Spec {
	return imagegen.Spec{
		Layers: []imagegen.Layer{
			{Entries: []imagegen.Entry{{Type: imagegen.Dir, Name: "etc"}, {Type: imagegen.File, Name: "etc/hostname", Data: []byte("test\n")}}},
			{Compression: imagegen.Uncompressed, Entries: []imagegen.Entry{{Type: imagegen.File, Name: "data.bin", Size: 300 << 10, Seed: seed, Fill: imagegen.Random}}},
			{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "more.bin", Size: 50 << 10, Seed: seed + 1}}},
		},
	}
}

func build(t testing.TB, spec imagegen.Spec) v1.Image {
	t.Helper()
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func mustDigest(t testing.TB, img v1.Image) digest.Digest {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String())
}

func layerBytes(t testing.TB, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha256Hex(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// imagegenTiny is a one-layer image of a few bytes.
func imagegenTiny() imagegen.Spec {
	return imagegen.Spec{Layers: []imagegen.Layer{{Entries: []imagegen.Entry{{Type: imagegen.File, Name: "hello", Data: []byte("hello\n")}}}}}
}
