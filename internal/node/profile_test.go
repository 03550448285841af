package node_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// heldProfiles is the index service as a node's profile source, with each
// Profile call held until every layer of the image has asked: a node that
// asks one layer after another never gets past the first (its wait ends
// with the profile timeout).
type heldProfiles struct {
	*indexsvc.Service
	layers int

	mu       sync.Mutex
	asked    int
	all      chan struct{}
	timedOut atomic.Bool
}

func (h *heldProfiles) Profile(ctx context.Context, d digest.Digest) (*indexsvc.LayerProfile, error) {
	h.mu.Lock()
	if h.asked++; h.asked == h.layers {
		close(h.all)
	}
	h.mu.Unlock()
	select {
	case <-h.all:
	case <-ctx.Done():
		h.timedOut.Store(true)
		return nil, ctx.Err()
	}
	return h.Service.Profile(ctx, d)
}

// TestProfilesAskedAtOnce: a mount asks for the startup profiles of all of
// an image's layers at once, not a round trip per layer before the mount.
func TestProfilesAskedAtOnce(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	svc, err := indexsvc.New(t.TempDir(), remote.New(remote.Options{}), indexsvc.Options{SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	held := &heldProfiles{Service: svc, layers: len(smallSpec().Layers), all: make(chan struct{})}
	n := newNode(t, t.TempDir(), func(o *node.Options) {
		o.Indexes, o.Profiles = svc, held
		o.Mount.NoBackground = true
	})
	defer n.Close()
	rfs, err := n.Stream(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	rfs.Release()
	if held.timedOut.Load() {
		t.Error("a profile request waited out the profile timeout: the layers' profiles were asked for one after another")
	}
	held.mu.Lock()
	defer held.mu.Unlock()
	if held.asked != held.layers {
		t.Errorf("profiles asked for %d layers, want %d", held.asked, held.layers)
	}
}
