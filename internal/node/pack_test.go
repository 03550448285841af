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

// TestStreamFetchesPack: a node reports its first task's profile to an
// index service over HTTP with the image's repository; the service builds
// a pack; a second node streaming the image fetches that pack in one
// request per profiled layer, its reads are right, and the node's metrics
// count the pack.
func TestStreamFetchesPack(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/packed", smallSpec())
	ctx := context.Background()
	svc := newIndexService(t)
	// As riffle serve does for pushed images: the node's profile then
	// numbers spans of the service's own index, which the pack needs.
	if _, err := svc.IndexImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	var packGets atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/index/v1/packs/") {
			packGets.Add(1)
		}
		svc.Handler().ServeHTTP(w, r)
	}))
	defer hs.Close()
	src := indexsvc.HTTPSource{BaseURL: hs.URL}
	tune := func(o *node.Options) {
		o.Indexes, o.Profiles = src, src
		o.Mount.NoBackground = true // only the profile and reads fetch
	}

	n1 := newNode(t, t.TempDir(), tune)
	defer n1.Close()
	rfs, err := n1.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(rfs.Lower[0], "data", "a.bin"))
	if err != nil {
		t.Fatal(err)
	}
	rfs.Release() // reports the profile

	img, err := remote.New(remote.Options{}).Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	packed, spans := 0, 0
	for range 600 {
		packed, spans = 0, 0
		for _, l := range img.Manifest.Layers {
			if rc, err := svc.Pack(ctx, l.Digest); err == nil {
				rc.Close()
				packed++
				lp, err := svc.Profile(ctx, l.Digest)
				if err != nil {
					t.Fatal(err)
				}
				spans += len(lp.Spans)
			} else if !errors.Is(err, streamfs.ErrNoPack) {
				t.Fatal(err)
			}
		}
		if packed > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if packed == 0 {
		t.Fatal("no pack was built from the reported profile")
	}

	reg := prometheus.NewRegistry()
	n2 := newNode(t, t.TempDir(), func(o *node.Options) { tune(o); o.Metrics = reg })
	defer n2.Close()
	rfs2, err := n2.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer rfs2.Release()
	var st streamfs.Stats
	for range 600 {
		if st = rfs2.Stats(); st.PackSpans == int64(spans) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
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
