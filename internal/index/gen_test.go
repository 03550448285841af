package index

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// genLayer is a generated tar layer and the truth about its entries.
type genLayer struct {
	tar     []byte
	content map[string][]byte // cleaned name -> content, for the last regular entry of that name
	names   []string          // cleaned names in the order the index should list them
}

// genContent returns n bytes that compress like real files: runs of
// words with repeats (so DEFLATE emits long back references, which makes
// checkpoint windows matter) mixed with incompressible stretches.
func genContent(r *rand.Rand, n int) []byte {
	words := []string{"riffle ", "layer ", "index ", "span ", "checkpoint ", "\n", "window ", "deflate ", "0123456789 ", "lib/x86_64-linux-gnu/"}
	var b bytes.Buffer
	for b.Len() < n {
		switch r.IntN(4) {
		case 0:
			chunk := make([]byte, r.IntN(2048))
			for i := range chunk {
				chunk[i] = byte(r.Uint32())
			}
			b.Write(chunk)
		default:
			for i := r.IntN(400); i > 0; i-- {
				b.WriteString(words[r.IntN(len(words))])
			}
		}
	}
	return b.Bytes()[:n]
}

// makeLayer writes a tar covering every entry kind the file table must
// describe. big is the size of the largest file, which straddles spans.
func makeLayer(t testing.TB, seed uint64, big int) *genLayer {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	g := &genLayer{content: make(map[string][]byte)}
	mt := time.Unix(1700000000, 0)
	add := func(clean string, h *tar.Header, data []byte) {
		t.Helper()
		if h.ModTime.IsZero() {
			h.ModTime = mt
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if len(data) > 0 {
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
		for i, n := range g.names {
			if n == clean {
				g.names = append(g.names[:i], g.names[i+1:]...)
				break
			}
		}
		g.names = append(g.names, clean)
		if h.Typeflag == tar.TypeReg {
			g.content[clean] = data
		} else {
			delete(g.content, clean)
		}
	}
	add(".", &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add("etc", &tar.Header{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 0, Gid: 0}, nil)
	add("etc/hostname", &tar.Header{Name: "./etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Uname: "root", Gname: "root"}, []byte("riffle\n"))
	add("etc/empty", &tar.Header{Name: "etc/empty", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000}, nil)
	add("usr", &tar.Header{Name: "/usr/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add("usr/bin", &tar.Header{Name: "usr/bin", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	data := genContent(r, big)
	add("usr/bin/big", &tar.Header{Name: "usr/bin/big", Typeflag: tar.TypeReg, Mode: 0o755}, data)
	add("usr/bin/hard", &tar.Header{Name: "usr/bin/hard", Typeflag: tar.TypeLink, Linkname: "./usr/bin/big"}, nil)
	add("usr/bin/sym", &tar.Header{Name: "usr/bin/sym", Typeflag: tar.TypeSymlink, Linkname: "../../etc/hostname"}, nil)
	add("usr/bin/abs", &tar.Header{Name: "usr/bin/abs", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}, nil)
	add("dev", &tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add("dev/null", &tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, nil)
	add("dev/sda", &tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 8, Devminor: 0}, nil)
	add("dev/fifo", &tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o644}, nil)
	add("xattr", &tar.Header{Name: "xattr", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.riffle": "yes", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"},
		ModTime:    time.Unix(1700000000, 123456789)}, []byte("has xattrs"))
	long := "long/" + strings.Repeat("d", 120) + "/" + strings.Repeat("f", 150)
	add("long", &tar.Header{Name: "long/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(long, &tar.Header{Name: long, Typeflag: tar.TypeReg, Mode: 0o644}, []byte("long name"))
	add("etc/.wh.removed", &tar.Header{Name: "etc/.wh.removed", Typeflag: tar.TypeReg, Mode: 0o600}, nil)
	add("usr/.wh..wh..opq", &tar.Header{Name: "usr/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o600}, nil)
	add("ütf8-ñame", &tar.Header{Name: "ütf8-ñame", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX}, []byte("unicode"))
	for i := range 40 {
		name := fmt.Sprintf("data/f%03d", i)
		if i == 0 {
			add("data", &tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
		}
		add(name, &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Uid: i, Gid: i}, genContent(r, r.IntN(big/8+1)))
	}
	// A duplicate: the later entry wins on extraction.
	add("etc/hostname", &tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("replaced\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	g.tar = buf.Bytes()
	return g
}
