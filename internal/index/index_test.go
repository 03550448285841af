package index

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"testing"

	kflate "github.com/klauspost/compress/flate"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

const testSpan = MinSpanSize

// compressors produce blobs of every encoding the index must handle.
var compressors = map[string]func(t testing.TB, tar []byte) []byte{
	"tar":    func(t testing.TB, b []byte) []byte { return b },
	"gzip-1": func(t testing.TB, b []byte) []byte { return stdGzip(t, b, 1) },
	"gzip-6": func(t testing.TB, b []byte) []byte { return stdGzip(t, b, 6) },
	"gzip-9": func(t testing.TB, b []byte) []byte { return stdGzip(t, b, 9) },
	"gzip-store": func(t testing.TB, b []byte) []byte {
		return stdGzip(t, b, stdgzip.NoCompression)
	},
	"gzip-huffman": func(t testing.TB, b []byte) []byte {
		return stdGzip(t, b, stdgzip.HuffmanOnly)
	},
	"klauspost-gzip": func(t testing.TB, b []byte) []byte {
		var out bytes.Buffer
		w, _ := kgzip.NewWriterLevel(&out, kgzip.DefaultCompression)
		w.Write(b)
		w.Close()
		return out.Bytes()
	},
	// pgzip and pigz --independent style: one member per 100 KiB block.
	"multi-member": func(t testing.TB, b []byte) []byte {
		var out bytes.Buffer
		for len(b) > 0 {
			n := min(len(b), 100<<10)
			out.Write(stdGzip(t, b[:n], 6))
			b = b[n:]
		}
		return out.Bytes()
	},
	// pgzip's single-member output: blocks ended by sync flushes, which
	// leave empty stored blocks in the stream.
	"sync-flush": func(t testing.TB, b []byte) []byte {
		var out bytes.Buffer
		w, _ := kgzip.NewWriterLevel(&out, 5)
		for len(b) > 0 {
			n := min(len(b), 50<<10)
			w.Write(b[:n])
			w.Flush()
			b = b[n:]
		}
		w.Close()
		return out.Bytes()
	},
	"gzip-binary": func(t testing.TB, b []byte) []byte {
		if _, err := exec.LookPath("gzip"); err != nil {
			t.Skip("no gzip binary")
		}
		cmd := exec.Command("gzip", "-6", "-c", "-n")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return out
	},
	"zstd-frames": func(t testing.TB, b []byte) []byte { return zstdFrames(t, b, 48<<10) },
	// Skippable frames (zstd:chunked keeps its manifest in one) carry no
	// data but belong to the blob.
	"zstd-skippable": func(t testing.TB, b []byte) []byte {
		skip := []byte{0x5e, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'}
		half := len(b) / 2
		out := append([]byte{}, skip...)
		out = append(out, zstdFrames(t, b[:half], 30<<10)...)
		out = append(out, skip...)
		out = append(out, zstdFrames(t, b[half:], 100<<10)...)
		return append(out, skip...)
	},
	"zstd-single": func(t testing.TB, b []byte) []byte { return zstdFrames(t, b, len(b)) },
}

func stdGzip(t testing.TB, b []byte, level int) []byte {
	var out bytes.Buffer
	w, err := stdgzip.NewWriterLevel(&out, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return out.Bytes()
}

// zstdFrames compresses b as independent frames of frame bytes each.
func zstdFrames(t testing.TB, b []byte, frame int) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var out []byte
	for len(b) > 0 {
		n := min(len(b), frame)
		out = enc.EncodeAll(b[:n], out)
		b = b[n:]
	}
	return out
}

var _ = kflate.BestSpeed

func fetcher(blob []byte, calls *int) func(off, n int64) ([]byte, error) {
	return func(off, n int64) ([]byte, error) {
		*calls++
		if off < 0 || off+n > int64(len(blob)) {
			return nil, fmt.Errorf("fetch [%d, +%d) outside %d-byte blob", off, n, len(blob))
		}
		return blob[off : off+n], nil
	}
}

// checkIndex verifies x against the generated layer: the file table, and
// that every file and random ranges read back through spans are right.
func checkIndex(t *testing.T, x *Index, g *genLayer, blob []byte) {
	t.Helper()
	if x.BlobSize != int64(len(blob)) {
		t.Fatalf("BlobSize = %d, want %d", x.BlobSize, len(blob))
	}
	if want := fmt.Sprintf("sha256:%x", sha256.Sum256(blob)); string(x.BlobDigest) != want {
		t.Fatalf("BlobDigest = %s, want %s", x.BlobDigest, want)
	}
	if x.UncompressedSize != int64(len(g.tar)) {
		t.Fatalf("UncompressedSize = %d, want %d", x.UncompressedSize, len(g.tar))
	}
	if want := fmt.Sprintf("sha256:%x", sha256.Sum256(g.tar)); string(x.DiffID) != want {
		t.Fatalf("DiffID = %s, want %s", x.DiffID, want)
	}
	if len(x.Files) != len(g.names) {
		t.Fatalf("%d files, want %d", len(x.Files), len(g.names))
	}
	for i, f := range x.Files {
		if f.Name != g.names[i] {
			t.Fatalf("file %d = %q, want %q", i, f.Name, g.names[i])
		}
	}
	if !x.Streamable() {
		t.Fatalf("not streamable: %s", x.NotStreamable)
	}
	calls := 0
	fetch := fetcher(blob, &calls)
	for _, f := range x.Files {
		if !f.IsRegular() {
			continue
		}
		want := g.content[f.Name]
		if f.Digest != sha256.Sum256(want) {
			t.Fatalf("%s: digest mismatch", f.Name)
		}
		if !bytes.Equal(g.tar[f.Offset:f.Offset+f.Size], want) {
			t.Fatalf("%s: offset %d does not hold the content", f.Name, f.Offset)
		}
		got := make([]byte, f.Size)
		before := calls
		if err := x.ReadAt(got, f.Offset, fetch); err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: content read through spans differs", f.Name)
		}
		if f.Size > 0 && calls != before+1 {
			t.Fatalf("%s: %d fetches, want 1", f.Name, calls-before)
		}
	}
	r := rand.New(rand.NewPCG(uint64(len(blob)), 1))
	for range 20 {
		off := r.Int64N(x.UncompressedSize)
		n := 1 + r.Int64N(min(x.UncompressedSize-off, 3*x.SpanSize))
		got := make([]byte, n)
		if err := x.ReadAt(got, off, fetch); err != nil {
			t.Fatalf("range [%d, +%d): %v", off, n, err)
		}
		if !bytes.Equal(got, g.tar[off:off+n]) {
			t.Fatalf("range [%d, +%d) differs", off, n)
		}
	}
	// Every span on its own, as a span cache would fetch them.
	for i := range x.Spans {
		p, err := x.PlanSpans(i, i+1)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := fetch(p.Offset, p.Length)
		out, err := x.Decode(p, data)
		if err != nil {
			t.Fatalf("span %d: %v", i, err)
		}
		s := x.Spans[i]
		if !bytes.Equal(out[0], g.tar[s.UOffset:s.UOffset+s.USize]) {
			t.Fatalf("span %d differs", i)
		}
		if sha256.Sum256(out[0]) != s.USum {
			t.Fatalf("span %d: USum is not the sha256 of its uncompressed bytes", i)
		}
	}
}

func TestBuildKinds(t *testing.T) {
	g := makeLayer(t, 1, 400<<10)
	for name, compress := range compressors {
		t.Run(name, func(t *testing.T) {
			blob := compress(t, g.tar)
			x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: testSpan})
			if err != nil {
				t.Fatal(err)
			}
			if name == "zstd-single" {
				// Under maxSingleFrame: one span, however small SpanSize.
				if len(g.tar) > maxSingleFrame || len(x.Spans) != 1 {
					t.Fatalf("a %d-byte single-frame zstd layer has %d spans, want 1", len(g.tar), len(x.Spans))
				}
				big := makeLayer(t, 2, maxSingleFrame+1<<20)
				y, err := Build(bytes.NewReader(compress(t, big.tar)), "", Options{SpanSize: testSpan})
				if err != nil {
					t.Fatal(err)
				}
				if y.Streamable() {
					t.Fatalf("a %d-byte single-frame zstd layer is streamable", len(big.tar))
				}
				if _, err := y.PlanRange(0, 1); !errors.Is(err, ErrNotStreamable) {
					t.Fatalf("PlanRange error = %v, want ErrNotStreamable", err)
				}
				return
			}
			if len(x.Spans) < 4 {
				t.Fatalf("only %d spans", len(x.Spans))
			}
			checkIndex(t, x, g, blob)
			t.Logf("%s: blob %d bytes, %d spans", name, len(blob), len(x.Spans))
		})
	}
}

func TestCorruptSpanRejected(t *testing.T) {
	g := makeLayer(t, 2, 300<<10)
	for _, name := range []string{"gzip-6", "tar", "zstd-frames"} {
		blob := compressors[name](t, g.tar)
		x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: testSpan})
		if err != nil {
			t.Fatal(err)
		}
		p, err := x.PlanSpans(1, 2)
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Clone(blob[p.Offset : p.Offset+p.Length])
		data[len(data)/2] ^= 1
		if _, err := x.Decode(p, data); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: Decode of a flipped byte: %v, want ErrCorrupt", name, err)
		}
	}
}

// TestStraddlingFileIsOneRequest is the laziness case of the design: a
// 1 MB file that crosses a default-size checkpoint is served by one Range
// request covering two spans.
func TestStraddlingFileIsOneRequest(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	pad := genContent(r, DefaultSpanSize-300<<10)
	one := genContent(r, 1<<20)
	tw.WriteHeader(&tar.Header{Name: "pad", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(pad))})
	tw.Write(pad)
	tw.WriteHeader(&tar.Header{Name: "one", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(one))})
	tw.Write(one)
	tail := genContent(r, DefaultSpanSize/2)
	tw.WriteHeader(&tar.Header{Name: "tail", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(tail))})
	tw.Write(tail)
	tw.Close()
	blob := stdGzip(t, tb.Bytes(), 6)
	x, err := Build(bytes.NewReader(blob), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := x.Files[1]
	p, err := x.PlanRange(f.Offset, f.Size)
	if err != nil {
		t.Fatal(err)
	}
	if p.End-p.First != 2 {
		t.Fatalf("file covers spans [%d, %d), want two", p.First, p.End)
	}
	if q, err := x.PlanFile(&f, 0, 1<<30); err != nil || q != p {
		t.Fatalf("PlanFile = %+v, %v; want %+v", q, err, p)
	}
	if first, end, err := x.SpanRange(f.Offset, f.Size); err != nil || first != p.First || end != p.End {
		t.Fatalf("SpanRange = %d, %d, %v", first, end, err)
	}
	if _, err := x.PlanFile(&f, f.Size, 1); err == nil {
		t.Fatal("PlanFile past the end succeeded")
	}
	calls := 0
	got := make([]byte, f.Size)
	if err := x.ReadAt(got, f.Offset, fetcher(blob, &calls)); err != nil || calls != 1 || !bytes.Equal(got, one) {
		t.Fatalf("read: %v, %d fetches, equal %v", err, calls, bytes.Equal(got, one))
	}
	t.Logf("1 MiB file: one request of %d bytes from a %d-byte layer", p.Length, len(blob))
}
