package flate

import (
	"bytes"
	stdflate "compress/flate"
	"io"
	"math/rand/v2"
	"testing"
)

func testData(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := []string{"alpha ", "beta ", "gamma ", "delta\n", "0123456789"}
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(5) == 0 {
			for range r.IntN(300) {
				b.WriteByte(byte(r.Uint32()))
			}
			continue
		}
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

type boundary struct {
	bit, out int64
	window   []byte
	final    bool
}

// TestResumeAtEveryBoundary inflates a stream, records every block
// boundary, then resumes from each one with its window and checks the
// rest of the output is exact, for every compression level.
func TestResumeAtEveryBoundary(t *testing.T) {
	data := testData(300 << 10)
	for _, level := range []int{stdflate.NoCompression, stdflate.BestSpeed, 6, stdflate.BestCompression, stdflate.HuffmanOnly} {
		var comp bytes.Buffer
		w, _ := stdflate.NewWriter(&comp, level)
		for i := 0; i < len(data); i += 70 << 10 {
			w.Write(data[i:min(i+70<<10, len(data))])
			w.Flush() // sync flushes leave byte-aligned empty stored blocks
		}
		w.Close()
		c := comp.Bytes()

		in := NewInput(bytes.NewReader(c), 4096, 0)
		f := NewReader(in)
		var bs []boundary
		f.OnBlock = func(bit, out int64, final bool) {
			bs = append(bs, boundary{bit, out, f.Window(nil), final})
		}
		got, err := io.ReadAll(f)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("level %d: inflate: %v", level, err)
		}
		if len(bs) < 3 {
			t.Fatalf("level %d: only %d boundaries", level, len(bs))
		}
		for _, b := range bs {
			if int64(len(b.window)) != min(b.out, 32<<10) {
				t.Fatalf("level %d: window of %d bytes at output %d", level, len(b.window), b.out)
			}
			if !bytes.Equal(b.window, data[b.out-int64(len(b.window)):b.out]) {
				t.Fatalf("level %d: wrong window at %d", level, b.out)
			}
			in := NewInputBytes(c[b.bit/8:], b.bit/8)
			r, err := Resume(in, uint(b.bit%8), b.window)
			if err != nil {
				t.Fatal(err)
			}
			// Check the next 100 KiB: far enough to cross block and flush
			// boundaries, short enough to keep -race runs quick.
			want := data[b.out:min(b.out+100<<10, int64(len(data)))]
			rest := make([]byte, len(want))
			_, err = io.ReadFull(r, rest)
			if err != nil || !bytes.Equal(rest, want) {
				t.Fatalf("level %d: resume at bit %d (output %d): %v", level, b.bit, b.out, err)
			}
		}
		// After the final block, the input stops exactly at the stream end.
		if in.Offset() != int64(len(c)) {
			t.Fatalf("level %d: input at %d after EOF, stream is %d bytes", level, in.Offset(), len(c))
		}
	}
}

func TestHookSeesEveryByteOnce(t *testing.T) {
	data := testData(300 << 10)
	var comp bytes.Buffer
	w, _ := stdflate.NewWriter(&comp, 6)
	w.Write(data)
	w.Close()
	var seen bytes.Buffer
	in := NewInput(bytes.NewReader(comp.Bytes()), 1000, 0)
	in.Hook = func(p []byte) { seen.Write(p) }
	if _, err := io.ReadAll(NewReader(in)); err != nil {
		t.Fatal(err)
	}
	in.FlushHook()
	if !bytes.Equal(seen.Bytes(), comp.Bytes()) {
		t.Fatalf("hook saw %d bytes, stream has %d", seen.Len(), comp.Len())
	}
}
