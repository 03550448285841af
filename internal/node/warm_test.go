package node_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// TestSettledStartWarmsProfile: a task started on a settled image whose
// files left the page cache finds the files its image's first task read
// read again into the cache, from the layer store, and not the others.
func TestSettledStartWarmsProfile(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	spec := smallSpec()
	spec.Layers[1].Entries = append(spec.Layers[1].Entries,
		imagegen.Entry{Type: imagegen.File, Name: "data/b.bin", Size: 2 << 20, Seed: 3})
	ref := tr.push(t, "p/r/warm", spec)
	ctx := context.Background()
	svc := newIndexService(t)
	reg := prometheus.NewRegistry()
	n := newNode(t, t.TempDir(), func(o *node.Options) { o.Indexes, o.Profiles, o.Metrics = svc, svc, reg })
	defer n.Close()

	// The image's startup profile is a.bin, as if an earlier task had
	// read that file alone (how a task's reads are recorded is
	// streamfs's; here the profile is the input). Then the image streams
	// and settles.
	img, err := remote.New(remote.Options{}).Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	repo := img.Repository.Name()
	x, err := svc.LayerIndex(ctx, repo, img.Manifest.Layers[1])
	if err != nil {
		t.Fatal(err)
	}
	var spans []int
	for _, f := range x.Files {
		if f.Name == "data/a.bin" {
			first, end, err := x.SpanRange(f.Offset, f.Size)
			if err != nil {
				t.Fatal(err)
			}
			for s := first; s < end; s++ {
				spans = append(spans, s)
			}
		}
	}
	if len(spans) == 0 {
		t.Fatal("data/a.bin is not in the data layer's index")
	}
	if err := svc.AddProfile(ctx, repo, img.Manifest.Layers[1].Digest, spans); err != nil {
		t.Fatal(err)
	}
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := rfs.WaitSettled(wctx); err != nil {
		t.Fatal(err)
	}
	rfs.Release()

	// The image's files leave the page cache; the next task starts.
	find := func(name string) string {
		m, _ := filepath.Glob(filepath.Join(n.Layout().Layers(), "sha256", "*", "fs", "data", name))
		if len(m) != 1 {
			t.Fatalf("%s in the layer store: %v", name, m)
		}
		return m[0]
	}
	a, b := find("a.bin"), find("b.bin")
	for _, p := range []string{a, b} {
		testutil.Evict(t, p)
	}
	settled, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	defer settled.Release()
	if settled.Method != node.MethodSettled {
		t.Fatalf("second start: %q, want settled", settled.Method)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		in, pages := testutil.Resident(t, a)
		if in == pages {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a.bin, which the first task read: %d of %d pages cached 20 s after a settled start", in, pages)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := n.Close(); err != nil { // waits for the warm-up
		t.Fatal(err)
	}
	// b.bin was not read: at most the part that shares a span with a.bin.
	if in, pages := testutil.Resident(t, b); in > pages/4 {
		t.Errorf("b.bin, which no task read: %d of %d pages cached", in, pages)
	}
	if v := counter(t, reg, "riffle_node_warmed_files_total"); v < 1 {
		t.Errorf("riffle_node_warmed_files_total = %v, want at least 1", v)
	}
}

// counter returns the value of the one counter named name that reg
// gathers.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
