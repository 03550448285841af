package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// The golden layers are stored (not regenerated) so that the golden
// indexes depend only on this package, not on the compressor of the Go
// release that runs the test.
var goldens = []struct{ blob, index string }{
	{"layer.tar.gz", "gzip.idx"},
	{"layer.tar", "tar.idx"},
	{"layer.tar.zst", "zstd.idx"},
}

func goldenBlob(t testing.TB, name string) []byte {
	t.Helper()
	if name == "layer.tar" { // stored compressed; it is the gzip layer's content
		gz := goldenBlob(t, "layer.tar.gz")
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	p := filepath.Join("testdata", name)
	if *update {
		if _, err := os.Stat(p); err != nil {
			g := makeLayer(t, 42, 150<<10)
			var b []byte
			switch name {
			case "layer.tar.gz":
				b = stdGzip(t, g.tar, 6)
			case "layer.tar.zst":
				b = zstdFrames(t, g.tar, 40<<10)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGolden(t *testing.T) {
	for _, gf := range goldens {
		t.Run(gf.index, func(t *testing.T) {
			blob := goldenBlob(t, gf.blob)
			x, err := Build(bytes.NewReader(blob), "", Options{SpanSize: MinSpanSize})
			if err != nil {
				t.Fatal(err)
			}
			got, err := x.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join("testdata", gf.index)
			if *update {
				if err := os.WriteFile(p, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("index of %s differs from %s (format change? rerun with -update and bump Version if readers break)", gf.blob, p)
			}
			y, err := Unmarshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if len(y.Spans) < 2 {
				t.Fatalf("golden index has %d spans; want several", len(y.Spans))
			}
			calls := 0
			fetch := fetcher(blob, &calls)
			raw := goldenBlob(t, "layer.tar")
			buf := make([]byte, y.UncompressedSize)
			if err := y.ReadAt(buf, 0, fetch); err != nil || !bytes.Equal(buf, raw) {
				t.Fatalf("reading the whole stream back: %v", err)
			}
		})
	}
}

// hostile forges indexes from a valid one and checks Unmarshal refuses
// each with a useful message.
func TestUnmarshalHostile(t *testing.T) {
	blob := goldenBlob(t, "layer.tar.gz")
	base, err := Build(bytes.NewReader(blob), "", Options{SpanSize: MinSpanSize})
	if err != nil {
		t.Fatal(err)
	}
	good := base.encode()
	if _, err := Unmarshal(good); err != nil {
		t.Fatal(err)
	}
	clone := func() *Index {
		y, err := Unmarshal(good)
		if err != nil {
			t.Fatal(err)
		}
		return y
	}
	reg := func(y *Index) *File {
		for i := range y.Files {
			if y.Files[i].IsRegular() && y.Files[i].Size > 0 {
				return &y.Files[i]
			}
		}
		t.Fatal("no regular file")
		return nil
	}
	cases := []struct {
		name  string
		forge func(y *Index)
		want  string
	}{
		{"span past blob", func(y *Index) { y.Spans[len(y.Spans)-1].CSize += 10 }, "outside the"},
		{"span offset past blob", func(y *Index) { y.Spans[1].COffset = y.BlobSize + 5 }, "span"},
		{"overlapping spans", func(y *Index) { y.Spans[1].COffset -= 3 }, "contiguous"},
		{"unsorted spans", func(y *Index) { y.Spans[0], y.Spans[1] = y.Spans[1], y.Spans[0] }, "span"},
		{"empty span", func(y *Index) { y.Spans[1].USize = 0 }, ""},
		{"span sizes disagree", func(y *Index) { y.UncompressedSize++ }, "spans cover"},
		{"bits on header span", func(y *Index) { y.Spans[0].Bits = 3 }, "gzip header"},
		{"bad window", func(y *Index) { y.Spans[1].Window = []byte("not zstd at all") }, "bad window"},
		{"window too large", func(y *Index) {
			enc, _ := newWindowEncoder()
			y.Spans[1].Window = enc.EncodeAll(make([]byte, WindowSize+1), nil)
		}, "bad window"},
		{"header span with window", func(y *Index) { y.Spans[0].Window = y.Spans[1].Window }, "gzip header"},
		{"duplicate path", func(y *Index) { y.Files[2].Name = y.Files[1].Name }, "appears twice"},
		{"dotdot path", func(y *Index) { y.Files[1].Name = "../etc/passwd" }, `".."`},
		{"inner dotdot", func(y *Index) { y.Files[1].Name = "usr/../../x" }, `".."`},
		{"absolute path", func(y *Index) { y.Files[1].Name = "/etc/passwd" }, "clean form"},
		{"dot slash path", func(y *Index) { y.Files[1].Name = "./etc" }, "clean form"},
		{"trailing slash", func(y *Index) { y.Files[1].Name = "etc/" }, "clean form"},
		{"empty name", func(y *Index) { y.Files[1].Name = "" }, "empty name"},
		{"NUL in name", func(y *Index) { y.Files[1].Name = "a\x00b" }, "NUL"},
		{"file past stream", func(y *Index) { reg(y).Offset = y.UncompressedSize }, "outside the"},
		{"file too long", func(y *Index) { reg(y).Size = 1 << 50 }, "outside the"},
		{"hard link escapes", func(y *Index) { y.Files[1].Type = tar.TypeLink; y.Files[1].Linkname = "../../etc/shadow" }, "hard link"},
		{"unknown type", func(y *Index) { y.Files[1].Type = 'Z' }, "unknown type"},
		{"span size", func(y *Index) { y.SpanSize = 1 }, "span size"},
		{"toc kind", func(y *Index) { y.Kind = KindEStargz }, "never stored"},
		{"unknown kind", func(y *Index) { y.Kind = 99 }, "unknown layer kind"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			y := clone()
			c.forge(y)
			_, err := Unmarshal(y.encode())
			if err == nil {
				t.Fatal("forged index accepted")
			}
			if !strings.HasPrefix(err.Error(), "index: ") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want prefix %q and %q", err, "index: ", c.want)
			}
		})
	}

	y := clone()
	y.BlobDigest = "md5:abcd"
	if err := y.Validate(); err == nil || !strings.Contains(err.Error(), "blob digest") {
		t.Fatalf("bad blob digest: %v", err)
	}
	y.BlobDigest = base.BlobDigest
	y.Spans[1].Bits = 9
	if err := y.Validate(); err == nil {
		t.Fatal("bit offset 9 accepted")
	}

	// Byte-level forgeries (the checksum is fixed up so the parser itself
	// is exercised).
	raw := func(name string, b []byte, want string) {
		t.Run(name, func(t *testing.T) {
			_, err := Unmarshal(b)
			if err == nil || !strings.HasPrefix(err.Error(), "index: ") || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want %q", err, want)
			}
		})
	}
	raw("empty", nil, "too short")
	raw("bad magic", append([]byte("NOTANIDX"), good[8:]...), "magic")
	v3 := bytes.Clone(good)
	v3[8] = 3
	raw("future version", v3, "version 3")
	raw("truncated", good[:len(good)-40], "checksum")
	flip := bytes.Clone(good)
	flip[len(flip)/2] ^= 1
	raw("flipped byte", flip, "checksum")
	raw("trailing bytes", resum(append(bytes.Clone(good[:len(good)-32]), 0)), "unexpected bytes")
	// A span count of 2^40 right after the header fields must not allocate.
	y = clone()
	y.Spans, y.Files = nil, nil
	head := y.encode()
	head = head[:len(head)-32-2] // drop the two zero counts and the sum
	huge := binary.AppendUvarint(bytes.Clone(head), 1<<40)
	raw("huge span count", resum(append(huge, 0)), "span count")
	hugeFiles := binary.AppendUvarint(append(bytes.Clone(head), 0), 1<<40)
	raw("huge file count", resum(hugeFiles), "file count")
	longStr := binary.AppendUvarint(bytes.Clone(head[:headerLen+1]), 1<<60)
	raw("huge string", resum(longStr), "string length")
	nonCanon := append(bytes.Clone(head), 0x80, 0x00, 0)
	raw("non-canonical varint", resum(nonCanon), "non-canonical")
}

// resum replaces nothing: it appends the trailing checksum to body.
func resum(body []byte) []byte {
	s := sha256.Sum256(body)
	return append(body, s[:]...)
}

func FuzzUnmarshal(f *testing.F) {
	for _, gf := range goldens {
		b, err := os.ReadFile(filepath.Join("testdata", gf.index))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// A tiny index, so mutations land in structure rather than digests.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Size: 2, PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b"}})
	tw.Write([]byte("hi"))
	tw.WriteHeader(&tar.Header{Name: "d/l", Typeflag: tar.TypeLink, Linkname: "d/f"})
	tw.Close()
	for _, blob := range [][]byte{tb.Bytes(), stdGzip(f, tb.Bytes(), 9)} {
		x, err := Build(bytes.NewReader(blob), "m", Options{})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(x.encode())
		d, _ := x.Detach()
		f.Add(d.encode())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) {
			x, err := Unmarshal(b)
			if err != nil {
				if !strings.HasPrefix(err.Error(), "index: ") {
					t.Fatalf("error without prefix: %v", err)
				}
				return
			}
			// Whatever is accepted is canonical and usable.
			again, err := x.MarshalBinary()
			if err != nil {
				t.Fatalf("accepted index does not marshal: %v", err)
			}
			if !bytes.Equal(again, b) {
				t.Fatal("accepted index is not canonical")
			}
			for _, off := range []int64{0, x.UncompressedSize / 2, x.UncompressedSize - 1} {
				if p, err := x.PlanRange(off, 1); err == nil && p.Length < 1<<20 {
					x.Decode(p, make([]byte, p.Length))
				}
			}
		}
		check(b)
		// Also with a valid checksum, so mutations reach the parser.
		if len(b) > trailerLen {
			check(resum(bytes.Clone(b[:len(b)-trailerLen])))
		}
	})
}
