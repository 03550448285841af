package remote_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// freezable wraps a registry handler: while frozen, requests get no answer
// until their client gives up, as from a stopped registry process.
func freezable(frozen *atomic.Bool) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if frozen.Load() {
				<-r.Context().Done()
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// TestUnreachableRegistryFailsFast: once a frozen registry has not
// answered for UnreachableAfter, reads fail at once with ErrUnreachable
// instead of each waiting out its timeout; when the registry answers a
// probe again, reads work again.
func TestUnreachableRegistryFailsFast(t *testing.T) {
	var frozen atomic.Bool
	r := startRegistry(t, registry.Options{}, freezable(&frozen))
	c := newClient(remote.Options{UnreachableAfter: time.Second, ProbeInterval: 100 * time.Millisecond})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	b, err := c.Blob(ctx, r.host+"/p/r/img", dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	read := func(timeout time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		start := time.Now()
		_, err := b.ReadAtContext(ctx, make([]byte, 1000), 100)
		return time.Since(start), err
	}
	if _, err := read(5 * time.Second); err != nil {
		t.Fatal(err)
	}

	frozen.Store(true)
	// The first read waits out its deadline: one failure, 1.2s long, is
	// more than UnreachableAfter.
	took, err := read(1200 * time.Millisecond)
	if err == nil || errors.Is(err, remote.ErrUnreachable) {
		t.Fatalf("first read of a frozen registry: %v after %v; want its deadline", err, took)
	}
	for i := range 5 {
		took, err := read(5 * time.Second)
		if !errors.Is(err, remote.ErrUnreachable) {
			t.Fatalf("read %d of an unreachable registry: %v after %v; want ErrUnreachable", i, err, took)
		}
		if took > 500*time.Millisecond {
			t.Errorf("read %d took %v to fail; want at once", i, took)
		}
		if i == 0 {
			t.Logf("%v", err)
		}
	}

	frozen.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := read(5 * time.Second)
		if err == nil {
			break
		}
		if !errors.Is(err, remote.ErrUnreachable) || time.Now().After(deadline) {
			t.Fatalf("read after the registry came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFailuresShorterThanUnreachableAfter: failures for less than
// UnreachableAfter, with answers between them, never trip the breaker.
func TestFailuresShorterThanUnreachableAfter(t *testing.T) {
	var frozen atomic.Bool
	r := startRegistry(t, registry.Options{}, freezable(&frozen))
	c := newClient(remote.Options{UnreachableAfter: 2 * time.Second, ProbeInterval: 100 * time.Millisecond})
	ctx := context.Background()
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	b, err := c.Blob(ctx, r.host+"/p/r/img", dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		frozen.Store(true)
		rctx, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
		_, err := b.ReadAtContext(rctx, make([]byte, 10), 0)
		cancel()
		if err == nil || errors.Is(err, remote.ErrUnreachable) {
			t.Fatalf("round %d, frozen: %v; want a timeout", i, err)
		}
		frozen.Store(false)
		if _, err := b.ReadAtContext(ctx, make([]byte, 10), 0); err != nil {
			t.Fatalf("round %d, answering: %v", i, err)
		}
	}
}
