package index

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index/ocilayer"
)

// Options tune Build.
type Options struct {
	// SpanSize is the amount of uncompressed data between checkpoints
	// (gzip), the minimum uncompressed size of a run of zstd frames, and
	// the span length of an uncompressed tar. Zero means DefaultSpanSize;
	// otherwise it must lie in [MinSpanSize, MaxSpanSize].
	SpanSize int64
}

func (o Options) spanSize() (int64, error) {
	if o.SpanSize == 0 {
		return DefaultSpanSize, nil
	}
	if o.SpanSize < MinSpanSize || o.SpanSize > MaxSpanSize {
		return 0, fmt.Errorf("index: Options.SpanSize %d is out of range; use 0 for the default or a value in [%d, %d]", o.SpanSize, MinSpanSize, MaxSpanSize)
	}
	return o.SpanSize, nil
}

// Build indexes a layer blob read once, in order, from r: exactly the
// bytes stored in the registry. The encoding is recognised from the
// blob's first bytes (gzip, zstd or plain tar), so a mislabelled media
// type does no harm; mediaType is recorded for information. An eStargz
// layer is valid gzip and can be built here too; FromTOC reads it without
// a pass over the data.
//
// Build returns an error for data that is not a well-formed layer. A
// layer that is well formed but cannot be read lazily yields an Index
// whose NotStreamable says why.
func Build(r io.Reader, mediaType string, opts Options) (*Index, error) {
	spanSize, err := opts.spanSize()
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(r, 1<<20)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("index: reading layer: %w", err)
	}
	x := &Index{MediaType: mediaType, SpanSize: spanSize}
	switch ocilayer.Detect(magic) {
	case ocilayer.Gzip:
		x.Kind = KindGzip
		err = buildGzip(x, br)
	case ocilayer.Zstd:
		x.Kind = KindZstd
		err = buildZstd(x, br)
	default:
		x.Kind = KindTar
		err = buildTar(x, br)
	}
	if err != nil {
		return nil, err
	}
	if err := x.Validate(); err != nil {
		return nil, fmt.Errorf("index: the built index is invalid (unsupported tar content?): %w", err)
	}
	return x, nil
}

// blobHasher hashes the whole blob and the current span. Builders feed it
// every blob byte once, in order.
type blobHasher struct {
	blob hash.Hash
	span hash.Hash
	n    int64
}

func newBlobHasher() *blobHasher {
	return &blobHasher{blob: sha256.New(), span: sha256.New()}
}

func (h *blobHasher) Write(p []byte) (int, error) {
	h.blob.Write(p)
	h.span.Write(p)
	h.n += int64(len(p))
	return len(p), nil
}

// cut returns the digest of the current span and starts a new one.
func (h *blobHasher) cut() (d [32]byte) {
	h.span.Sum(d[:0])
	h.span.Reset()
	return d
}

func (h *blobHasher) blobDigest() digest.Digest {
	return digest.NewDigest(digest.SHA256, h.blob)
}

// spanSums hashes a layer's uncompressed stream span by span (Span.USum).
// A builder learns where a span ends (cutAt) no later than the stream
// passes that offset, and writes the stream in order; set stores the
// digests once the stream has ended.
type spanSums struct {
	h    hash.Hash
	n    int64   // bytes written
	cuts []int64 // span ends not yet reached
	sums [][32]byte
	err  error
}

func newSpanSums() *spanSums { return &spanSums{h: sha256.New()} }

// cutAt ends a span at uncompressed offset u.
func (s *spanSums) cutAt(u int64) {
	if u < s.n || (len(s.cuts) > 0 && u < s.cuts[len(s.cuts)-1]) {
		s.err = fmt.Errorf("index: internal error: span end %d behind the stream at %d", u, s.n)
		return
	}
	s.cuts = append(s.cuts, u)
	s.write(nil)
}

func (s *spanSums) Write(p []byte) (int, error) {
	s.write(p)
	return len(p), nil
}

func (s *spanSums) write(p []byte) {
	for {
		if len(s.cuts) > 0 && s.cuts[0]-s.n <= int64(len(p)) {
			k := s.cuts[0] - s.n
			s.h.Write(p[:k])
			s.n += k
			p = p[k:]
			var d [32]byte
			s.h.Sum(d[:0])
			s.sums = append(s.sums, d)
			s.h.Reset()
			s.cuts = s.cuts[1:]
			continue
		}
		s.h.Write(p)
		s.n += int64(len(p))
		return
	}
}

// set stores the sums in x's spans, which must have ended at the cuts.
func (s *spanSums) set(x *Index) error {
	if s.err != nil {
		return s.err
	}
	if len(s.cuts) != 0 || len(s.sums) != len(x.Spans) {
		return fmt.Errorf("index: internal error: %d span sums (%d ends pending) for %d spans", len(s.sums), len(s.cuts), len(x.Spans))
	}
	for i := range x.Spans {
		x.Spans[i].USum = s.sums[i]
	}
	return nil
}

// tarWalker reads the uncompressed tar stream and fills the file table.
// It counts bytes so that each entry's data offset is known: archive/tar
// reads headers in whole 512-byte blocks and never reads ahead.
type tarWalker struct {
	r      io.Reader
	n      int64
	diffID hash.Hash
}

func (w *tarWalker) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	w.n += int64(n)
	w.diffID.Write(p[:n])
	return n, err
}

// walkTar reads the whole uncompressed stream u, fills x.Files, x.DiffID
// and x.UncompressedSize, and may set x.NotStreamable.
func walkTar(x *Index, u io.Reader) error {
	w := &tarWalker{r: u, diffID: sha256.New()}
	tr := tar.NewReader(w)
	buf := make([]byte, 256<<10)
	table := newFileTable()
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("index: reading tar entry %d at offset %d: %w", len(table.files), w.n, err)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return fmt.Errorf("index: tar entry %q: %w", hdr.Name, err)
		}
		f := File{
			Name:     name,
			Type:     hdr.Typeflag,
			Mode:     hdr.Mode,
			UID:      int64(hdr.Uid),
			GID:      int64(hdr.Gid),
			Uname:    hdr.Uname,
			Gname:    hdr.Gname,
			ModTime:  hdr.ModTime,
			Linkname: hdr.Linkname,
			Devmajor: hdr.Devmajor,
			Devminor: hdr.Devminor,
		}
		for k, v := range hdr.PAXRecords {
			if paxRedundant[k] {
				continue
			}
			if strings.HasPrefix(k, "GNU.sparse.") && x.NotStreamable == "" {
				x.NotStreamable = fmt.Sprintf("tar entry %q is a sparse file; its data is not contiguous in the stream", name)
			}
			if f.PAX == nil {
				f.PAX = make(map[string]string)
			}
			f.PAX[k] = v
		}
		switch hdr.Typeflag {
		case tar.TypeLink:
			if f.Linkname, err = cleanName(hdr.Linkname); err != nil {
				switch kindOf(name) {
				case ocilayer.Root, ocilayer.Meta:
					continue // appliers skip the entry
				case ocilayer.Whiteout, ocilayer.Opaque:
					// Appliers read a whiteout's name only.
					f.Type, f.Linkname = tar.TypeReg, ""
					err = nil
				}
			}
			if err != nil {
				return fmt.Errorf("index: tar entry %q: hard link target %q: %w", hdr.Name, hdr.Linkname, err)
			}
		case tar.TypeGNUSparse:
			if x.NotStreamable == "" {
				x.NotStreamable = fmt.Sprintf("tar entry %q is a sparse file; its data is not contiguous in the stream", name)
			}
		case tar.TypeReg, tar.TypeRegA:
			f.Type = tar.TypeReg
			f.Offset = w.n
			f.Size = hdr.Size
			h := sha256.New()
			n, err := io.CopyBuffer(h, tr, buf)
			if err != nil {
				return fmt.Errorf("index: reading tar entry %q: %w", hdr.Name, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("index: tar entry %q: read %d of %d bytes", hdr.Name, n, hdr.Size)
			}
			h.Sum(f.Digest[:0])
		}
		if _, err := table.add(f); err != nil {
			return fmt.Errorf("index: tar entry %q: %w", hdr.Name, err)
		}
	}
	// Drain the end-of-archive blocks and any padding so every byte is
	// decompressed, hashed and checked.
	if _, err := io.CopyBuffer(io.Discard, w, buf); err != nil {
		return fmt.Errorf("index: reading past the end of the tar archive: %w", err)
	}
	files, notSafe := table.result()
	if notSafe != "" && x.NotStreamable == "" {
		x.NotStreamable = notSafe
	}
	x.Files = files
	x.UncompressedSize = w.n
	x.DiffID = digest.NewDigest(digest.SHA256, w.diffID)
	return nil
}

// kindOf is what the cleaned name means to appliers (Plain for a name
// Classify refuses, which is reported elsewhere).
func kindOf(name string) ocilayer.Kind {
	n, err := ocilayer.Classify(name)
	if err != nil {
		return ocilayer.Plain
	}
	return n.Kind
}

// paxRedundant lists PAX keys archive/tar already folds into Header
// fields.
var paxRedundant = map[string]bool{
	"path": true, "linkpath": true, "size": true, "uid": true, "gid": true,
	"uname": true, "gname": true, "mtime": true,
}

// sha256Sum is sha256.Sum256 with a name that reads well at call sites.
func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
