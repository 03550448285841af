// Package imagegen builds OCI and Docker images for Riffle's tests and
// benchmarks: deterministic multi-layer images that contain every tar
// feature a layer can carry, so that the index, the streaming filesystem and
// the full-pull path can be checked against each other.
//
// # Specs
//
// A [Spec] lists layers; each [Layer] lists tar [Entry] values and chooses
// its compression (gzip, zstd, or none). [Build] turns a Spec into a
// go-containerregistry [v1.Image], which can be pushed with remote.Write,
// written as an OCI layout ([WriteOCILayout]) or as a `docker save` tarball
// ([WriteDockerSave]).
//
// Entries are written as given: names are not cleaned, so a test can build a
// hostile layer with `..` or absolute names. Whiteouts and opaque markers are
// entry types of their own ([Whiteout], [Opaque]) and are written with the
// AUFS names the OCI layer spec defines (.wh.NAME and .wh..wh..opq).
//
// # Determinism
//
// Building the same Spec twice yields byte-identical blobs and the same
// manifest digest: file content comes from a seeded ChaCha8 stream
// ([Content]), times default to a fixed instant, and gzip/zstd output carry no
// timestamps. Two equal layers in one Spec are therefore duplicate layers
// with the same digest, as registries see them in the wild.
//
// # Canned images
//
// [AllFeatures] is the canonical feature image (a few MB). [Large] makes the
// 5-layer image with one big layer that round-trip tests need; its blobs
// larger than a few MiB live in unlinked temporary files, not in memory.
// [DebianImage] builds a real Debian image from a debootstrap rootfs (root
// only, cached on disk).
package imagegen
