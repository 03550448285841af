package streamfs_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/fstree"
	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

var errEIO = syscall.EIO

func checkEquivalent(t *testing.T, spec imagegen.Spec, spanSize int64) {
	testutil.RequiresRoot(t)
	r := newTestRegistry(t)
	img, ref := r.push(t, spec, "test/equiv")
	want := unpacked(t, img)
	m, dir := mount(t, r.open(t, ref, spanSize), streamfs.Options{Cache: newCache(t)})
	got := scan(t, dir)
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}
	st := m.Stats()
	t.Logf("cold scan: %+v", st)
	if st.FetchedSpans == 0 {
		t.Error("no span was fetched")
	}
	// Again, warm: whole files now come from the cache by passthrough.
	got = scan(t, dir)
	for _, d := range fstree.Diff(want, got) {
		t.Error("warm:", d)
	}
	st2 := m.Stats()
	if st2.FetchedSpans != st.FetchedSpans {
		t.Errorf("warm scan fetched %d more spans", st2.FetchedSpans-st.FetchedSpans)
	}
	if st2.PassthroughOpens == 0 {
		t.Error("no warm open used passthrough")
	}
	if n := m.FallbackReads(); n != 0 {
		t.Errorf("%d reads of cached whole files reached the daemon; passthrough is not in effect", n)
	}
	t.Logf("warm scan: %+v", st2)
}

func TestEquivalenceAllFeatures(t *testing.T) {
	checkEquivalent(t, imagegen.AllFeatures(), 64<<10)
}

func TestEquivalenceAllFeaturesDocker(t *testing.T) {
	checkEquivalent(t, imagegen.AllFeatures().Docker(), 0)
}

func TestEquivalenceDebian(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresBinary(t, "debootstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	img, err := imagegen.DebianImage(ctx, "/var/cache/riffle-test")
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRegistry(t)
	ref := r.pushImage(t, img, "test/debian")
	want := unpacked(t, img)
	m, dir := mount(t, r.open(t, ref, 0), streamfs.Options{Cache: newCache(t)})
	start := time.Now()
	got := scan(t, dir)
	t.Logf("%d entries; cold scan (every file read) in %v: %+v", len(got), time.Since(start), m.Stats())
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}
}
