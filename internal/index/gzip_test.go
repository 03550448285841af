package index

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestDecodeGzipFastPath checks both ways a span is inflated: klauspost's
// inflate for checkpoints at bit 0 of a byte, and the resumable fork for
// the rest. Each span must come out as the tar it was built from either
// way; spans whose checkpoint is mid-byte must never take the fast path.
func TestDecodeGzipFastPath(t *testing.T) {
	g := makeLayer(t, 21, 3<<20)
	for _, tc := range []struct {
		name        string
		tar         []byte
		level       int
		wantFastMin float64 // share of spans the fast path must serve
		wantFork    bool    // some span must fall back
	}{
		// Checkpoints at bit 0 only are on the fast path.
		{"gzip-6", g.tar, 6, 0, true},
		// Stored blocks end on a byte: every checkpoint is at bit 0.
		{"gzip-store", g.tar, stdgzip.NoCompression, 0.9, false},
		// Random files come out as stored blocks, mid-span.
		{"stored-blocks", storedBlocksTar(t), 6, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := stdGzip(t, tc.tar, tc.level)
			x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			fast := 0
			for i := range x.Spans {
				s := &x.Spans[i]
				want := tc.tar[s.UOffset : s.UOffset+s.USize]
				in := blob[s.COffset : s.COffset+s.CSize]
				out := make([]byte, s.USize)
				if decodeGzipFast(s, in, out, nil) {
					if s.Bits != 0 {
						t.Fatalf("span %d: checkpoint at bit %d took the fast path", i, s.Bits)
					}
					fast++
					if !bytes.Equal(out, want) {
						t.Fatalf("span %d: the fast path inflated different bytes", i)
					}
				}
				p, err := x.PlanSpans(i, i+1)
				if err != nil {
					t.Fatal(err)
				}
				if err := x.inflateFork(p, blob[p.Offset:p.Offset+p.Length], out); err != nil {
					t.Fatalf("span %d: fork: %v", i, err)
				}
				if !bytes.Equal(out, want) {
					t.Fatalf("span %d: the fork inflated different bytes", i)
				}
			}
			t.Logf("%d of %d spans on the fast path", fast, len(x.Spans))
			if share := float64(fast) / float64(len(x.Spans)); share < tc.wantFastMin {
				t.Errorf("fast path served %d of %d spans, want at least %.0f%%", fast, len(x.Spans), 100*tc.wantFastMin)
			}
			if tc.wantFork && fast == len(x.Spans) {
				t.Errorf("no span fell back to the fork")
			}
		})
	}
}

// storedBlocksTar is a tar of text files and random files, in turns: gzip
// stores the random ones uncompressed.
func storedBlocksTar(t *testing.T) []byte {
	r := rand.New(rand.NewPCG(5, 6))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range 40 {
		data := genContent(r, 50<<10)
		if i%2 == 1 {
			data = make([]byte, 100<<10+r.IntN(1000))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	return buf.Bytes()
}
