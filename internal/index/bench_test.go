package index

import (
	"bytes"
	stdgzip "compress/gzip"
	"io"
	"sync"
	"testing"
)

// benchData is a generated ~24 MB layer and its gzip -6 form. For a real
// layer and a comparison with gzip -dc, run bench/index-speed.sh.
var benchData = sync.OnceValues(func() ([]byte, []byte) {
	g := makeLayer(&testing.T{}, 9, 4<<20)
	var tarb []byte
	for range 4 {
		tarb = append(tarb, g.tar[:len(g.tar)-1024]...) // drop the end-of-archive blocks
	}
	tarb = append(tarb, make([]byte, 1024)...)
	var out bytes.Buffer
	w, _ := stdgzip.NewWriterLevel(&out, 6)
	w.Write(tarb)
	w.Close()
	return tarb, out.Bytes()
})

// BenchmarkBuildGzip measures Build; MB/s is of uncompressed tar.
func BenchmarkBuildGzip(b *testing.B) {
	tarb, gz := benchData()
	b.SetBytes(int64(len(tarb)))
	for b.Loop() {
		if _, err := Build(bytes.NewReader(gz), "", Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGunzipStdlib is the baseline: compress/gzip to io.Discard.
func BenchmarkGunzipStdlib(b *testing.B) {
	tarb, gz := benchData()
	b.SetBytes(int64(len(tarb)))
	for b.Loop() {
		zr, _ := stdgzip.NewReader(bytes.NewReader(gz))
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeSpan is the cost of serving a cold read: decoding one
// DefaultSpanSize span from its checkpoint.
func BenchmarkDecodeSpan(b *testing.B) {
	_, gz := benchData()
	x, err := Build(bytes.NewReader(gz), "", Options{})
	if err != nil {
		b.Fatal(err)
	}
	p, err := x.PlanSpans(len(x.Spans)/2, len(x.Spans)/2+1)
	if err != nil {
		b.Fatal(err)
	}
	data := gz[p.Offset : p.Offset+p.Length]
	b.SetBytes(x.Spans[p.First].USize)
	for b.Loop() {
		if _, err := x.Decode(p, data); err != nil {
			b.Fatal(err)
		}
	}
}
