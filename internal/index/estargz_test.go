package index

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

func makeStargz(t *testing.T, tarb []byte, zstdChunked bool) ([]byte, digest.Digest) {
	t.Helper()
	var buf bytes.Buffer
	var w *estargz.Writer
	if zstdChunked {
		w = estargz.NewWriterWithCompressor(&buf, &zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault})
	} else {
		w = estargz.NewWriter(&buf)
	}
	w.ChunkSize = 64 << 10
	if err := w.AppendTar(bytes.NewReader(tarb)); err != nil {
		t.Fatal(err)
	}
	tocDigest, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), tocDigest
}

func TestFromTOC(t *testing.T) {
	g := makeLayer(t, 5, 500<<10)
	for _, zc := range []bool{false, true} {
		t.Run(fmt.Sprintf("zstdchunked=%v", zc), func(t *testing.T) {
			blob, tocDigest := makeStargz(t, g.tar, zc)
			bd := digest.FromBytes(blob)
			x, err := FromTOC(bytes.NewReader(blob), int64(len(blob)), bd, "", TOCOptions{TOCDigest: tocDigest})
			if err != nil {
				t.Fatal(err)
			}
			want := KindEStargz
			if zc {
				want = KindZstdChunked
			}
			if x.Kind != want || !x.Streamable() {
				t.Fatalf("kind %s streamable %v (%s)", x.Kind, x.Streamable(), x.NotStreamable)
			}
			names := make(map[string]bool)
			calls := 0
			fetch := fetcher(blob, &calls)
			for _, f := range x.Files {
				names[f.Name] = true
				if !f.IsRegular() {
					continue
				}
				c, ok := g.content[f.Name]
				if !ok {
					continue // landmark files the writer may add
				}
				if f.Digest != sha256.Sum256(c) || f.Size != int64(len(c)) {
					t.Fatalf("%s: wrong digest or size", f.Name)
				}
				got := make([]byte, f.Size)
				if err := x.ReadAt(got, f.Offset, fetch); err != nil {
					t.Fatalf("%s: %v", f.Name, err)
				}
				if !bytes.Equal(got, c) {
					t.Fatalf("%s: content differs", f.Name)
				}
				// A random inner range too.
				if f.Size > 10 {
					r := rand.New(rand.NewPCG(uint64(f.Size), 3))
					off := r.Int64N(f.Size - 1)
					n := 1 + r.Int64N(f.Size-off)
					part := make([]byte, n)
					if err := x.ReadAt(part, f.Offset+off, fetch); err != nil || !bytes.Equal(part, c[off:off+n]) {
						t.Fatalf("%s: range [%d, +%d): %v", f.Name, off, n, err)
					}
				}
			}
			for _, n := range g.names {
				if !names[n] && n != "." {
					t.Fatalf("%s missing from the TOC index", n)
				}
			}
			// A corrupted chunk is caught: flip a bit early in the largest
			// span, inside its first member's compressed data.
			big := 0
			for i, s := range x.Spans {
				if s.USize > x.Spans[big].USize {
					big = i
				}
			}
			p, _ := x.PlanSpans(big, big+1)
			data := bytes.Clone(blob[p.Offset : p.Offset+p.Length])
			data[40] ^= 0x40
			if _, err := x.Decode(p, data); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("corrupt chunk: %v", err)
			}
			if _, err := x.MarshalBinary(); err == nil {
				t.Fatal("a TOC index was marshalled")
			}
			if _, err := FromTOC(bytes.NewReader(blob), int64(len(blob)), bd, "", TOCOptions{TOCDigest: digest.FromString("other")}); err == nil {
				t.Fatal("wrong TOC digest accepted")
			}
			// The same blob also indexes with Build (it is valid gzip/zstd).
			if !zc {
				y, err := Build(bytes.NewReader(blob), "", Options{SpanSize: testSpan})
				if err != nil {
					t.Fatal(err)
				}
				if !y.Streamable() {
					t.Fatal(y.NotStreamable)
				}
			}
		})
	}
	if _, err := FromTOC(bytes.NewReader(stdGzip(t, g.tar, 6)), 1000, digest.FromString("x"), "", TOCOptions{}); !errors.Is(err, ErrNoTOC) {
		t.Fatalf("plain gzip: %v, want ErrNoTOC", err)
	}
}
