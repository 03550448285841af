package streamfs_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// testRegistry is the real embedded registry on a loopback listener, with
// hooks on the wire: it counts blob bytes served by range requests, can
// corrupt them, stall them, or die and come back on the same address.
type testRegistry struct {
	t    testing.TB
	reg  *registry.Registry
	addr string

	mu  sync.Mutex
	srv *http.Server

	rangeBytes    atomic.Int64 // body bytes of ranged blob GETs
	rangeRequests atomic.Int64
	corrupt       atomic.Int64 // ranged blob responses still to corrupt
	stall         atomic.Bool  // hold ranged blob GETs until the client gives up
	cutRange      atomic.Int64 // when > 0, cut ranged blob responses after this many bytes
	cuts          atomic.Int64 // ranged responses cut so

	streamBytes   atomic.Int64           // body bytes of whole-blob GETs
	corruptStream atomic.Bool            // flip a byte near the start of whole-blob GETs
	onStream      atomic.Pointer[func()] // runs before a whole-blob GET is served
	onRange       atomic.Pointer[func()] // runs before a ranged blob GET is served
	// onRangeReq runs before a ranged blob GET is served, with the request.
	onRangeReq atomic.Pointer[func(*http.Request)]
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &testRegistry{t: t, reg: reg, addr: ln.Addr().String()}
	r.serve(ln)
	t.Cleanup(func() {
		r.kill()
		reg.Close()
	})
	return r
}

func (r *testRegistry) serve(ln net.Listener) {
	srv := &http.Server{Handler: r}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go srv.Serve(ln)
}

// kill closes the listener and every connection, as a crashed registry.
func (r *testRegistry) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
}

// revive listens on the same address again.
func (r *testRegistry) revive() {
	r.t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may linger briefly
		if ln, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	r.serve(ln)
}

func (r *testRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Header.Get("Range") == "" {
		if f := r.onStream.Load(); f != nil {
			(*f)()
		}
		w = &countingWriter{ResponseWriter: w, n: &r.streamBytes, flip: r.corruptStream.Load(), at: 12}
	}
	if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Header.Get("Range") != "" {
		if f := r.onRange.Load(); f != nil {
			(*f)()
		}
		if f := r.onRangeReq.Load(); f != nil {
			(*f)(req)
		}
		r.rangeRequests.Add(1)
		if r.stall.Load() {
			<-req.Context().Done()
			return
		}
		cw := &countingWriter{ResponseWriter: w, n: &r.rangeBytes, cutAfter: r.cutRange.Load(), cuts: &r.cuts}
		if r.corrupt.Load() > 0 && r.corrupt.Add(-1) >= 0 {
			cw.flip = true
		}
		w = cw
	}
	r.reg.ServeHTTP(w, req)
}

type countingWriter struct {
	http.ResponseWriter
	n       *atomic.Int64
	flip    bool
	flipped bool
	at      int // byte of the first write to flip; 0: its middle
	// cutAfter > 0 ends the response (and its connection) after that many
	// body bytes, counting it in cuts.
	cutAfter, sent int64
	cuts           *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.flip && !c.flipped && len(p) > c.at {
		q := append([]byte(nil), p...)
		at := c.at
		if at == 0 {
			at = len(q) / 2
		}
		q[at] ^= 0x40
		p = q
		c.flipped = true
	}
	cut := c.cutAfter > 0 && c.sent+int64(len(p)) > c.cutAfter
	if cut {
		p = p[:c.cutAfter-c.sent]
	}
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	c.sent += int64(n)
	if cut {
		c.cuts.Add(1)
		if f, ok := c.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (r *testRegistry) client() *remote.Client {
	return remote.New(remote.Options{Timeout: 10 * time.Second, Retry: remote.RetryPolicy{MaxAttempts: 2}})
}

// push builds spec, pushes it as repo:v1 and returns the image and its
// reference.
func (r *testRegistry) push(t testing.TB, spec imagegen.Spec, repo string) (v1.Image, string) {
	t.Helper()
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	return img, r.pushImage(t, img, repo)
}

func (r *testRegistry) pushImage(t testing.TB, img v1.Image, repo string) string {
	t.Helper()
	ref := r.addr + "/" + repo + ":v1"
	// go-containerregistry pushes directly; remote.Client is for reading.
	nref, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(nref, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

// open resolves ref and builds its layers' indexes, as a node without an
// index service would.
func (r *testRegistry) open(t testing.TB, ref string, spanSize int64) streamfs.Image {
	t.Helper()
	img, _, err := streamfs.Open(context.Background(), r.client(), ref, streamfs.OpenOptions{Build: true, SpanSize: spanSize})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func newCache(t testing.TB) *cache.Cache {
	t.Helper()
	c, err := cache.Open(t.TempDir(), cache.Options{MaxBytes: 4 << 30, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mountDir makes an empty mount point.
func mountDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mount(t testing.TB, img streamfs.Image, opts streamfs.Options) (*streamfs.MountPoint, string) {
	t.Helper()
	dir := mountDir(t)
	m, err := streamfs.Mount(context.Background(), dir, img, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			streamfs.UnmountDir(dir, true)
		}
	})
	return m, dir
}

// unpacked extracts img with internal/unpack, the full pull, and scans it.
func unpacked(t testing.TB, img v1.Image) fstree.Tree {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unpack.Image(context.Background(), dir, img); err != nil {
		t.Fatal(err)
	}
	return scan(t, dir)
}

func scan(t testing.TB, dir string) fstree.Tree {
	t.Helper()
	tree, err := fstree.Scan(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func isEIO(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe) && errors.Is(pe.Err, errEIO)
}
