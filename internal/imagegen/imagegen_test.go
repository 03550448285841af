package imagegen

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

func TestContentIsDeterministicAndPrefixStable(t *testing.T) {
	for _, fill := range []Fill{Mixed, Random, Zeros} {
		a, err := io.ReadAll(Content(7, 200_000, fill))
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != 200_000 {
			t.Fatalf("%v: got %d bytes", fill, len(a))
		}
		// Odd read sizes and a shorter size give a prefix of the same bytes.
		var b bytes.Buffer
		r := Content(7, 150_001, fill)
		buf := make([]byte, 777)
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(a[:150_001], b.Bytes()) {
			t.Errorf("%v: Content(7, 150001) is not a prefix of Content(7, 200000)", fill)
		}
		c, _ := io.ReadAll(Content(8, 200_000, fill))
		if fill != Zeros && bytes.Equal(a, c) {
			t.Errorf("%v: seeds 7 and 8 give the same content", fill)
		}
	}
}

func TestMixedContentIsPartlyCompressible(t *testing.T) {
	data, _ := io.ReadAll(Content(1, 4<<20, Mixed))
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
	zw.Write(data)
	zw.Close()
	ratio := float64(z.Len()) / float64(len(data))
	if ratio < 0.4 || ratio > 0.7 {
		t.Errorf("gzip ratio of mixed content = %.2f, want about 0.5", ratio)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	a := mustBuild(t, AllFeatures())
	b := mustBuild(t, AllFeatures())
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds of AllFeatures differ: %s and %s", da, db)
	}
}

func TestAllFeaturesValidAndComplete(t *testing.T) {
	spec := AllFeatures()
	img := mustBuild(t, spec)
	if err := validImage(img); err != nil {
		t.Fatalf("validate: %v", err)
	}
	mt, _ := img.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != len(spec.Layers) {
		t.Fatalf("%d layers, want %d", len(layers), len(spec.Layers))
	}
	wantMT := []types.MediaType{types.OCILayer, types.OCILayerZStd, types.OCILayer, types.OCIUncompressedLayer, types.OCILayer, types.OCIUncompressedLayer}
	var digests []v1.Hash
	for i, l := range layers {
		got, _ := l.MediaType()
		if got != wantMT[i] {
			t.Errorf("layer %d media type %s, want %s", i, got, wantMT[i])
		}
		d, _ := l.Digest()
		digests = append(digests, d)
	}
	if digests[2] != digests[4] {
		t.Errorf("duplicate layers 2 and 4 differ: %s, %s", digests[2], digests[4])
	}
	// The empty layer is a tar of just the end-of-archive marker.
	if n := tarBytes(t, layers[3]); len(n) != 1024 || bytes.Count(n, []byte{0}) != 1024 {
		t.Errorf("empty layer is %d bytes", len(n))
	}
	// The zstd layer is cut into several frames.
	rc, _ := layers[1].Compressed()
	zblob, _ := io.ReadAll(rc)
	if frames := bytes.Count(zblob, []byte{0x28, 0xb5, 0x2f, 0xfd}); frames < 3 {
		t.Errorf("zstd layer has %d frames, want at least 3", frames)
	}

	type seen struct {
		hdr  *tar.Header
		data []byte
	}
	all := map[string]seen{}
	for i, l := range layers {
		tr := tar.NewReader(bytes.NewReader(tarBytes(t, l)))
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			data, _ := io.ReadAll(tr)
			all[hdr.Name] = seen{hdr, data}
		}
	}
	check := func(name string, f func(h *tar.Header, data []byte) bool, what string) {
		t.Helper()
		s, ok := all[name]
		if !ok {
			t.Errorf("%s: missing from the tar streams", name)
			return
		}
		if !f(s.hdr, s.data) {
			t.Errorf("%s: not %s: %+v", name, what, s.hdr)
		}
	}
	check("data/deleteme.txt", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeReg }, "a file")
	check("data/.wh.deleteme.txt", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeReg && h.Size == 0 }, "a whiteout")
	check(".wh.deleteme-dir", func(h *tar.Header, _ []byte) bool { return h.Size == 0 }, "a whiteout")
	check("opaque/.wh..wh..opq", func(h *tar.Header, _ []byte) bool { return h.Size == 0 }, "an opaque marker")
	check("links/hard-small", func(h *tar.Header, _ []byte) bool {
		return h.Typeflag == tar.TypeLink && h.Linkname == "data/small.bin"
	}, "a hard link across directories")
	check("links/hard-xlayer", func(h *tar.Header, _ []byte) bool {
		return h.Typeflag == tar.TypeLink && h.Linkname == "data/random.bin"
	}, "a hard link across layers")
	check("data/multi-hl1", func(h *tar.Header, _ []byte) bool {
		return h.Mode == 0o640 && h.Uid == 1000 // metadata copied from the target
	}, "a hard link with its target's metadata")
	check("links/abs", func(h *tar.Header, _ []byte) bool {
		return h.Typeflag == tar.TypeSymlink && h.Linkname == "/data/small.bin"
	}, "an absolute symlink")
	check("links/dangling", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeSymlink }, "a symlink")
	check("links/long-target", func(h *tar.Header, _ []byte) bool {
		return h.Linkname == LongTarget && h.PAXRecords["linkpath"] == LongTarget
	}, "a symlink with a PAX linkpath")
	check(LongFile, func(h *tar.Header, _ []byte) bool { return h.PAXRecords["path"] == LongFile }, "a PAX long name")
	check("long/hl-to-long", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeLink && h.Linkname == LongFile }, "a hard link with a long target")
	check("bin/tool", func(h *tar.Header, _ []byte) bool {
		return h.PAXRecords["SCHILY.xattr.security.capability"] == CapNetBindService && h.PAXRecords["SCHILY.xattr.user.comment"] == "a tool"
	}, "a file with xattrs")
	check("xattr-dir/", func(h *tar.Header, _ []byte) bool { return h.PAXRecords["SCHILY.xattr.user.dir"] == "1" }, "a directory with xattrs")
	check("xattr-dir/file", func(h *tar.Header, _ []byte) bool {
		return h.PAXRecords["SCHILY.xattr.user.binary"] == "\x00\x01\xfe\xff"
	}, "a file with a binary xattr")
	check("special/null", func(h *tar.Header, _ []byte) bool {
		return h.Typeflag == tar.TypeChar && h.Devmajor == 1 && h.Devminor == 3
	}, "char 1:3")
	check("special/loop7", func(h *tar.Header, _ []byte) bool {
		return h.Typeflag == tar.TypeBlock && h.Devmajor == 7 && h.Devminor == 7
	}, "block 7:7")
	check("special/fifo", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeFifo }, "a fifo")
	check("bin/suid", func(h *tar.Header, _ []byte) bool { return h.Mode == 0o4755 }, "setuid")
	check("bin/sgid", func(h *tar.Header, _ []byte) bool { return h.Mode == 0o2755 }, "setgid")
	check("tmp/", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeDir && h.Mode == 0o1777 }, "a sticky directory")
	check("owners/big-uid", func(h *tar.Header, _ []byte) bool { return h.Uid == 100000 && h.Gid == 100000 }, "uid 100000")
	check("owners/huge-uid", func(h *tar.Header, _ []byte) bool {
		return h.Uid == 3000000 && h.Gid == 4000000 && h.PAXRecords["uid"] == "3000000"
	}, "uid 3000000 in PAX")
	check("data/nanos", func(h *tar.Header, _ []byte) bool { return h.ModTime.Nanosecond() == 123456789 }, "a sub-second mtime")
	check("data/empty", func(h *tar.Header, d []byte) bool { return h.Size == 0 && len(d) == 0 }, "empty")
	check("data/big.bin", func(h *tar.Header, d []byte) bool {
		want, _ := io.ReadAll(Content(2, 3<<20, Mixed))
		return h.Size == 3<<20 && bytes.Equal(d, want)
	}, "3 MiB of Content(2)")
	check("etc/hostname", func(_ *tar.Header, d []byte) bool { return string(d) == "riffle-changed\n" }, "overwritten in layer 1")
	check("etc/becomes-file", func(h *tar.Header, _ []byte) bool { return h.Typeflag == tar.TypeReg }, "a file replacing a directory")
	check("data/unicode ünïcödé ✓.txt", func(h *tar.Header, _ []byte) bool { return true }, "present")
}

func TestDockerFormat(t *testing.T) {
	spec := AllFeatures().Docker()
	img := mustBuild(t, spec)
	if err := validImage(img); err != nil {
		t.Fatalf("validate: %v", err)
	}
	mt, _ := img.MediaType()
	if mt != types.DockerManifestSchema2 {
		t.Errorf("manifest media type %s", mt)
	}
	m, _ := img.Manifest()
	if m.Config.MediaType != types.DockerConfigJSON {
		t.Errorf("config media type %s", m.Config.MediaType)
	}
	for i, l := range m.Layers {
		if l.MediaType != types.DockerLayer && l.MediaType != types.DockerUncompressedLayer {
			t.Errorf("layer %d media type %s", i, l.MediaType)
		}
	}

	bad := AllFeatures()
	bad.Format = Docker
	if _, err := Build(bad); err == nil || !strings.Contains(err.Error(), "layers[1].compression") {
		t.Errorf("Docker with a zstd layer: err = %v, want one naming layers[1].compression", err)
	}
}

func TestWriteOCILayoutAndDockerSave(t *testing.T) {
	img := mustBuild(t, AllFeatures())
	want, _ := img.Digest()

	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteOCILayout(dir, img, "v1"); err != nil {
		t.Fatal(err)
	}
	// A second image goes into the same layout.
	img2 := mustBuild(t, Large(1<<20))
	if err := WriteOCILayout(dir, img2, "large"); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := validImage(got); err != nil {
		t.Fatalf("image read from layout: %v", err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 2 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v1" {
		t.Errorf("layout index: %+v", im.Manifests)
	}

	tarPath := filepath.Join(t.TempDir(), "save.tar")
	if err := WriteDockerSave(tarPath, "example.com/test/all:latest", img); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("example.com/test/all:latest")
	saved, err := tarball.ImageFromPath(tarPath, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := validImage(saved); err != nil {
		t.Fatalf("image read from docker save tarball: %v", err)
	}
	wl, _ := img.Layers()
	sl, _ := saved.Layers()
	for i := range wl {
		a, _ := wl[i].DiffID()
		b, _ := sl[i].DiffID()
		if a != b {
			t.Errorf("layer %d diffID %s after docker save, want %s", i, b, a)
		}
	}
}

func TestPushToRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	img := mustBuild(t, AllFeatures())
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/test/all:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := validImage(pulled); err != nil {
		t.Fatal(err)
	}
	a, _ := img.Digest()
	b, _ := pulled.Digest()
	if a != b {
		t.Errorf("pulled digest %s, pushed %s", b, a)
	}
}

func TestLargeBuildsQuickly(t *testing.T) {
	size := int64(16 << 20) // BenchmarkLarge measures the real 300 MB
	start := time.Now()
	img := mustBuild(t, Large(size))
	elapsed := time.Since(start)
	t.Logf("Large(%d MiB) built in %v (%.0f MB/s)", size>>20, elapsed, float64(size)/1e6/elapsed.Seconds())
	layers, _ := img.Layers()
	if len(layers) != 5 {
		t.Fatalf("%d layers", len(layers))
	}
	rc, _ := layers[1].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name != "big/blob.bin" {
			continue
		}
		h := sha256.New()
		n, _ := io.Copy(h, tr)
		w := sha256.New()
		io.Copy(w, Content(42, size, Mixed))
		if n != size || !bytes.Equal(h.Sum(nil), w.Sum(nil)) {
			t.Fatalf("big/blob.bin: %d bytes, digest mismatch", n)
		}
		break
	}
	if err := validImage(img); err != nil {
		t.Fatal(err)
	}
}

func TestLayerTarWritesNamesAsGiven(t *testing.T) {
	var b bytes.Buffer
	err := LayerTar(&b, Layer{Entries: []Entry{
		{Type: File, Name: "../escape", Data: []byte("x")},
		{Type: File, Name: "/abs", Data: []byte("y")},
		{Type: Symlink, Name: "evil", Linkname: "/../../.."},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&b)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if strings.Join(names, ",") != "../escape,/abs,evil" {
		t.Errorf("names %v", names)
	}
}

func BenchmarkLarge(b *testing.B) {
	const size = 300 << 20
	b.SetBytes(size)
	for b.Loop() {
		if _, err := Build(Spec{Layers: []Layer{{Entries: []Entry{{Type: File, Name: "f", Size: size}}}}}); err != nil {
			b.Fatal(err)
		}
	}
}

func mustBuild(t testing.TB, s Spec) v1.Image {
	t.Helper()
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func tarBytes(t testing.TB, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// validImage checks digests, sizes and diffIDs of every blob. ggcr's
// validate.Image assumes gzip layers, so it cannot check zstd or
// uncompressed ones.
func validImage(img v1.Image) error {
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	if got := sha256Hash(bytes.NewReader(rawCfg)); got != m.Config.Digest || int64(len(rawCfg)) != m.Config.Size {
		return fmt.Errorf("config digest %s, manifest says %s", got, m.Config.Digest)
	}
	rawM, _ := img.RawManifest()
	if d, _ := img.Digest(); d != sha256Hash(bytes.NewReader(rawM)) {
		return fmt.Errorf("manifest digest %s is not the sha256 of the manifest", d)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if len(layers) != len(m.Layers) || len(layers) != len(cf.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers, %d in manifest, %d diffIDs", len(layers), len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		cr := &countingReader{r: rc}
		d := sha256Hash(cr)
		rc.Close()
		if d != m.Layers[i].Digest || cr.n != m.Layers[i].Size {
			return fmt.Errorf("layer %d: blob sha256 %s size %d, manifest says %s size %d", i, d, cr.n, m.Layers[i].Digest, m.Layers[i].Size)
		}
		uc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		h := sha256.New()
		tr := tar.NewReader(io.TeeReader(uc, h))
		for {
			_, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("layer %d: tar: %w", i, err)
			}
		}
		io.Copy(h, uc)
		uc.Close()
		diffID := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
		if diffID != cf.RootFS.DiffIDs[i] {
			return fmt.Errorf("layer %d: diffID %s, config says %s", i, diffID, cf.RootFS.DiffIDs[i])
		}
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func sha256Hash(r io.Reader) v1.Hash {
	h := sha256.New()
	io.Copy(h, r)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}
