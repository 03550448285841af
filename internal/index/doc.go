// Package index describes one OCI layer blob, exactly as stored in a
// registry, so that any byte range of any file in it can be read with a
// single HTTP Range request and verified, without converting the image.
//
// An [Index] holds the layer's file table (every tar entry with its
// metadata, where its content lies in the uncompressed tar stream, and
// the sha256 of that content) and a list of [Span]s: runs of the
// uncompressed stream, each decodable on its own from one contiguous
// range of the blob and each with a digest.
//
// The package imports nothing else of Riffle, so it could become its own
// module; its subpackage flate is a fork of the standard library's
// DEFLATE decompressor.
//
// # Building
//
// [Build] reads the blob once, in order (straight from the registry
// response, say) and recognises the encoding by its magic bytes:
//
//   - gzip (any number of members): the decompressor reports every
//     DEFLATE block boundary, and once [Options].SpanSize uncompressed
//     bytes have passed since the last checkpoint the next boundary
//     becomes one, as in zlib's examples/zran.c. A checkpoint records the
//     bit offset in the blob and the 32 KiB of output before it (the
//     window, stored zstd-compressed), which is all a decompressor needs
//     to start there.
//   - zstd: frames are independent, so spans are runs of whole frames. A
//     layer that is a single frame larger than SpanSize cannot be read
//     lazily; its Index says so in NotStreamable (the file table is still
//     complete).
//   - uncompressed tar: spans are SpanSize slices of the blob.
//
// eStargz and zstd:chunked layers already carry a table of contents;
// [FromTOC] turns it into the same Index by reading the footer and TOC
// only, so those layers need no separate index.
//
// Building hashes the blob (BlobDigest), the uncompressed stream (DiffID),
// every span and every file, verifies gzip CRCs, and is deterministic:
// the same blob and options always give the same bytes.
//
// # Reading
//
// A reader of [off, off+n) of the uncompressed stream (a file's content
// is [File.Offset, File.Offset+File.Size)) asks [Index.PlanRange] for a
// [Plan]: the spans it touches and the one blob range holding them. A
// range that straddles a checkpoint simply covers two consecutive spans,
// whose compressed bytes are adjacent, so it is still one request. A
// span cache asks [Index.PlanSpans] for just the spans it lacks. The
// fetched bytes go to [Index.Decode], which checks each span's digest
// before decompressing anything and returns each span's uncompressed
// bytes, ready to be cached under (layer digest, span index). A digest
// mismatch wraps [ErrCorrupt]: refetch, never use the data. A gzip span
// is inflated by klauspost/compress from its checkpoint: empty deflate
// blocks in front align a checkpoint that is mid-byte without moving any
// of the span's bytes (align.go); the fork in flate is the fallback.
//
// # Trust
//
// [Unmarshal] accepts only the canonical encoding of a valid index: it
// bounds every allocation by the input length and rejects offsets past
// the blob, spans that overlap or leave gaps, bad windows, unclean,
// absolute, ".." or duplicate names and hard link targets. That makes an
// index safe to parse; that it describes the right layer comes from
// fetching it by digest from the index service or a referrer artifact.
// Fetched layer data is always checked against the span digests.
//
// # Format
//
// The binary encoding written by [Index.MarshalBinary], version 1. All
// integers are unsigned LEB128 varints (uvar) in their shortest form, or
// zigzag varints (svar) where marked; str is a uvar length followed by
// that many bytes; d32 is 32 raw bytes (a sha256).
//
//	header:
//	  magic        8 bytes "RIFFLEIX"
//	  version      uint16 little endian (2)
//	  kind         1 byte: 1 tar, 2 gzip, 3 zstd (TOC kinds are never stored)
//	  mediaType    str
//	  blobDigest   d32 (sha256 of the blob)
//	  blobSize     uvar
//	  flags        1 byte: bit 0 = diffID present; bit 1 = detached
//	               (windows kept apart, see Index.Detach)
//	  diffID       d32, if flagged
//	  uncompressed uvar (length of the tar stream)
//	  spanSize     uvar (the build option)
//	  notStreamable str (empty, or why the layer cannot be read lazily)
//	spans:
//	  count        uvar
//	  per span:
//	    usize      uvar (uncompressed length; offsets are the running sum)
//	    cdelta     uvar (blob offset minus the previous span's blob offset)
//	    csize      uvar (blob bytes to fetch)
//	    flags      1 byte: bits 0-2 = bits of the first byte that belong
//	               to the previous block; bit 3 = starts at a gzip member
//	               header; bit 4 (detached only) = a window digest follows
//	    window     str (zstd frame of the preceding <= 32 KiB; gzip
//	               only), if not detached
//	    wsum       d32 (sha256 of that window), if detached and flagged
//	    digest     d32 (sha256 of the csize fetched bytes)
//	    usum       d32 (sha256 of the usize uncompressed bytes), except
//	               in a tar index, where it is digest
//	files (in tar order, one entry per name; see ocilayer.Dedup):
//	  count        uvar
//	  per file:
//	    prefix     uvar (bytes shared with the previous name)
//	    suffix     str (the rest of the cleaned name)
//	    type       1 byte (tar type flag)
//	    mode       svar
//	    uid, gid   svar, svar
//	    uname      str
//	    gname      str
//	    size       uvar
//	    mtime      svar seconds, uvar nanoseconds
//	    linkname   str
//	    devmajor   svar
//	    devminor   svar
//	    pax        uvar count, then sorted key str, value str pairs
//	    offset     uvar  (regular files only)
//	    digest     d32   (regular files only)
//	trailer:
//	  checksum     d32 (sha256 of everything before it)
//
// Consecutive gzip spans share a byte when a checkpoint falls inside it
// (flags bits 0-2 non-zero): span i+1 starts at the byte where span i
// ends minus one. All other spans are back to back, the first starts at
// 0 and the last ends at blobSize. See FORMAT.md for the rationale and
// the measurements behind DefaultSpanSize.
package index
