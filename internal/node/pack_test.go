package node_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// packedImage is an image whose layers have prefetch packs: a first node
// streamed it, read data/a.bin (want) and reported its profile to an index
// service over HTTP (hs, whose handler is svc's unless serve is set), and
// the service built packs for packed layers holding spans profile spans
// in all.
type packedImage struct {
	ref           string
	svc           *indexsvc.Service
	hs            *httptest.Server
	serve         atomic.Pointer[http.HandlerFunc]
	src           indexsvc.HTTPSource
	want          []byte
	packed, spans int
	firstNodeRoot string
}

func newPackedImage(t *testing.T) *packedImage {
	t.Helper()
	tr := newRegistry(t)
	p := &packedImage{ref: tr.push(t, "p/r/packed", smallSpec())}
	ctx := context.Background()
	p.svc = newIndexService(t)
	// As riffle serve does for pushed images: the node's profile then
	// numbers spans of the service's own index, which the pack needs.
	if _, err := p.svc.IndexImage(ctx, p.ref); err != nil {
		t.Fatal(err)
	}
	p.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := p.serve.Load(); h != nil {
			(*h)(w, r)
			return
		}
		p.svc.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(p.hs.Close)
	p.src = indexsvc.HTTPSource{BaseURL: p.hs.URL}

	p.firstNodeRoot = t.TempDir()
	n1 := newNode(t, p.firstNodeRoot, p.tune)
	defer n1.Close()
	rfs, err := n1.Stream(ctx, p.ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	p.want, err = os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	rfs.Release() // reports the profile

	img, err := remote.New(remote.Options{}).Resolve(ctx, p.ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 600 {
		p.packed, p.spans = 0, 0
		for _, l := range img.Manifest.Layers {
			if rc, err := p.svc.Pack(ctx, l.Digest); err == nil {
				rc.Close()
				p.packed++
				lp, err := p.svc.Profile(ctx, l.Digest)
				if err != nil {
					t.Fatal(err)
				}
				p.spans += len(lp.Spans)
			} else if !errors.Is(err, streamfs.ErrNoPack) {
				t.Fatal(err)
			}
		}
		if p.packed > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.packed == 0 {
		t.Fatal("no pack was built from the reported profile")
	}
	return p
}

// tune makes a node take indexes, profiles and packs from p's service.
func (p *packedImage) tune(o *node.Options) {
	o.Indexes, o.Profiles = p.src, p.src
	o.Mount.NoBackground = true // only the profile and reads fetch
}

// waitPackSpans waits until rfs's packs delivered want spans.
func waitPackSpans(rfs *node.RootFS, want int) streamfs.Stats {
	var st streamfs.Stats
	for range 600 {
		if st = rfs.Stats(); st.PackSpans == int64(want) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return st
}

// TestStreamFetchesPack: a node reports its first task's profile to an
// index service over HTTP with the image's repository; the service builds
// a pack; a second node streaming the image fetches that pack in one
// request per profiled layer, its reads are right, and the node's metrics
// count the pack.
func TestStreamFetchesPack(t *testing.T) {
	testutil.RequiresRoot(t)
	p := newPackedImage(t)
	ctx := context.Background()
	var packGets atomic.Int64
	count := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/index/v1/packs/") {
			packGets.Add(1)
		}
		p.svc.Handler().ServeHTTP(w, r)
	})
	p.serve.Store(&count)
	packed, spans, want := p.packed, p.spans, p.want

	reg := prometheus.NewRegistry()
	n2 := newNode(t, t.TempDir(), func(o *node.Options) { p.tune(o); o.Metrics = reg })
	defer n2.Close()
	rfs2, err := n2.Stream(ctx, p.ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer rfs2.Release()
	st := waitPackSpans(rfs2, spans)
	if st.Packs != int64(packed) || st.PackSpans != int64(spans) || st.ProfileSpans != st.PackSpans || st.FetchedSpans != 0 {
		t.Fatalf("stats %+v: want %d packs delivering the whole profile (%d spans), nothing by range", st, packed, spans)
	}
	got, err := os.ReadFile(filepath.Join(rfs2.Lower[0], "data", "a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("data/a.bin differs between the nodes")
	}
	if n := packGets.Load(); n != int64(packed) {
		t.Errorf("%d pack requests for %d packed layers", n, packed)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]float64{}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "riffle_node_pack") {
			found[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if found["riffle_node_packs_fetched_total"] != float64(packed) || found["riffle_node_pack_spans_total"] != float64(st.PackSpans) || found["riffle_node_pack_wire_bytes_total"] == 0 {
		t.Errorf("node metrics %v, want %d packs and %d spans", found, packed, st.PackSpans)
	}
}

// TestPackAskedWithIndexes: a node asks for an image's prefetch packs as
// soon as it has the profile, while the indexes are still coming, not
// after the mount is built; a node whose cache holds the profile's spans
// asks for no pack.
func TestPackAskedWithIndexes(t *testing.T) {
	testutil.RequiresRoot(t)
	p := newPackedImage(t)
	ctx := context.Background()
	// The service holds every index until a pack has been asked for: a
	// node that asks for packs only once it has mounted waits out the
	// hold.
	asked := make(chan struct{})
	var once sync.Once
	var heldOut atomic.Bool
	var packGets atomic.Int64
	hold := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch path := r.URL.Path; {
		case strings.HasPrefix(path, "/index/v1/packs/"):
			packGets.Add(1)
			once.Do(func() { close(asked) })
		case strings.HasPrefix(path, "/index/v1/layers/") && !strings.Contains(path, "/windows/"):
			select {
			case <-asked:
			case <-time.After(2 * time.Second):
				heldOut.Store(true)
			}
		}
		p.svc.Handler().ServeHTTP(w, r)
	})
	p.serve.Store(&hold)

	n2 := newNode(t, t.TempDir(), p.tune)
	defer n2.Close()
	rfs, err := n2.Stream(ctx, p.ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPackSpans(rfs, p.spans)
	if heldOut.Load() {
		t.Error("an index waited out the hold: the packs were asked for after the indexes")
	}
	if st.Packs != int64(p.packed) || st.PackSpans != int64(p.spans) || st.FetchedSpans != 0 {
		t.Errorf("stats %+v: want %d packs delivering the whole profile (%d spans), nothing by range", st, p.packed, p.spans)
	}
	got, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p.want) {
		t.Error("data/a.bin differs from the first node's")
	}
	rfs.Release()

	// The first node's cache has every span of the profile.
	before := packGets.Load()
	n3 := newNode(t, p.firstNodeRoot, p.tune)
	defer n3.Close()
	rfs3, err := n3.Stream(ctx, p.ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer rfs3.Release()
	if got, err := os.ReadFile(filepath.Join(rfs3.Lower[0], "data", "a.bin")); err != nil || !bytes.Equal(got, p.want) {
		t.Errorf("warm node read data/a.bin: %v (equal: %v)", err, bytes.Equal(got, p.want))
	}
	if n := packGets.Load() - before; n != 0 {
		t.Errorf("a node with the profile's spans cached asked for %d packs", n)
	}
}
