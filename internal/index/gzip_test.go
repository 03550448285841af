package index

import (
	"archive/tar"
	"bytes"
	stdflate "compress/flate"
	stdgzip "compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	kflate "github.com/klauspost/compress/flate"
)

// TestDecodeGzipFastPath checks both ways a span is inflated: klauspost's
// inflate, with empty blocks in front of checkpoints that are mid-byte,
// and the resumable fork. Every span must take the fast path and come out
// as the tar it was built from either way, whatever bit its checkpoint is
// at and whatever mix of stored and Huffman blocks it holds.
func TestDecodeGzipFastPath(t *testing.T) {
	g := makeLayer(t, 21, 3<<20)
	for _, tc := range []struct {
		name  string
		tar   []byte
		level int
	}{
		{"gzip-6", g.tar, 6},
		{"gzip-1", g.tar, 1},
		{"gzip-9", g.tar, 9},
		// Stored blocks end on a byte: every checkpoint is at bit 0.
		{"gzip-store", g.tar, stdgzip.NoCompression},
		// Random files come out as stored blocks, mid-span and at
		// checkpoints mid-byte.
		{"stored-blocks", storedBlocksTar(t), 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := stdGzip(t, tc.tar, tc.level)
			x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			var bits [8]int
			for i := range x.Spans {
				s := &x.Spans[i]
				want := tc.tar[s.UOffset : s.UOffset+s.USize]
				in := blob[s.COffset : s.COffset+s.CSize]
				out := make([]byte, s.USize)
				if !decodeGzipFast(s, window(t, s), in, out, nil) {
					t.Fatalf("span %d (checkpoint at bit %d): the fast path failed", i, s.Bits)
				}
				if !bytes.Equal(out, want) {
					t.Fatalf("span %d (checkpoint at bit %d): the fast path inflated different bytes", i, s.Bits)
				}
				bits[s.Bits]++
				p, err := x.PlanSpans(i, i+1)
				if err != nil {
					t.Fatal(err)
				}
				clear(out)
				if err := x.inflateFork(p, window(t, s), blob[p.Offset:p.Offset+p.Length], out); err != nil {
					t.Fatalf("span %d: fork: %v", i, err)
				}
				if !bytes.Equal(out, want) {
					t.Fatalf("span %d: the fork inflated different bytes", i)
				}
			}
			t.Logf("%d spans, checkpoints by bit: %v", len(x.Spans), bits)
		})
	}
}

// TestAlignPrefixes decodes every alignment prefix followed by a final
// fixed block holding one literal, with klauspost's inflate and the
// standard library's: both must accept the empty blocks and output only
// the literal.
func TestAlignPrefixes(t *testing.T) {
	for r := 1; r < 8; r++ {
		p := alignPrefixes[r]
		if p.bits%8 != r {
			t.Fatalf("prefix %d: %d bits", r, p.bits)
		}
		w := bitWriter{b: append([]byte(nil), p.b...), n: p.bits}
		w.put(1, 1) // BFINAL
		w.put(1, 2) // fixed
		// 'A' (0x41): fixed code 0x30+0x41 = 01110001, sent MSB first,
		// which put (LSB first) writes as the reversed 10001110.
		w.put(0b10001110, 8)
		w.put(0, 7) // end of block
		for _, d := range []struct {
			name string
			r    io.Reader
		}{
			{"klauspost", kflate.NewReader(bytes.NewReader(w.b))},
			{"stdlib", stdflate.NewReader(bytes.NewReader(w.b))},
		} {
			got, err := io.ReadAll(d.r)
			if err != nil || string(got) != "A" {
				t.Errorf("prefix of %d bits, %s: %q, %v", p.bits, d.name, got, err)
			}
		}
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

// FuzzDecodeGzipFast builds an index of a gzip layer made from the fuzzer's
// bytes (text-like and random runs, so Huffman and stored blocks mix, at
// the fuzzer's level) and decodes every span with the fast path, which must
// either give the tar's bytes or decline (never different bytes).
func FuzzDecodeGzipFast(f *testing.F) {
	f.Add([]byte("seed"), uint8(6), uint16(3))
	f.Add([]byte{0, 1, 2, 3, 250, 251}, uint8(1), uint16(900))
	f.Add([]byte("stored"), uint8(0), uint16(7))
	f.Fuzz(func(t *testing.T, seed []byte, level uint8, mix uint16) {
		var h uint64 = 14695981039346656037
		for _, b := range seed {
			h = (h ^ uint64(b)) * 1099511628211
		}
		r := rand.New(rand.NewPCG(h, uint64(mix)))
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for i := range 6 + int(mix%5) {
			data := genContent(r, 20<<10+r.IntN(80<<10))
			if r.IntN(3) == 0 {
				for j := range data {
					data[j] = byte(r.Uint32())
				}
			}
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
			tw.Write(data)
		}
		tw.Close()
		tarb := buf.Bytes()
		blob := stdGzip(t, tarb, int(level%10))
		x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: testSpan})
		if err != nil {
			t.Fatal(err)
		}
		for i := range x.Spans {
			s := &x.Spans[i]
			out := make([]byte, s.USize)
			if decodeGzipFast(s, window(t, s), blob[s.COffset:s.COffset+s.CSize], out, nil) &&
				!bytes.Equal(out, tarb[s.UOffset:s.UOffset+s.USize]) {
				t.Fatalf("span %d (checkpoint at bit %d): wrong bytes", i, s.Bits)
			}
		}
	})
}

// window returns span s's decoded stored window.
func window(t testing.TB, s *Span) []byte {
	t.Helper()
	w, err := decodeWindow(s.Window)
	if err != nil {
		t.Fatal(err)
	}
	return w
}
