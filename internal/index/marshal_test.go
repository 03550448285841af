package index

import (
	"bytes"
	"reflect"
	"testing"
)

func TestMarshalRoundTripDeterministic(t *testing.T) {
	g := makeLayer(t, 3, 400<<10)
	for _, name := range []string{"tar", "gzip-6", "multi-member", "zstd-frames"} {
		t.Run(name, func(t *testing.T) {
			blob := compressors[name](t, g.tar)
			x1, err := Build(bytes.NewReader(blob), "m", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			x2, err := Build(bytes.NewReader(blob), "m", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			b1, err := x1.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			b2, _ := x2.MarshalBinary()
			if !bytes.Equal(b1, b2) {
				t.Fatal("indexing the same layer twice gave different bytes")
			}
			y, err := Unmarshal(b1)
			if err != nil {
				t.Fatal(err)
			}
			b3, err := y.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b1, b3) {
				t.Fatal("re-marshalled index differs")
			}
			for i := range x1.Files {
				a, b := x1.Files[i], y.Files[i]
				if !a.ModTime.Equal(b.ModTime) {
					t.Fatalf("%s: mtime %v != %v", a.Name, a.ModTime, b.ModTime)
				}
				a.ModTime = b.ModTime
				if !reflect.DeepEqual(a, b) {
					t.Fatalf("file %d: %+v != %+v", i, a, b)
				}
			}
			if !reflect.DeepEqual(x1.Spans, y.Spans) {
				t.Fatal("spans differ after round trip")
			}
			checkIndex(t, y, g, blob)
			t.Logf("%s: index %d bytes for a %d-byte blob (%d spans, %d files)", name, len(b1), len(blob), len(y.Spans), len(y.Files))
		})
	}
}

func TestSmallSingleFrameZstdIsStreamable(t *testing.T) {
	g := makeLayer(t, 4, 10<<10)
	blob := zstdFrames(t, g.tar, len(g.tar))
	x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Spans) != 1 {
		t.Fatalf("%d spans, want 1", len(x.Spans))
	}
	checkIndex(t, x, g, blob)
}
