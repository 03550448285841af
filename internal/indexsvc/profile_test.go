package indexsvc_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/riffle-dev/riffle/internal/indexsvc"
)

// TestProfilesMergeOverRuns: profiles reported over HTTP are merged per
// layer (union, in order of first use), survive a new Service on the same
// directory, and bad reports are refused with the reason.
func TestProfilesMergeOverRuns(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	res, err := f.svc.IndexImage(ctx, f.ref)
	if err != nil {
		t.Fatal(err)
	}
	var layer = res.Layers[0]
	for _, l := range res.Layers {
		if l.Spans > layer.Spans {
			layer = l
		}
	}
	if layer.Spans < 3 {
		t.Fatalf("the test image's biggest layer has %d spans; need 3", layer.Spans)
	}
	hs := httptest.NewServer(f.svc.Handler())
	defer hs.Close()
	src := indexsvc.HTTPSource{BaseURL: hs.URL}

	if _, err := src.Profile(ctx, layer.Digest); !errors.Is(err, indexsvc.ErrNoProfile) {
		t.Fatalf("profile before any report: %v, want ErrNoProfile", err)
	}
	if err := src.AddProfile(ctx, "", layer.Digest, []int{2, 0}); err != nil {
		t.Fatal(err)
	}
	if err := src.AddProfile(ctx, "", layer.Digest, []int{1, 0, 2}); err != nil {
		t.Fatal(err)
	}
	lp, err := src.Profile(ctx, layer.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{2, 0, 1}; !slices.Equal(lp.Spans, want) || lp.Runs != 2 {
		t.Errorf("merged profile %v over %d runs, want %v over 2", lp.Spans, lp.Runs, want)
	}

	for _, bad := range []struct {
		spans []int
		msg   string
	}{
		{[]int{0, 0}, "listed twice"},
		{[]int{-1}, "not a span"},
		{[]int{layer.Spans}, "not a span"},
	} {
		if err := src.AddProfile(ctx, "", layer.Digest, bad.spans); err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("report %v: %v, want an error saying %q", bad.spans, err, bad.msg)
		}
	}

	again, err := indexsvc.New(f.dir, f.client, indexsvc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	lp, err = again.Profile(ctx, layer.Digest)
	if err != nil || !slices.Equal(lp.Spans, []int{2, 0, 1}) {
		t.Errorf("after a restart: %v, %v", lp, err)
	}
}
