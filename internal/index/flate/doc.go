// Package flate is a fork of the decompressor of the Go standard library's
// compress/flate (Go 1.26; BSD license in LICENSE, kept as required) with
// two additions the layer index needs, in the manner of zlib's zran.c:
//
//   - while inflating, it reports every block boundary with its exact bit
//     offset in the compressed stream and the output offset
//     ([Decompressor.OnBlock]), and hands out the 32 KiB window there
//     ([Decompressor.Window]);
//   - it resumes inflating at such a boundary given the bit offset and the
//     window ([Resume]), so a span can be decompressed from bytes fetched
//     with a single HTTP Range request.
//
// The compressor is not forked; only inflate.go and dict_decoder.go are.
package flate
