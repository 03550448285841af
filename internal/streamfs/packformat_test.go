package streamfs_test

import (
	"bufio"
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

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
	f.Add([]byte("RIFFLEPK\x02"))
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
