package index

import (
	"archive/tar"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

// MaxTOCSize bounds the TOC FromTOC will read, against hostile footers.
const MaxTOCSize = 256 << 20

// TOCOptions tune FromTOC.
type TOCOptions struct {
	// TOCDigest, when set, is the digest the TOC must have: the manifest
	// annotation containerd.io/snapshot/stargz/toc.digest (eStargz) or
	// io.github.containers.zstd-chunked.manifest-checksum. Without it the
	// TOC, and so the chunk digests every read is checked against, is
	// trusted as read. Set it whenever the manifest carries it.
	TOCDigest digest.Digest
}

// ErrNoTOC is returned (wrapped) by FromTOC for a blob that is neither
// eStargz nor zstd:chunked; index it with Build instead.
var ErrNoTOC = errors.New("index: layer has no eStargz or zstd:chunked TOC")

// tocChunk is one chunk of file data inside a TOC span, whose digest the
// TOC gives over its uncompressed bytes.
type tocChunk struct {
	inner  int64 // offset in the span's uncompressed bytes
	size   int64
	digest [32]byte
}

// FromTOC makes an Index for an eStargz or zstd:chunked blob by reading
// only its footer and TOC through ra (two small reads), so such layers
// need no index of their own: the result is used exactly like one from
// Build. blobDigest is the layer's digest; size is the blob's size.
//
// Spans are the TOC's compressed chunks, laid end to end in a virtual
// uncompressed space (File.Offset points into it); each is verified
// against the TOC's chunkDigest values after decompression. DiffID is
// empty. An Index from FromTOC cannot be marshalled: it is rebuilt from
// the TOC whenever needed.
func FromTOC(ra io.ReaderAt, size int64, blobDigest digest.Digest, mediaType string, opts TOCOptions) (*Index, error) {
	type candidate struct {
		kind Kind
		d    estargz.Decompressor
	}
	cands := []candidate{{KindEStargz, new(estargz.GzipDecompressor)}, {KindZstdChunked, new(zstdchunked.Decompressor)}}
	var errs []error
	for _, c := range cands {
		fs := c.d.FooterSize()
		if size < fs {
			continue
		}
		footer := make([]byte, fs)
		if _, err := ra.ReadAt(footer, size-fs); err != nil {
			return nil, fmt.Errorf("index: reading the %s footer: %w", c.kind, err)
		}
		payload, tocOff, tocSize, err := c.d.ParseFooter(footer)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s footer: %w", c.kind, err))
			continue
		}
		if tocSize <= 0 {
			tocSize = size - tocOff - fs
		}
		if tocOff < 0 || payload < 0 || payload > tocOff || tocSize <= 0 || tocSize > MaxTOCSize || tocOff > size-fs || tocSize > size-fs-tocOff {
			return nil, fmt.Errorf("index: %s footer points at a TOC [%d, +%d) outside the %d-byte blob", c.kind, tocOff, tocSize, size)
		}
		tocBytes := make([]byte, tocSize)
		if _, err := ra.ReadAt(tocBytes, tocOff); err != nil {
			return nil, fmt.Errorf("index: reading the %s TOC: %w", c.kind, err)
		}
		toc, tocDigest, err := c.d.ParseTOC(bytes.NewReader(tocBytes))
		if err != nil {
			return nil, fmt.Errorf("index: parsing the %s TOC: %w", c.kind, err)
		}
		if opts.TOCDigest != "" && opts.TOCDigest != tocDigest {
			return nil, fmt.Errorf("index: the %s TOC has digest %s, the manifest says %s", c.kind, tocDigest, opts.TOCDigest)
		}
		x, err := fromJTOC(toc, c.kind, payload)
		if err != nil {
			return nil, err
		}
		x.MediaType = mediaType
		x.BlobDigest = blobDigest
		x.BlobSize = size
		if err := x.Validate(); err != nil {
			return nil, err
		}
		return x, nil
	}
	return nil, fmt.Errorf("%w: %w", ErrNoTOC, errors.Join(errs...))
}

// fromJTOC turns TOC entries into the file table and spans. payload is
// where the last chunk's compressed data ends (the TOC's start).
func fromJTOC(toc *estargz.JTOC, kind Kind, payload int64) (*Index, error) {
	x := &Index{Kind: kind, SpanSize: DefaultSpanSize}
	// Spans: one per distinct compressed offset holding data, in blob order.
	type member struct {
		off    int64
		chunks []tocChunk
	}
	var members []*member
	byOff := make(map[int64]*member)
	for _, e := range toc.Entries {
		if (e.Type != "reg" && e.Type != "chunk") || e.Offset == 0 && e.Size == 0 && e.ChunkSize == 0 {
			continue
		}
		if e.Offset <= 0 || e.Offset >= payload {
			return nil, fmt.Errorf("index: TOC entry %q: data offset %d outside the %d-byte payload", e.Name, e.Offset, payload)
		}
		if byOff[e.Offset] == nil {
			m := &member{off: e.Offset}
			byOff[e.Offset] = m
			members = append(members, m)
		}
	}
	sort.Slice(members, func(i, j int) bool { return members[i].off < members[j].off })

	type loc struct {
		m           *member
		inner, size int64
	}
	table := newFileTable()
	var files []File // table.files, which locs index
	var uname, gname = map[int]string{}, map[int]string{}
	var cur *File               // the regular file whose chunks follow
	var curSize int64           // its data so far
	locs := make(map[int][]loc) // file index -> where its chunks are
	addChunk := func(e *estargz.TOCEntry, size int64) error {
		d, err := parseSHA256(e.ChunkDigest)
		if err != nil {
			return fmt.Errorf("index: TOC entry %q chunk at %d: chunkDigest: %w", cur.Name, e.ChunkOffset, err)
		}
		if e.ChunkOffset != curSize || size <= 0 || e.InnerOffset < 0 {
			return fmt.Errorf("index: TOC entry %q: chunk at %d of %d bytes does not follow the previous one", cur.Name, e.ChunkOffset, size)
		}
		m := byOff[e.Offset]
		if m == nil {
			return fmt.Errorf("index: TOC entry %q: chunk at %d has no data offset", cur.Name, e.ChunkOffset)
		}
		m.chunks = append(m.chunks, tocChunk{inner: e.InnerOffset, size: size, digest: d})
		locs[len(files)-1] = append(locs[len(files)-1], loc{m, e.InnerOffset, size})
		curSize += size
		return nil
	}
	for _, e := range toc.Entries {
		if e.Type == "chunk" {
			if cur == nil {
				return nil, fmt.Errorf("index: TOC chunk entry at offset %d follows no regular file", e.Offset)
			}
			size := e.ChunkSize
			if size == 0 {
				size = cur.Size - e.ChunkOffset
			}
			if err := addChunk(e, size); err != nil {
				return nil, err
			}
			continue
		}
		if cur != nil && curSize != cur.Size {
			return nil, fmt.Errorf("index: TOC entry %q: chunks hold %d of %d bytes", cur.Name, curSize, cur.Size)
		}
		cur = nil
		name, err := cleanName(e.Name)
		if err != nil {
			return nil, fmt.Errorf("index: TOC entry %q: %w", e.Name, err)
		}
		if e.Uname != "" {
			uname[e.UID] = e.Uname
		}
		if e.Gname != "" {
			gname[e.GID] = e.Gname
		}
		f := File{Name: name, Mode: e.Mode, UID: int64(e.UID), GID: int64(e.GID), Uname: uname[e.UID], Gname: gname[e.GID],
			Linkname: e.LinkName, Devmajor: int64(e.DevMajor), Devminor: int64(e.DevMinor)}
		if e.ModTime3339 != "" {
			if f.ModTime, err = time.Parse(time.RFC3339, e.ModTime3339); err != nil {
				return nil, fmt.Errorf("index: TOC entry %q: modtime: %w", e.Name, err)
			}
		} else {
			f.ModTime = time.Unix(0, 0)
		}
		for k, v := range e.Xattrs {
			if f.PAX == nil {
				f.PAX = make(map[string]string)
			}
			f.PAX[paxXattr+k] = string(v)
		}
		switch e.Type {
		case "dir":
			f.Type = tar.TypeDir
		case "reg":
			f.Type = tar.TypeReg
			f.Size = e.Size
			if f.Digest, err = parseSHA256(e.Digest); err != nil {
				return nil, fmt.Errorf("index: TOC entry %q: digest: %w", e.Name, err)
			}
		case "symlink":
			f.Type = tar.TypeSymlink
		case "hardlink":
			f.Type = tar.TypeLink
			if f.Linkname, err = cleanName(e.LinkName); err != nil {
				return nil, fmt.Errorf("index: TOC entry %q: hard link target %q: %w", e.Name, e.LinkName, err)
			}
		case "char":
			f.Type = tar.TypeChar
		case "block":
			f.Type = tar.TypeBlock
		case "fifo":
			f.Type = tar.TypeFifo
		default:
			return nil, fmt.Errorf("index: TOC entry %q has unknown type %q", e.Name, e.Type)
		}
		appended, err := table.add(f)
		if err != nil {
			return nil, fmt.Errorf("index: TOC entry %q: %w", e.Name, err)
		}
		files = table.files
		if appended && f.Type == tar.TypeReg && f.Size > 0 {
			cur, curSize = &files[len(files)-1], 0
			size := e.ChunkSize
			if size == 0 {
				size = e.Size
			}
			if err := addChunk(e, size); err != nil {
				return nil, err
			}
		}
	}
	if cur != nil && curSize != cur.Size {
		return nil, fmt.Errorf("index: TOC entry %q: chunks hold %d of %d bytes", cur.Name, curSize, cur.Size)
	}

	// Lay the members end to end. A member's span covers its bytes up to
	// the end of its last chunk.
	memberU := make(map[*member]int64, len(members))
	x.tocChunks = make([][]tocChunk, 0, len(members))
	var u int64
	for i, m := range members {
		end := payload
		if i+1 < len(members) {
			end = members[i+1].off
		}
		var usize int64
		for _, c := range m.chunks {
			usize = max(usize, c.inner+c.size)
		}
		memberU[m] = u
		x.Spans = append(x.Spans, Span{UOffset: u, USize: usize, COffset: m.off, CSize: end - m.off})
		x.tocChunks = append(x.tocChunks, m.chunks)
		u += usize
	}
	x.UncompressedSize = u
	// A file's chunks must sit back to back in that space for its data to
	// be one range; the eStargz and zstd:chunked writers lay them out so.
	for i, ls := range locs {
		f := &files[i]
		f.Offset = memberU[ls[0].m] + ls[0].inner
		want := f.Offset
		for _, l := range ls {
			if memberU[l.m]+l.inner != want && x.NotStreamable == "" {
				x.NotStreamable = fmt.Sprintf("TOC entry %q: its chunks are not laid out back to back", f.Name)
			}
			want += l.size
		}
	}
	kept, notSafe := table.result()
	if notSafe != "" && x.NotStreamable == "" {
		x.NotStreamable = notSafe
	}
	x.Files = kept
	return x, nil
}

func parseSHA256(s string) (d [32]byte, err error) {
	hexs, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hexs) != 64 {
		return d, fmt.Errorf("%q is not a sha256 digest", s)
	}
	if _, err := hex.Decode(d[:], []byte(hexs)); err != nil {
		return d, fmt.Errorf("%q is not a sha256 digest", s)
	}
	return d, nil
}

// decodeTOC decompresses each span's member(s) and checks every chunk in
// it against the TOC's chunk digest.
func (x *Index) decodeTOC(p Plan, fetched []byte) ([][]byte, error) {
	if len(x.tocChunks) != len(x.Spans) {
		return nil, errors.New("index: TOC-based index lacks its chunk table; make it with FromTOC")
	}
	out := make([][]byte, 0, p.End-p.First)
	for i := p.First; i < p.End; i++ {
		s := &x.Spans[i]
		b, err := spanBytes(s, p, fetched)
		if err != nil {
			return nil, err
		}
		var r io.Reader
		if x.Kind == KindEStargz {
			zr, err := kgzip.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, fmt.Errorf("%w: span %d: %v", ErrCorrupt, i, err)
			}
			r = zr
		} else {
			dec, err := spanDecoder()
			if err != nil {
				return nil, err
			}
			u, err := dec.DecodeAll(b, make([]byte, 0, s.USize))
			if err != nil {
				return nil, fmt.Errorf("%w: span %d: %v", ErrCorrupt, i, err)
			}
			r = bytes.NewReader(u)
		}
		u := make([]byte, s.USize)
		if _, err := io.ReadFull(r, u); err != nil {
			return nil, fmt.Errorf("%w: span %d: %v", ErrCorrupt, i, err)
		}
		for _, c := range x.tocChunks[i] {
			if sha256Sum(u[c.inner:c.inner+c.size]) != c.digest {
				return nil, fmt.Errorf("%w: span %d: chunk at %d digest mismatch", ErrCorrupt, i, c.inner)
			}
		}
		out = append(out, u)
	}
	return out, nil
}
