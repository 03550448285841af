package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/riffle-dev/riffle/internal/index"
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
	svc := newIndexService(t)
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

// askedIndexes is the index service as a node's index source that closes
// asked at the first index asked for.
type askedIndexes struct {
	*indexsvc.Service
	once  sync.Once
	asked chan struct{}
}

func (a *askedIndexes) LayerIndex(ctx context.Context, repo string, desc ocispec.Descriptor) (*index.Index, error) {
	a.once.Do(func() { close(a.asked) })
	return a.Service.LayerIndex(ctx, repo, desc)
}

// TestConfigBesideIndexes: a cold node asks for an image's config and its
// layers' indexes at once (one round trip before the mount, not two), and
// keeps the config for the next start.
func TestConfigBesideIndexes(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	spec := smallSpec()
	spec.Config.Env = []string{"CONFIG=arrived"}
	ref := tr.push(t, "p/r/features", spec)
	svc := newIndexService(t)
	if _, err := svc.IndexImage(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	src := &askedIndexes{Service: svc, asked: make(chan struct{})}
	// The registry holds the config until an index has been asked for: a
	// node that waits for the config first waits out the hold.
	var heldOut atomic.Bool
	hold := func(*http.Request) {
		select {
		case <-src.asked:
		case <-time.After(2 * time.Second):
			heldOut.Store(true)
		}
	}
	tr.beforeBlob.Store(&hold)
	root := t.TempDir()
	quiet := func(o *node.Options) {
		o.Indexes = src
		o.Mount.NoBackground = true
	}
	n := newNode(t, root, quiet)
	rfs, err := n.Stream(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if heldOut.Load() {
		t.Error("the config was asked for before any index: a round trip more before the mount")
	}
	if !slices.Equal(rfs.Config.Env, spec.Config.Env) {
		t.Errorf("the root filesystem's config has Env %q, want %q", rfs.Config.Env, spec.Config.Env)
	}
	rfs.Release()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	tr.beforeBlob.Store(nil)
	before := tr.blobGets.Load()
	n = newNode(t, root, quiet)
	defer n.Close()
	rfs, err = n.Stream(context.Background(), ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer rfs.Release()
	if got := tr.blobGets.Load() - before; got != 0 {
		t.Errorf("warm node made %d blob GETs; want none (the config fetched beside the indexes is in its cache)", got)
	}
}

// slowReports is the index service as a profile source whose reports take
// a while to land.
type slowReports struct {
	*indexsvc.Service
}

func (s slowReports) AddProfile(ctx context.Context, repo string, d digest.Digest, spans []int) error {
	time.Sleep(300 * time.Millisecond)
	return s.Service.AddProfile(ctx, repo, d, spans)
}

// TestCloseWaitsForReport: a task's startup profile is reported when it
// releases its root filesystem; a node closed right after (riffle run
// --settle exits once the image settled and its task released it) has
// reported it by the time Close returns.
func TestCloseWaitsForReport(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	ctx := context.Background()
	svc := newIndexService(t)
	n := newNode(t, t.TempDir(), func(o *node.Options) { o.Indexes, o.Profiles = svc, slowReports{svc} })
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		n.Close()
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin")); err != nil {
		t.Error(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := rfs.WaitSettled(wctx); err != nil {
		t.Error(err)
	}
	rfs.Release()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := remote.New(remote.Options{}).Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range img.Manifest.Layers {
		if lp, err := svc.Profile(ctx, l.Digest); err == nil && len(lp.Spans) > 0 {
			return
		}
	}
	t.Fatal("Close returned before the released task's startup profile was reported")
}

// countedProfiles is the index service as a node's profile source,
// counting Profile calls.
type countedProfiles struct {
	*indexsvc.Service
	asked atomic.Int64
}

func (c *countedProfiles) Profile(ctx context.Context, d digest.Digest) (*indexsvc.LayerProfile, error) {
	c.asked.Add(1)
	return c.Service.Profile(ctx, d)
}

// TestWarmStartAsksNoProfile: a node keeps a copy of each layer's startup
// profile (fetched, or recorded by its own task), so the image's next
// start on it asks the profile source for nothing: a warm start costs the
// manifest alone.
func TestWarmStartAsksNoProfile(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/features", smallSpec())
	ctx := context.Background()
	svc := &countedProfiles{Service: newIndexService(t)}
	tune := func(o *node.Options) { o.Indexes, o.Profiles = svc.Service, svc }
	root := t.TempDir()

	n := newNode(t, root, tune)
	rfs, err := n.Stream(ctx, ref, node.Auth{}, node.WithoutBackground())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin")); err != nil {
		t.Fatal(err)
	}
	layers := rfs.Stats().Layers
	rfs.Release()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if got := svc.asked.Load(); got != int64(len(layers)) {
		t.Errorf("a cold start asked for %d profiles, want one per layer (%d)", got, len(layers))
	}
	reported, err := svc.Service.Profile(ctx, layers[1].Digest)
	if err != nil {
		t.Fatalf("a.bin's layer has no reported profile: %v", err)
	}
	var kept indexsvc.LayerProfile
	b, err := os.ReadFile(filepath.Join(root, "profiles", "sha256", layers[1].Digest.Encoded()+".json"))
	if err == nil {
		err = json.Unmarshal(b, &kept)
	}
	if err != nil || !slices.Equal(kept.Spans, reported.Spans) {
		t.Errorf("the node's copy of the profile: %v %v, want the spans reported, %v", kept.Spans, err, reported.Spans)
	}

	before := svc.asked.Load()
	n2 := newNode(t, root, tune)
	defer n2.Close()
	rfs2, err := n2.Stream(ctx, ref, node.Auth{}, node.WithoutBackground())
	if err != nil {
		t.Fatal(err)
	}
	defer rfs2.Release()
	if got := svc.asked.Load() - before; got != 0 {
		t.Errorf("a warm start asked for %d profiles, want none", got)
	}
}
