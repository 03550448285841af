// Package streamfs mounts an OCI image lazily: one read-only FUSE
// filesystem per image, all layers merged in this process, whose file data
// is fetched from the registry span by span as it is read. It is meant to
// be the lower directory of an overlayfs whose upper directory belongs to
// one task.
//
// # Metadata up front, data on demand
//
// Mount takes an [Image]: per layer, a file table and a way to fetch
// verified spans of the layer's uncompressed stream (see [Layer]; the index
// package provides both through [IndexLayer], and [Open] builds an Image
// from a registry reference). Before anything is mounted the file tables
// are merged into one immutable tree in memory, with the semantics of a
// full pull by internal/unpack (whiteouts, opaque directories, hard links
// as one inode with the right link count, directory merges, implicit
// parents, hard-link metadata applied to the shared inode). So stat,
// readdir, readlink, getxattr and statfs never touch the network, and the
// kernel may cache entries and attributes for a day (the tree never
// changes).
//
// A read maps the file's range to spans of its layer. Each span is taken
// from the node cache (internal/cache) under cache.SpanKey(layer, n), or
// fetched, verified by the index's digests and stored there; concurrent
// reads of a missing span share one fetch (cache.Fill is a singleflight).
// A sequential read that reaches the last quarter of a span starts
// fetching the next span of the same file.
//
// # Warm files: passthrough
//
// When an open file has been read from its start to its end, its whole
// content is stored in the cache under its sha256 (from the index; the cache
// checks it), in the background. Later opens of that file, from any mount
// of any image holding the same content, use FUSE passthrough: the kernel
// reads the cache file directly, at local-disk speed, and this process
// sees no reads. The kernel does not allow passthrough and cached opens of
// one inode at once, so a file already open the cached way is opened the
// cached way until those opens are closed.
//
// # Failure
//
// Fetched data that does not match the index is never returned nor cached:
// the fetch is retried (Options.Retries times in all), then the read fails
// with EIO. Every FUSE read that needs the network is bounded by
// Options.ReadTimeout (a read(2) by about twice that, as the kernel retries
// a failed readahead page once), so a registry that hangs or dies makes reads fail
// with EIO instead of hanging; data already cached keeps being served, and
// reads work again once the registry is back (nothing is remembered about
// the failure).
//
// # Safety
//
// Names and hard-link targets follow internal/index/ocilayer, as the full
// pull does: an absolute one is relative to the image root (as containerd
// takes it), one with ".." is refused (ErrUnsafePath). Parent directories are
// resolved through the image's own symlinks with ".." stopping at the
// image root, as openat2(RESOLVE_IN_ROOT) does, so no entry can land
// outside the tree; the tree is all the mount can show. Symlink targets
// are data, returned verbatim by readlink and resolved by the kernel in
// the reader's namespace (inside the container).
//
// # Eligibility
//
// Streaming needs a streamable index for every layer. [Open] and [Mount]
// report a layer without one, or a manifest that cannot be streamed, as a
// [*NotEligibleError] (errors.Is(err, ErrNotEligible)) before anything is
// mounted; the caller falls back to a full pull.
//
// # Differences from a full pull
//
//   - The mount root is the image's: mode 0755, owner 0:0, mtime 1970 (a
//     full pull leaves the root directory to the caller).
//   - Directory link counts are 2 + subdirectories, as on ext4 and tmpfs.
//   - Files carry the index's digest-verified content. A layer that names
//     one path twice streams only where the index's one entry per name
//     gives the same tree as the full pull (ocilayer.Dedup); otherwise its
//     index is not streamable and the image is pulled in full.
//
// # Metrics
//
// Each mount counts bytes and spans fetched, cache hits and misses, failed
// and corrupt fetches, passthrough opens and fetch latency; Stats returns
// them and Collector exports them to Prometheus as riffle_streamfs_*,
// labelled by mount point and image.
package streamfs
