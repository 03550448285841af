package index

import (
	"bytes"
	"errors"
	"testing"
)

// TestDecodeNext decodes every span of a layer on its own, each with the
// output before it as history (the first with its window), and gets the
// layer's tar stream, whole or detached index alike; short history and
// corrupt bytes are refused.
func TestDecodeNext(t *testing.T) {
	g := makeLayer(t, 5, 1<<20)
	for _, name := range []string{"gzip-6", "multi-member", "tar", "zstd-frames"} {
		t.Run(name, func(t *testing.T) {
			blob := compressors[name](t, g.tar)
			x, err := Build(bytes.NewReader(blob), "m", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			d, _ := x.Detach()
			for _, y := range []*Index{x, d} {
				var out []byte
				for n := range y.Spans {
					p, err := y.PlanSpans(n, n+1)
					if err != nil {
						t.Fatal(err)
					}
					got, err := y.DecodeNext(n, out, blob[p.Offset:p.Offset+p.Length], nil)
					if err != nil {
						t.Fatalf("span %d (detached %v): %v", n, y.Detached, err)
					}
					out = append(out, got...)
				}
				if !bytes.Equal(out, g.tar) {
					t.Fatalf("detached %v: the spans decoded one by one are not the tar stream", y.Detached)
				}
			}
			if name == "tar" || name == "zstd-frames" {
				return
			}
			// A span with history needs WindowSize bytes of it.
			n, _, fetched := historyPlan(t, x, blob, 1)
			if _, err := x.DecodeNext(n, make([]byte, WindowSize-1), fetched, nil); err == nil {
				t.Error("a span decoded with too little history")
			}
			fetched[len(fetched)/2] ^= 1
			if _, err := x.DecodeNext(n, make([]byte, WindowSize), fetched, nil); !errors.Is(err, ErrCorrupt) {
				t.Errorf("corrupt span bytes: %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestDecodeAfter decodes a layer in runs of three spans, each run with
// the output before it as history (the first from the stream's start), and
// gets the layer's tar stream from a detached index without one window.
func TestDecodeAfter(t *testing.T) {
	g := makeLayer(t, 5, 1<<20)
	for _, name := range []string{"gzip-6", "multi-member", "tar", "zstd-frames"} {
		t.Run(name, func(t *testing.T) {
			blob := compressors[name](t, g.tar)
			x, err := Build(bytes.NewReader(blob), "m", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			d, _ := x.Detach()
			var out []byte
			for first := 0; first < len(d.Spans); first += 3 {
				p, err := d.PlanSpans(first, min(first+3, len(d.Spans)))
				if err != nil {
					t.Fatal(err)
				}
				spans, err := d.DecodeAfter(p, out, blob[p.Offset:p.Offset+p.Length], make([]byte, 0, d.DecodeSize(p)))
				if err != nil {
					t.Fatalf("spans [%d, %d): %v", p.First, p.End, err)
				}
				for _, b := range spans {
					out = append(out, b...)
				}
			}
			if !bytes.Equal(out, g.tar) {
				t.Fatal("the runs decoded after each other are not the tar stream")
			}
			if name == "tar" || name == "zstd-frames" {
				return
			}
			// The last run with history: exactly WindowSize bytes of it
			// work; fewer are refused (not as corrupt); damaged bytes are
			// refused before anything is decoded.
			n, p, fetched := historyPlan(t, d, blob, 2)
			start := d.Spans[n].UOffset
			if _, err := d.DecodeAfter(p, g.tar[start-WindowSize:start], fetched, nil); err != nil {
				t.Errorf("history of WindowSize bytes: %v", err)
			}
			if _, err := d.DecodeAfter(p, g.tar[start-WindowSize+1:start], fetched, nil); err == nil || errors.Is(err, ErrCorrupt) {
				t.Errorf("history one byte short: %v, want an error that is not ErrCorrupt", err)
			}
			fetched[len(fetched)/2] ^= 1
			if _, err := d.DecodeAfter(p, g.tar[:start], fetched, nil); !errors.Is(err, ErrCorrupt) {
				t.Errorf("corrupt span bytes: %v, want ErrCorrupt", err)
			}
		})
	}
}

// historyPlan returns the last run of k spans of x whose first span takes
// history (it does not start at a gzip member header), its plan, and a
// copy of its bytes from blob.
func historyPlan(t *testing.T, x *Index, blob []byte, k int) (int, Plan, []byte) {
	t.Helper()
	n := len(x.Spans) - k
	for n > 0 && x.Spans[n].Header {
		n--
	}
	p, err := x.PlanSpans(n, n+k)
	if err != nil {
		t.Fatal(err)
	}
	return n, p, append([]byte(nil), blob[p.Offset:p.Offset+p.Length]...)
}
