package remote_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// failFirst answers the first n requests with status (and Retry-After when
// given), then passes requests to the registry.
func failFirst(n int64, status int, retryAfter string, count *atomic.Int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if count.Add(1) <= n {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				http.Error(w, "try later", status)
				return
			}
			next.ServeHTTP(w, req)
		})
	}
}

func TestRetryOn503(t *testing.T) {
	var count atomic.Int64
	count.Store(1 << 40) // pass-through while the test image is pushed
	r := startRegistry(t, registry.Options{}, failFirst(2, http.StatusServiceUnavailable, "", &count))
	setup := newClient(remote.Options{})
	img := build(t, smallSpec(21))
	if err := setup.Push(context.Background(), r.host+"/p/r/img:v1", img, nil); err != nil {
		t.Fatal(err)
	}

	count.Store(0)
	c := newClient(remote.Options{})
	got, err := c.Resolve(context.Background(), r.host+"/p/r/img:v1", nil)
	if err != nil {
		t.Fatalf("resolve after two 503s: %v", err)
	}
	if got.Digest != mustDigest(t, img) {
		t.Errorf("digest %s", got.Digest)
	}
	if st := c.Stats(); st.Retries != 2 {
		t.Errorf("stats %+v, want 2 retries", st)
	}

	// A registry that keeps failing: bounded, then the 503 is reported.
	count.Store(-1 << 40)
	c2 := newClient(remote.Options{})
	n0 := count.Load()
	_, err = c2.Resolve(context.Background(), r.host+"/p/r/img:v1", nil)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("always 503: err = %v", err)
	}
	if sent := count.Load() - n0; sent != int64(fastRetries.MaxAttempts) {
		t.Errorf("always 503: %d requests, want MaxAttempts = %d", sent, fastRetries.MaxAttempts)
	}
}

func TestRetryAfterHonored(t *testing.T) {
	var count atomic.Int64
	r := startRegistry(t, registry.Options{}, failFirst(1, http.StatusTooManyRequests, "1", &count))
	c := newClient(remote.Options{Retry: remote.RetryPolicy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Second}})
	start := time.Now()
	// The ping is the first request: it gets the 429 and waits as told.
	_, err := c.Tags(context.Background(), r.host+"/p/r/none")
	if elapsed := time.Since(start); elapsed < 900*time.Millisecond {
		t.Errorf("retried after %s, want the 1s Retry-After", elapsed)
	}
	if !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("tags of a missing repository: %v, want ErrNotFound", err)
	}
}

func TestRetryConnectionErrorsAndStalls(t *testing.T) {
	var mode atomic.Int32 // 1: drop the connection, 2: stall, 3: cut blob bodies midway
	var hits atomic.Int64
	r := startRegistry(t, registry.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			switch mode.Load() {
			case 1:
				if hits.Add(1) == 1 {
					panic(http.ErrAbortHandler) // closes the connection without a response
				}
			case 2:
				if hits.Add(1) == 1 {
					select {
					case <-req.Context().Done():
					case <-time.After(5 * time.Second):
					}
					return
				}
			case 3:
				if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") && hits.Add(1) <= 2 {
					next.ServeHTTP(&cutWriter{ResponseWriter: w, left: 50 << 10}, req)
					return
				}
			}
			next.ServeHTTP(w, req)
		})
	})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, newClient(remote.Options{}), r.host, "p/r/img")

	mode.Store(1)
	c := newClient(remote.Options{})
	if _, err := c.Resolve(ctx, r.host+"/p/r/img:v1", nil); err != nil {
		t.Fatalf("after a dropped connection: %v", err)
	}

	mode.Store(2)
	hits.Store(0)
	c = newClient(remote.Options{Timeout: 500 * time.Millisecond})
	start := time.Now()
	if _, err := c.Resolve(ctx, r.host+"/p/r/img:v1", nil); err != nil {
		t.Fatalf("after a stalled request: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the stalled request was given up after %s, want about the 500ms timeout", d)
	}

	// Bodies cut midway: ranged reads and streams resume where they stopped.
	mode.Store(3)
	hits.Store(0)
	c = newClient(remote.Options{})
	b, err := c.Blob(ctx, r.host+"/p/r/img", dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 200<<10)
	if n, err := b.ReadAt(p, 1000); n != len(p) || err != nil || !bytes.Equal(p, want[1000:1000+len(p)]) {
		t.Fatalf("ranged read with a cut body: %d, %v", n, err)
	}
	hits.Store(0)
	rc, err := b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(all, want) {
		t.Fatalf("stream with cut bodies: %d bytes, %v", len(all), err)
	}
	if c.Stats().Retries < 2 {
		t.Errorf("stats %+v: the cuts were not retried", c.Stats())
	}
}

// cutWriter sends left bytes of the body, then drops the connection.
type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if len(p) > c.left {
		c.ResponseWriter.Write(p[:c.left])
		http.NewResponseController(c.ResponseWriter).Flush()
		panic(http.ErrAbortHandler)
	}
	c.left -= len(p)
	return c.ResponseWriter.Write(p)
}

// TestPushRetriesUploads fails the first blob upload chunk with 503: uploads
// are not replayable by the transport, so the push retries the blob from
// the start.
func TestPushRetriesUploads(t *testing.T) {
	var failed atomic.Int64
	r := startRegistry(t, registry.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.Method == http.MethodPatch && failed.Add(1) == 1 {
				io.Copy(io.Discard, req.Body)
				http.Error(w, "overloaded", http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, req)
		})
	})
	c := newClient(remote.Options{})
	img := build(t, smallSpec(51))
	if err := c.Push(context.Background(), r.host+"/p/r/img:v1", img, nil); err != nil {
		t.Fatalf("push with one failed upload: %v", err)
	}
	if failed.Load() < 2 {
		t.Fatalf("no upload was retried (%d PATCHes)", failed.Load())
	}
	pullAndVerify(t, c, r.host+"/p/r/img:v1")
}
