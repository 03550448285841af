package streamfs_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

func packSeed(t testing.TB, spans ...streamfs.PackSpan) []byte {
	h := &streamfs.PackHeader{Layer: digest.FromString("layer"), Spans: spans}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzReadPackHeader: any input either fails with ErrBadPack or parses to
// a header that marshals back to exactly the bytes it was read from.
func FuzzReadPackHeader(f *testing.F) {
	f.Add(packSeed(f))
	f.Add(packSeed(f, streamfs.PackSpan{Span: 3, Size: 100}, streamfs.PackSpan{Span: 0, Size: 1 << 20}))
	f.Add(append(packSeed(f, streamfs.PackSpan{Span: 7, Size: 5}), "data!"...))
	full := packSeed(f, streamfs.PackSpan{Span: 1, Size: 2}, streamfs.PackSpan{Span: 300, Size: 70000})
	f.Add(full[:len(full)-1])
	f.Add([]byte("RIFFLEPK\x03"))
	f.Add([]byte("not a pack at all"))
	f.Add(append(packSeed(f)[:41], 0xff, 0xff, 0xff, 0xff, 0x0f))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		h, err := streamfs.ReadPackHeader(r)
		if err != nil {
			if !errors.Is(err, streamfs.ErrBadPack) {
				t.Fatalf("error %v does not wrap ErrBadPack", err)
			}
			return
		}
		again, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed header does not marshal: %v", err)
		}
		used := len(b) - r.Buffered()
		if !bytes.Equal(again, b[:used]) {
			// Uvarints have one canonical form only when minimal; a
			// non-minimal encoding may parse, but must mean the same.
			h2, err := streamfs.ReadPackHeader(bufio.NewReader(bytes.NewReader(again)))
			if err != nil || h2.Layer != h.Layer || !slices.Equal(h2.Spans, h.Spans) {
				t.Fatalf("round trip changed the header: %+v then %+v (%v)", h, h2, err)
			}
		}
	})
}

// TestPackHeaderRoundTrip checks the header fields survive encoding.
func TestPackHeaderRoundTrip(t *testing.T) {
	want := []streamfs.PackSpan{{Span: 9, Size: 4096}, {Span: 2, Size: 1}, {Span: 100000, Size: 3 << 20}}
	b := packSeed(t, want...)
	h, err := streamfs.ReadPackHeader(bufio.NewReader(bytes.NewReader(append(b, "tail"...))))
	if err != nil {
		t.Fatal(err)
	}
	if h.Layer != digest.FromString("layer") || !slices.Equal(h.Spans, want) || h.DataSize() != 4096+1+3<<20 {
		t.Fatalf("got %+v", h)
	}
}

// TestDecodePackSpanChecksIndex: a pack frame is trusted only if it
// decodes to exactly the bytes the index's USum names, so a well-formed
// frame of other data, or one that declares another size or none, is
// refused as corrupt.
func TestDecodePackSpanChecksIndex(t *testing.T) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	data := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.IntN(16)) // compressible, but in many blocks
	}
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	x, err := index.Build(bytes.NewReader(gz.Bytes()), "", index.Options{SpanSize: index.MinSpanSize})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1
	s := x.Spans[n]
	span := raw.Bytes()[s.UOffset : s.UOffset+s.USize]
	enc, err := streamfs.NewPackEncoder(true)
	if err != nil {
		t.Fatal(err)
	}
	// A frame always declares its size, even a tiny one (a span of a
	// few bytes, say the last of a layer).
	for _, size := range []int{1, 10, 255, 256, 100 << 10} {
		var h zstd.Header
		if err := h.Decode(enc.EncodeAll(make([]byte, size), nil)); err != nil || !h.HasFCS || h.FrameContentSize != uint64(size) {
			t.Errorf("a frame of %d bytes: header %+v, %v; want its size declared", size, h, err)
		}
	}
	var scratch []byte
	good := enc.EncodeAll(span, nil)
	// A header may not promise a frame much larger than the span could
	// take, which would make a node set aside that much for it.
	for size, ok := range map[int64]bool{int64(len(good)): true, s.USize + 64: true, 32 << 20: false} {
		h := &streamfs.PackHeader{Layer: x.BlobDigest, Spans: []streamfs.PackSpan{{Span: n, Size: size}}}
		if err := h.Check(x); (err == nil) != ok || (err != nil && !errors.Is(err, streamfs.ErrBadPack)) {
			t.Errorf("Check of a %d-byte frame for a %d-byte span: %v", size, s.USize, err)
		}
	}
	if out, err := streamfs.DecodePackSpan(x, streamfs.PackSpan{Span: n, Size: int64(len(good))}, good, &scratch); err != nil || !bytes.Equal(out, span) {
		t.Fatalf("the right frame: %v", err)
	}
	other := bytes.Clone(span)
	other[len(other)/2] ^= 1
	var stream bytes.Buffer
	sw, err := zstd.NewWriter(&stream)
	if err != nil {
		t.Fatal(err)
	}
	sw.Write(span[:1000])
	sw.Flush() // the frame header goes out before the size is known
	sw.Write(span[1000:])
	sw.Close()
	for name, frame := range map[string][]byte{
		"other bytes":   enc.EncodeAll(other, nil),
		"one more byte": enc.EncodeAll(append(bytes.Clone(span), 0), nil),
		"no size":       stream.Bytes(),
		"two frames":    append(bytes.Clone(good), good...),
		"garbage":       []byte("not a zstd frame at all"),
	} {
		if _, err := streamfs.DecodePackSpan(x, streamfs.PackSpan{Span: n, Size: int64(len(frame))}, frame, &scratch); !errors.Is(err, streamfs.ErrCorrupt) {
			t.Errorf("%s: error %v, want ErrCorrupt", name, err)
		}
	}
}
