package index

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// TestDetach checks an index whose windows are kept apart: it round-trips
// canonically, is smaller, and decodes every plan (one span or several)
// to the same bytes as the whole index when given the first span's
// window, and refuses a missing or wrong window.
func TestDetach(t *testing.T) {
	g := makeLayer(t, 5, 3<<20)
	for _, name := range []string{"gzip-6", "multi-member"} {
		t.Run(name, func(t *testing.T) {
			blob := compressors[name](t, g.tar)
			x, err := Build(bytes.NewReader(blob), "m", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			full, _ := x.MarshalBinary()
			d, windows := x.Detach()
			if again, _ := x.MarshalBinary(); !bytes.Equal(again, full) {
				t.Fatal("Detach changed the index it was called on")
			}
			raw, err := d.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			y, err := Unmarshal(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !y.Detached || !reflect.DeepEqual(y.Spans, d.Spans) {
				t.Fatal("the detached index does not round-trip")
			}
			if again, _ := y.MarshalBinary(); !bytes.Equal(again, raw) {
				t.Fatal("the detached index is not canonical")
			}
			if dd, w := y.Detach(); w != nil || !reflect.DeepEqual(dd.Spans, y.Spans) {
				t.Fatal("detaching twice changed the index")
			}
			t.Logf("%d spans: index %d bytes, detached %d", len(x.Spans), len(full), len(raw))
			if len(raw) >= len(full) {
				t.Fatalf("detached index %d bytes, not smaller than %d", len(raw), len(full))
			}
			withWindow := 0
			for first := range y.Spans {
				for _, end := range []int{first + 1, min(first+3, len(y.Spans))} {
					p, err := y.PlanSpans(first, end)
					if err != nil {
						t.Fatal(err)
					}
					fetched := blob[p.Offset : p.Offset+p.Length]
					want, err := x.Decode(p, fetched)
					if err != nil {
						t.Fatal(err)
					}
					if !y.NeedsWindow(first) {
						if windows[first] != nil {
							t.Fatalf("span %d has a window but needs none", first)
						}
						got, err := y.DecodeWindow(p, nil, fetched, nil)
						if err != nil || !reflect.DeepEqual(got, want) {
							t.Fatalf("spans [%d, %d) without a window: %v", first, end, err)
						}
						continue
					}
					withWindow++
					got, err := y.DecodeWindow(p, windows[first], fetched, nil)
					if err != nil {
						t.Fatalf("spans [%d, %d): %v", first, end, err)
					}
					if !reflect.DeepEqual(got, want) {
						t.Fatalf("spans [%d, %d) decode differently detached", first, end)
					}
					if _, err := y.Decode(p, fetched); err == nil {
						t.Fatalf("span %d decoded without its window", first)
					}
					var other []byte
					for _, w := range windows {
						if w != nil && !bytes.Equal(w, windows[first]) {
							other = w
						}
					}
					if _, err := y.DecodeWindow(p, other, fetched, nil); !errors.Is(err, ErrCorrupt) {
						t.Fatalf("span %d with another span's window: %v, want ErrCorrupt", first, err)
					}
				}
			}
			if withWindow == 0 {
				t.Fatal("no span needed a window")
			}
		})
	}
}
