package imagegen

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Names of the AUFS-style markers the OCI layer spec uses.
const (
	// WhiteoutPrefix starts the base name of a whiteout entry.
	WhiteoutPrefix = ".wh."
	// OpaqueMarker is the base name of an opaque-directory entry.
	OpaqueMarker = ".wh..wh..opq"
)

// memLimit is how large a blob may grow in memory before it moves to an
// unlinked temporary file; big test layers would otherwise pin hundreds of MB.
const memLimit = 8 << 20

// Build makes the image described by spec. Equal specs give byte-identical
// images.
func Build(spec Spec) (v1.Image, error) {
	created := spec.Created
	if created.IsZero() {
		created = DefaultTime
	}
	manifestMT, configMT := types.OCIManifestSchema1, types.OCIConfigJSON
	if spec.Format == Docker {
		manifestMT, configMT = types.DockerManifestSchema2, types.DockerConfigJSON
	}
	img := mutate.MediaType(empty.Image, manifestMT)
	img = mutate.ConfigMediaType(img, configMT)

	files := map[string]Entry{} // latest File per name, for Hardlink metadata
	adds := make([]mutate.Addendum, 0, len(spec.Layers))
	for i, l := range spec.Layers {
		mt, err := layerMediaType(spec.Format, l.Compression)
		if err != nil {
			return nil, fmt.Errorf("imagegen: layers[%d].compression: %w", i, err)
		}
		bl, err := buildLayer(l, mt, created, files)
		if err != nil {
			return nil, fmt.Errorf("imagegen: layers[%d]: %w", i, err)
		}
		comment := l.Comment
		if comment == "" {
			comment = fmt.Sprintf("imagegen layer %d (%s, %d entries)", i, l.Compression, len(l.Entries))
		}
		adds = append(adds, mutate.Addendum{
			Layer:     bl,
			MediaType: mt,
			History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: comment},
		})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("imagegen: append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagegen: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS = spec.OS
	if cf.OS == "" {
		cf.OS = "linux"
	}
	cf.Architecture = spec.Architecture
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	cf.Config = spec.Config
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("imagegen: config: %w", err)
	}
	return img, nil
}

func layerMediaType(f Format, c Compression) (types.MediaType, error) {
	switch {
	case f == OCI && c == Gzip:
		return types.OCILayer, nil
	case f == OCI && c == Zstd:
		return types.OCILayerZStd, nil
	case f == OCI && c == Uncompressed:
		return types.OCIUncompressedLayer, nil
	case f == Docker && c == Gzip:
		return types.DockerLayer, nil
	case f == Docker && c == Uncompressed:
		return types.DockerUncompressedLayer, nil
	case f == Docker && c == Zstd:
		return "", errors.New("zstd has no Docker schema 2 media type; use Format OCI or Spec.Docker()")
	}
	return "", fmt.Errorf("unknown compression %d or format %d", c, f)
}

// LayerTar writes the uncompressed tar stream of l to w, as [Build] would
// put it in a layer with no lower layers. It is for tests that need a raw
// tar (for example a hostile one) without an image around it.
func LayerTar(w io.Writer, l Layer) error {
	return writeTar(w, l, DefaultTime, map[string]Entry{})
}

func buildLayer(l Layer, mt types.MediaType, created time.Time, files map[string]Entry) (*blobLayer, error) {
	return newBlobLayer(l, mt, func(w io.Writer) error {
		return writeTar(w, l, created, files)
	})
}

// newBlobLayer compresses what writeTar writes as l.Compression asks, and
// hashes both streams on the way, so nothing is compressed twice.
func newBlobLayer(l Layer, mt types.MediaType, writeTar func(io.Writer) error) (*blobLayer, error) {
	store := &spillBuffer{}
	digest := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(store, digest), 1<<20)
	cw, err := newCompressor(bw, l)
	if err != nil {
		return nil, err
	}
	diffID := sha256.New()
	if err := writeTar(io.MultiWriter(diffID, cw)); err != nil {
		store.discard()
		return nil, err
	}
	if err := cw.Close(); err != nil {
		store.discard()
		return nil, fmt.Errorf("close %s compressor: %w", l.Compression, err)
	}
	if err := bw.Flush(); err != nil {
		store.discard()
		return nil, fmt.Errorf("store blob: %w", err)
	}
	if store.err != nil {
		store.discard()
		return nil, fmt.Errorf("store blob: %w", store.err)
	}
	return &blobLayer{
		digest:      hashOf(digest),
		diffID:      hashOf(diffID),
		size:        store.n,
		mediaType:   mt,
		compression: l.Compression,
		mem:         store.mem,
		file:        store.file,
	}, nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

func writeTar(w io.Writer, l Layer, created time.Time, files map[string]Entry) error {
	tw := tar.NewWriter(w)
	buf := make([]byte, 1<<20)
	for i, e := range l.Entries {
		hdr, body, err := header(e, created, files)
		if err != nil {
			return fmt.Errorf("entries[%d] %q: %w", i, e.Name, err)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("entries[%d] %q: %w", i, e.Name, err)
		}
		if body != nil {
			if _, err := io.CopyBuffer(tw, body, buf); err != nil {
				return fmt.Errorf("entries[%d] %q: write content: %w", i, e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close tar: %w", err)
	}
	return nil
}

// header returns the tar header for e and the reader of its content, if
// any. It records files in files, for later hard links.
func header(e Entry, created time.Time, files map[string]Entry) (*tar.Header, io.Reader, error) {
	if e.ModTime.IsZero() {
		e.ModTime = created
	}
	if e.Type == Hardlink && e.Mode == 0 && e.UID == 0 && e.GID == 0 && e.ModTime.Equal(created) && e.Xattrs == nil {
		if t, ok := files[e.Linkname]; ok {
			e.Mode, e.UID, e.GID, e.ModTime, e.Xattrs = t.Mode, t.UID, t.GID, t.ModTime, t.Xattrs
		}
	}
	if e.Mode == 0 {
		switch e.Type {
		case File, Hardlink:
			e.Mode = 0o644
		case Dir:
			e.Mode = 0o755
		case Symlink:
			e.Mode = 0o777
		case CharDevice, BlockDevice, Fifo:
			e.Mode = 0o666
		}
	}
	if e.Mode == ZeroMode {
		e.Mode = 0
	}
	hdr := &tar.Header{
		Name:     e.Name,
		Mode:     e.Mode,
		Uid:      e.UID,
		Gid:      e.GID,
		ModTime:  e.ModTime,
		Linkname: e.Linkname,
		Format:   tar.FormatPAX,
	}
	if len(e.Xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(e.Xattrs))
		for k, v := range e.Xattrs {
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	var body io.Reader
	switch e.Type {
	case File:
		hdr.Typeflag = tar.TypeReg
		if e.Data != nil {
			hdr.Size = int64(len(e.Data))
			body = bytes.NewReader(e.Data)
		} else {
			if e.Size < 0 {
				return nil, nil, fmt.Errorf("size %d is negative", e.Size)
			}
			hdr.Size = e.Size
			body = Content(e.Seed, e.Size, e.Fill)
		}
		files[e.Name] = e
	case Dir:
		hdr.Typeflag = tar.TypeDir
		if !strings.HasSuffix(hdr.Name, "/") {
			hdr.Name += "/"
		}
	case Symlink:
		hdr.Typeflag = tar.TypeSymlink
	case Hardlink:
		hdr.Typeflag = tar.TypeLink
		if t, ok := files[e.Linkname]; ok {
			files[e.Name] = t
		}
	case CharDevice:
		hdr.Typeflag = tar.TypeChar
		hdr.Devmajor, hdr.Devminor = e.Devmajor, e.Devminor
	case BlockDevice:
		hdr.Typeflag = tar.TypeBlock
		hdr.Devmajor, hdr.Devminor = e.Devmajor, e.Devminor
	case Fifo:
		hdr.Typeflag = tar.TypeFifo
	case Whiteout:
		hdr.Typeflag = tar.TypeReg
		name := strings.TrimSuffix(e.Name, "/")
		hdr.Name = path.Join(path.Dir(name), WhiteoutPrefix+path.Base(name))
		delete(files, e.Name)
	case Opaque:
		hdr.Typeflag = tar.TypeReg
		dir := strings.TrimSuffix(e.Name, "/")
		if dir == "" || dir == "." {
			hdr.Name = OpaqueMarker
		} else {
			hdr.Name = dir + "/" + OpaqueMarker
		}
	default:
		return nil, nil, fmt.Errorf("unknown entry type %d", e.Type)
	}
	return hdr, body, nil
}

type compressor interface {
	io.Writer
	Close() error
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func newCompressor(w io.Writer, l Layer) (compressor, error) {
	switch l.Compression {
	case Uncompressed:
		return nopCloser{w}, nil
	case Gzip:
		level := l.Level
		if level == 0 {
			level = gzip.BestSpeed
		}
		zw, err := gzip.NewWriterLevel(w, level)
		if err != nil {
			return nil, fmt.Errorf("gzip level %d: %w", level, err)
		}
		return zw, nil
	case Zstd:
		level := zstd.EncoderLevel(l.Level)
		if level == 0 {
			level = zstd.SpeedFastest
		}
		// One goroutine keeps the output independent of scheduling.
		opts := []zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1)}
		if l.ZstdFrameSize > 0 {
			enc, err := zstd.NewWriter(nil, opts...)
			if err != nil {
				return nil, fmt.Errorf("zstd: %w", err)
			}
			return &frameWriter{enc: enc, w: w, size: int(l.ZstdFrameSize)}, nil
		}
		zw, err := zstd.NewWriter(w, opts...)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zw, nil
	}
	return nil, fmt.Errorf("unknown compression %d", l.Compression)
}

// frameWriter cuts its input into independent zstd frames of size bytes.
type frameWriter struct {
	enc  *zstd.Encoder
	w    io.Writer
	size int
	buf  []byte
	out  []byte
}

func (f *frameWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		c := min(len(p), f.size-len(f.buf))
		f.buf = append(f.buf, p[:c]...)
		p = p[c:]
		if len(f.buf) == f.size {
			if err := f.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (f *frameWriter) flush() error {
	f.out = f.enc.EncodeAll(f.buf, f.out[:0])
	f.buf = f.buf[:0]
	_, err := f.w.Write(f.out)
	return err
}

func (f *frameWriter) Close() error {
	var err error
	if len(f.buf) > 0 {
		err = f.flush()
	}
	if cerr := f.enc.Close(); err == nil {
		err = cerr
	}
	return err
}

// spillBuffer keeps a blob in memory up to memLimit and in an unlinked
// temporary file beyond, so the file disappears with the process (or when
// the layer is garbage collected) and tests need no cleanup.
type spillBuffer struct {
	mem  []byte
	file *os.File
	n    int64
	err  error
}

func (s *spillBuffer) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.file == nil && len(s.mem)+len(p) <= memLimit {
		s.mem = append(s.mem, p...)
		s.n += int64(len(p))
		return len(p), nil
	}
	if s.file == nil {
		f, err := os.CreateTemp("", "imagegen-blob-*")
		if err != nil {
			s.err = err
			return 0, err
		}
		// Unlink at once: the open descriptor keeps the data.
		_ = os.Remove(f.Name())
		if _, err := f.Write(s.mem); err != nil {
			f.Close()
			s.err = err
			return 0, err
		}
		s.file, s.mem = f, nil
	}
	n, err := s.file.Write(p)
	s.n += int64(n)
	if err != nil {
		s.err = err
	}
	return n, err
}

func (s *spillBuffer) discard() {
	if s.file != nil {
		s.file.Close()
	}
	s.mem, s.file = nil, nil
}

// blobLayer is a finished layer blob with its digests computed while it was
// written, so that nothing is compressed twice.
type blobLayer struct {
	digest, diffID v1.Hash
	size           int64
	mediaType      types.MediaType
	compression    Compression
	mem            []byte
	file           *os.File
}

var _ v1.Layer = (*blobLayer)(nil)

func (l *blobLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *blobLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *blobLayer) Size() (int64, error)                { return l.size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error)  { return io.NopCloser(l.reader()), nil }
func (l *blobLayer) reader() io.Reader {
	if l.file != nil {
		return io.NewSectionReader(l.file, 0, l.size)
	}
	return bytes.NewReader(l.mem)
}

func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	r := l.reader()
	switch l.compression {
	case Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("imagegen: layer %s: %w", l.digest, err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("imagegen: layer %s: %w", l.digest, err)
		}
		return zstdReadCloser{zr}, nil
	}
	return io.NopCloser(r), nil
}

type zstdReadCloser struct{ *zstd.Decoder }

func (z zstdReadCloser) Close() error { z.Decoder.Close(); return nil }
