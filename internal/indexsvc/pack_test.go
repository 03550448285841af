package indexsvc_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// biggestLayer indexes the fixture's image and returns its layer with the
// most spans, which must have at least spans.
func biggestLayer(t *testing.T, f *fixture, spans int) indexsvc.LayerResult {
	t.Helper()
	res, err := f.svc.IndexImage(context.Background(), f.ref)
	if err != nil {
		t.Fatal(err)
	}
	layer := res.Layers[0]
	for _, l := range res.Layers {
		if l.Spans > layer.Spans {
			layer = l
		}
	}
	if layer.Spans < spans {
		t.Fatalf("the test image's biggest layer has %d spans; need %d", layer.Spans, spans)
	}
	return layer
}

// waitPack waits (bounded) for the background build of layer d's pack.
func waitPack(t *testing.T, src streamfs.PackSource, d digest.Digest, spans int) []byte {
	t.Helper()
	for range 600 {
		rc, err := src.Pack(context.Background(), d)
		if err == nil {
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			h, err := streamfs.ReadPackHeader(bufio.NewReader(bytes.NewReader(b)))
			if err != nil {
				t.Fatal(err)
			}
			if len(h.Spans) == spans {
				return b
			}
		} else if !errors.Is(err, streamfs.ErrNoPack) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no pack of %d spans for %s after 30 s", spans, d)
	return nil
}

// TestPackBuiltFromProfile: a profile reported with its repository makes
// the service build the layer's pack in the background; the pack is the
// header and then exactly each profiled span's blob range, in profile
// order; it is served over HTTP with Range support, and 404 before. A
// later report that adds spans rebuilds it.
func TestPackBuiltFromProfile(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	layer := biggestLayer(t, f, 3)
	hs := httptest.NewServer(f.svc.Handler())
	defer hs.Close()
	src := indexsvc.HTTPSource{BaseURL: hs.URL}
	if _, err := src.Pack(ctx, layer.Digest); !errors.Is(err, streamfs.ErrNoPack) {
		t.Fatalf("pack before any profile: %v, want ErrNoPack", err)
	}
	repo := f.host + "/proj/repo/features"
	if err := src.AddProfile(ctx, repo, layer.Digest, []int{2, 0}); err != nil {
		t.Fatal(err)
	}
	checkPack(t, f, layer.Digest, waitPack(t, src, layer.Digest, 2), []int{2, 0})

	// A report adding a span rebuilds the pack with it at the end.
	if err := src.AddProfile(ctx, repo, layer.Digest, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	whole := waitPack(t, src, layer.Digest, 3)
	checkPack(t, f, layer.Digest, whole, []int{2, 0, 1})

	// Range requests get the part asked for.
	req, _ := http.NewRequest(http.MethodGet, hs.URL+"/index/v1/packs/"+layer.Digest.String(), nil)
	req.Header.Set("Range", "bytes=10-99")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, whole[10:100]) {
		t.Errorf("range 10-99: %s, %d bytes, equal %v", resp.Status, len(part), bytes.Equal(part, whole[10:100]))
	}
	if ct := resp.Header.Get("Content-Type"); ct != indexsvc.MediaTypePack {
		t.Errorf("Content-Type %q", ct)
	}
}

// TestWaitPacks: WaitPacks returns once every reported profile has its
// pack, including the rebuild a report made during a build asks for.
func TestWaitPacks(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	if err := f.svc.WaitPacks(ctx); err != nil {
		t.Fatalf("WaitPacks with no build: %v", err)
	}
	layer := biggestLayer(t, f, 3)
	repo := f.host + "/proj/repo/features"
	for _, spans := range [][]int{{2, 0}, {1, 2}} {
		if err := f.svc.AddProfile(ctx, repo, layer.Digest, spans); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := f.svc.WaitPacks(wctx); err != nil {
		t.Fatal(err)
	}
	rc, err := f.svc.Pack(ctx, layer.Digest)
	if err != nil {
		t.Fatalf("no pack after WaitPacks: %v", err)
	}
	pack, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkPack(t, f, layer.Digest, pack, []int{2, 0, 1})
}

// checkPack parses pack and compares each span with its range of the blob
// read straight from the registry.
func checkPack(t *testing.T, f *fixture, d digest.Digest, pack []byte, order []int) {
	t.Helper()
	x, _, err := f.svc.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(bytes.NewReader(pack))
	h, err := streamfs.ReadPackHeader(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Check(x); err != nil {
		t.Fatal(err)
	}
	repo, err := f.client.ParseRepository(f.host + "/proj/repo/features")
	if err != nil {
		t.Fatal(err)
	}
	blob, err := f.client.RepositoryBlob(context.Background(), repo, d, x.BlobSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Spans) != len(order) {
		t.Fatalf("pack spans %+v, want %v", h.Spans, order)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for i, ps := range h.Spans {
		if ps.Span != order[i] {
			t.Fatalf("pack spans %+v, want order %v", h.Spans, order)
		}
		p, err := x.PlanSpans(ps.Span, ps.Span+1)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, p.Length)
		if _, err := blob.ReadAtContext(context.Background(), want, p.Offset); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		got := make([]byte, ps.Size)
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatal(err)
		}
		span, err := x.Decode(p, want)
		if err != nil {
			t.Fatal(err)
		}
		frame, err := dec.DecodeAll(got, nil)
		if err != nil {
			t.Fatalf("span %d: the pack's frame: %v", ps.Span, err)
		}
		if !bytes.Equal(frame, span[0]) {
			t.Errorf("span %d: the pack's frame decodes to other bytes than the blob range [%d, +%d)", ps.Span, p.Offset, p.Length)
		}
	}
	if rest, _ := io.ReadAll(r); len(rest) != 0 {
		t.Errorf("%d bytes after the last span", len(rest))
	}
}
