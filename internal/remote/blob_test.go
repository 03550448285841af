package remote_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// pushedLayer pushes a small image and returns its uncompressed 300 KiB
// layer's bytes and descriptor fields.
func pushedLayer(t *testing.T, c *remote.Client, host, repo string) (v1.Layer, []byte, digest.Digest) {
	t.Helper()
	img := build(t, smallSpec(7))
	if err := c.Push(context.Background(), host+"/"+repo+":v1", img, nil); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	l := layers[1]
	d, _ := l.Digest()
	return l, layerBytes(t, l), digest.Digest(d.String())
}

func TestBlobReadAt(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	size := int64(len(want))

	b, err := c.Blob(ctx, r.host+"/p/r/img", dgst, size)
	if err != nil {
		t.Fatal(err)
	}
	before := c.Stats()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		off := rng.Int64N(size)
		n := 1 + rng.IntN(64<<10)
		p := make([]byte, n)
		got, err := b.ReadAt(p, off)
		end := min(off+int64(n), size)
		if int64(got) != end-off {
			t.Fatalf("ReadAt(%d, %d) = %d bytes, want %d", n, off, got, end-off)
		}
		if off+int64(n) > size {
			if err != io.EOF {
				t.Fatalf("ReadAt(%d, %d) past the end: err = %v, want io.EOF", n, off, err)
			}
		} else if err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
		}
		if !bytes.Equal(p[:got], want[off:end]) {
			t.Fatalf("ReadAt(%d, %d): bytes differ", n, off)
		}
	}
	st := c.Stats()
	if st.RangeReads-before.RangeReads != 200 || st.Requests-before.Requests < 200 || st.BytesFetched <= before.BytesFetched {
		t.Errorf("stats after 200 reads: %+v (before %+v)", st, before)
	}

	// Edges: the last byte, empty reads, reads at and past the end.
	p := make([]byte, 1)
	if n, err := b.ReadAt(p, size-1); n != 1 || err != nil || p[0] != want[size-1] {
		t.Errorf("last byte: %d, %v, %x want %x", n, err, p[0], want[size-1])
	}
	p = make([]byte, 10)
	if n, err := b.ReadAt(p, size-3); n != 3 || err != io.EOF || !bytes.Equal(p[:3], want[size-3:]) {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	reads := c.Stats().RangeReads
	for _, off := range []int64{0, size / 2, size} {
		if n, err := b.ReadAt(nil, off); n != 0 || err != nil {
			t.Errorf("empty read at %d: %d, %v", off, n, err)
		}
	}
	if c.Stats().RangeReads != reads {
		t.Errorf("empty reads went to the network")
	}
	if n, err := b.ReadAt(make([]byte, 4), size); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v", n, err)
	}
	if n, err := b.ReadAt(make([]byte, 4), size+100); n != 0 || err != io.EOF {
		t.Errorf("read past the end: %d, %v", n, err)
	}
	if _, err := b.ReadAt(make([]byte, 4), -1); err == nil {
		t.Errorf("negative offset accepted")
	}
	// The whole blob in one read, and concurrent reads.
	all := make([]byte, size)
	if n, err := b.ReadAt(all, 0); n != int(size) || err != nil || !bytes.Equal(all, want) {
		t.Errorf("whole blob: %d, %v", n, err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			p := make([]byte, 4096)
			off := int64(g) * 30000
			if _, err := b.ReadAt(p, off); err != nil || !bytes.Equal(p, want[off:off+4096]) {
				t.Errorf("concurrent read %d: %v", g, err)
			}
		}(g)
	}
	wg.Wait()

	// Unknown size: learnt with HEAD.
	b2, err := c.Blob(ctx, r.host+"/p/r/img", dgst, -1)
	if err != nil || b2.Size() != size {
		t.Fatalf("size from HEAD: %v, %v", b2, err)
	}

	// Open streams and verifies.
	rc, err := b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Open: %d bytes, %v", len(got), err)
	}

	// A blob that does not exist.
	missing := digest.FromString("not there")
	b3, err := c.Blob(ctx, r.host+"/p/r/img", missing, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b3.ReadAt(make([]byte, 4), 0); err == nil || !strings.Contains(err.Error(), "BLOB_UNKNOWN") {
		t.Errorf("missing blob: %v", err)
	}
}

func TestBlobZeroLength(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()
	// An image whose config we replace is overkill; the empty blob is
	// pushed as a layer of a real image instead.
	img := build(t, smallSpec(3))
	if err := c.Push(ctx, r.host+"/p/r/zero:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	// Upload the empty blob with the registry API directly (POST, then PUT
	// with the digest).
	empty := digest.FromBytes(nil)
	resp, err := http.Post(r.srv.URL+"/v2/p/r/zero/blobs/uploads/", "application/octet-stream", http.NoBody)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("upload start: %s: %v", resp.Status, err)
	}
	q := loc.Query()
	q.Set("digest", empty.String())
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), http.NoBody)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload of the empty blob: %s", resp.Status)
	}
	b, err := c.Blob(ctx, r.host+"/p/r/zero", empty, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b.ReadAt(nil, 0); n != 0 || err != nil {
		t.Errorf("empty read of an empty blob: %d, %v", n, err)
	}
	if n, err := b.ReadAt(make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("read of an empty blob: %d, %v", n, err)
	}
	rc, err := b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(rc); err != nil || len(got) != 0 {
		t.Errorf("Open of an empty blob: %q, %v", got, err)
	}
	rc.Close()
}

// OpenRange hands over the body of one ranged GET: exactly the bytes asked
// for, read in pieces; a range outside the blob is refused before any
// request.
func TestBlobOpenRange(t *testing.T) {
	r := startRegistry(t, registry.Options{}, nil)
	c := newClient(remote.Options{})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	size := int64(len(want))
	b, err := c.Blob(ctx, r.host+"/p/r/img", dgst, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, rg := range [][2]int64{{0, size}, {1, 1}, {size / 3, size / 2}, {size - 7, 7}} {
		rc, err := b.OpenRange(ctx, rg[0], rg[1])
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		p := make([]byte, 4096)
		for {
			n, err := rc.Read(p)
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		rc.Close()
		if !bytes.Equal(got, want[rg[0]:rg[0]+rg[1]]) {
			t.Errorf("OpenRange(%d, %d): %d bytes, not the blob's", rg[0], rg[1], len(got))
		}
	}
	for _, rg := range [][2]int64{{-1, 2}, {0, 0}, {size - 1, 2}} {
		if rc, err := b.OpenRange(ctx, rg[0], rg[1]); err == nil || !strings.Contains(err.Error(), "outside") {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("OpenRange(%d, %d) = %v, want an error naming the range", rg[0], rg[1], err)
		}
	}
}

func TestRangeIgnored(t *testing.T) {
	r := startRegistry(t, registry.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			req.Header.Del("Range") // a registry (or proxy) that ignores Range
			next.ServeHTTP(w, req)
		})
	})
	c := newClient(remote.Options{})
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	b, err := c.Blob(context.Background(), r.host+"/p/r/img", dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	before := c.Stats().BytesFetched
	_, err = b.ReadAt(make([]byte, 100), 1000)
	if !errors.Is(err, remote.ErrRangeNotSupported) {
		t.Fatalf("err = %v, want ErrRangeNotSupported", err)
	}
	if !strings.Contains(err.Error(), "Range") {
		t.Errorf("error %q does not explain", err)
	}
	// The client must not have read the whole blob to find out.
	if got := c.Stats().BytesFetched - before; got > int64(len(want))/2 {
		t.Errorf("read %d bytes of a %d-byte blob before giving up", got, len(want))
	}
	if _, err := b.OpenRange(context.Background(), 1000, 100); !errors.Is(err, remote.ErrRangeNotSupported) {
		t.Errorf("OpenRange: err = %v, want ErrRangeNotSupported", err)
	}
	// Asking for the whole blob is still fine: 200 is the right answer.
	all := make([]byte, len(want))
	if n, err := b.ReadAt(all, 0); n != len(want) || err != nil || !bytes.Equal(all, want) {
		t.Errorf("whole-blob read: %d, %v", n, err)
	}
	body, err := b.OpenRange(context.Background(), 0, int64(len(want)))
	if err != nil {
		t.Fatalf("OpenRange of the whole blob: %v", err)
	}
	all, err = io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(all, want) {
		t.Errorf("OpenRange of the whole blob: %d bytes, %v", len(all), err)
	}
}

// TestRedirectToOtherHost serves blobs the way registries backed by object
// storage do: a 307 to another host, which must get the Range header but
// never the registry's credentials.
func TestRedirectToOtherHost(t *testing.T) {
	const user, pass = "alice", "s3cret"
	var cdnHits atomic.Int64
	var regHandler http.Handler
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		cdnHits.Add(1)
		if a := req.Header.Get("Authorization"); a != "" {
			t.Errorf("the storage host got Authorization %q", a)
			http.Error(w, "credentials leaked", http.StatusForbidden)
			return
		}
		// Serve from the registry itself (as a signed URL would from S3).
		in := req.Clone(req.Context())
		in.URL.Path = strings.TrimPrefix(req.URL.Path, "/cdn")
		in.RequestURI = ""
		in.SetBasicAuth(user, pass)
		regHandler.ServeHTTP(w, in)
	}))
	defer cdn.Close()

	r := startRegistry(t, registry.Options{Configure: htpasswdAuth(t, user, pass)}, func(next http.Handler) http.Handler {
		regHandler = next
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
				if u, p, ok := req.BasicAuth(); !ok || u != user || p != pass {
					next.ServeHTTP(w, req) // let the registry send its challenge
					return
				}
				http.Redirect(w, req, cdn.URL+"/cdn"+req.URL.Path, http.StatusTemporaryRedirect)
				return
			}
			next.ServeHTTP(w, req)
		})
	})
	dockerConfig(t, r.host, user, pass)
	c := newClient(remote.Options{})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	img, err := c.Resolve(ctx, r.host+"/p/r/img:v1", nil) // the config comes through the redirect too
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.RepositoryBlob(ctx, img.Repository, dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 5000)
	if n, err := b.ReadAt(p, 12345); n != len(p) || err != nil || !bytes.Equal(p, want[12345:12345+5000]) {
		t.Fatalf("ranged read through a redirect: %d, %v", n, err)
	}
	rc, err := b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Open through a redirect: %d bytes, %v", len(got), err)
	}
	if cdnHits.Load() < 3 {
		t.Errorf("the storage host served %d requests, want >= 3", cdnHits.Load())
	}
}

// TestCorruptBlobDetected checks that Open verifies the digest: a registry
// that serves the wrong bytes for a blob is caught at EOF.
func TestCorruptBlobDetected(t *testing.T) {
	var corrupt atomic.Bool
	r := startRegistry(t, registry.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if corrupt.Load() && req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
				next.ServeHTTP(&flipWriter{ResponseWriter: w}, req)
				return
			}
			next.ServeHTTP(w, req)
		})
	})
	c := newClient(remote.Options{})
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	corrupt.Store(true)
	b, err := c.Blob(context.Background(), r.host+"/p/r/img", dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, remote.ErrDigestMismatch) {
		t.Fatalf("corrupt blob: err = %v, want ErrDigestMismatch", err)
	}
	// The config is verified as well.
	if _, err := c.Resolve(context.Background(), r.host+"/p/r/img:v1", nil); !errors.Is(err, remote.ErrDigestMismatch) {
		t.Fatalf("corrupt config: err = %v, want ErrDigestMismatch", err)
	}
}

// flipWriter flips one bit of the first body byte.
type flipWriter struct {
	http.ResponseWriter
	done bool
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if !f.done && len(p) > 0 {
		f.done = true
		q := bytes.Clone(p)
		q[0] ^= 1
		return f.ResponseWriter.Write(q)
	}
	return f.ResponseWriter.Write(p)
}
