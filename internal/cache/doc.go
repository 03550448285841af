// Package cache is the node's content-addressed cache on disk: one
// directory shared by every image and FUSE mount on the node, kept across
// restarts, bounded by a size limit with LRU eviction, and safe under
// concurrent use. It never serves unverified or partial data.
//
// # Keys
//
// A key is either
//
//   - a digest, "sha256:<hex>" (sha384 and sha512 too): the content must
//     hash to it, and Fill checks that before storing. streamfs stores whole
//     file contents this way (so identical files are shared across images),
//     and the full-pull path whole layers;
//   - a span key, SpanKey(layer, n) = "span:<layer digest>:<n>": span n of a
//     layer's uncompressed stream. The layer digest covers the compressed
//     blob, so the cache cannot check the data: the caller verifies it (from
//     the index's span digests) before its fill function writes it.
//
// Only canonical spellings are accepted, so a key maps to exactly one file
// and can never name a path outside the directory.
//
// # Filling and sharing
//
// Fill returns the entry, running the caller's fill function when it is
// absent. Concurrent Fills of one key run the function once and all get its
// result; the function runs on its own goroutine, so a caller that gives up
// (its ctx is done) gets ctx.Err() without failing the others, and the fill
// is cancelled only when every caller has given up. This is why fill takes a
// context, unlike a plain func(io.Writer) error.
//
// Data is written to a temporary file, checked (digest, size), stamped and
// renamed into place; only then is it visible. On any failure
// nothing is stored and every waiting caller gets the error. Get does not
// wait for fills; it reports ErrNotFound.
//
// An Entry pins its file until Close. Entry.File is a read-only descriptor
// of the real file, suitable for FUSE passthrough.
//
// # Eviction
//
// Recency is kept in memory (a list moved on every hit) and persisted as the
// entry's mtime, at most once per Options.TouchInterval per entry, so the
// hit path costs no extra system call in the common case. Open rebuilds the
// order by sorting entries by mtime. After each fill, and when an entry is
// unpinned, the least recently used unpinned entries are deleted until the
// total size is within Options.MaxBytes.
//
// Pinned entries are never evicted. Unlinking an open file would be safe on
// Linux, but its blocks stay allocated until the last descriptor (possibly a
// kernel passthrough backing file) closes, so the cache would undercount
// the disk it really uses. Instead the total may exceed MaxBytes while
// readers hold more than that (Stats.PinnedBytes shows it), and the entries
// are evicted on their last Close if still least recently used. An entry
// larger than MaxBytes is served, then evicted once unpinned.
//
// Sizes are file sizes; block rounding and running fills' temporary files
// are not counted.
//
// # Crashes and restarts
//
// Entries appear only by rename, so after a process crash an entry is
// complete or absent. Entries are not fsynced one by one (for small files
// the fsync cost more than the data): Sync, and Close, sync the cache's
// filesystem once and record the stamp up to which entries are durable
// (DIR/synced). DIR/dirty exists from Open to Close; an Open that finds it
// (the previous owner crashed or was killed) distrusts entries stamped
// after the last sync: span entries, which the cache cannot check, are
// dropped (Stats.Unsynced), digest entries are re-hashed on first use.
// Open deletes the temporary directory, which is all a crash can leave
// behind otherwise. Digest-keyed entries found at Open can also be
// re-hashed on first use in general (Options.VerifyOnLoad), at the cost of
// reading each once per process; it is off by default because the data was
// verified before it became visible and synced before it was trusted, so
// only disk corruption or tampering could change it. Options.NoSync turns
// this bookkeeping off.
//
// One process owns a directory at a time: Open takes an flock on dir/lock
// and fails with ErrLocked if another Cache holds it; the kernel releases
// the lock when a process dies. Open also refuses a non-empty directory
// that is not a cache (no VERSION file), so a misconfigured path never
// loses anyone's files.
//
// # Layout
//
//	DIR/VERSION                          format marker
//	DIR/lock                             flock; holds the owner's pid
//	DIR/dirty                            exists while an owner has it open
//	DIR/synced                           stamp of the last Sync
//	DIR/tmp/fill-*                       fills in progress
//	DIR/blobs/<alg>/<hex[:2]>/<hex>      digest-keyed entries
//	DIR/spans/<alg>/<hex[:2]>/<hex>.<n>  span n of layer <alg>:<hex>
//	DIR/indexes/<alg>/<hex[:2]>/<hex>    index of layer <alg>:<hex>
//
// # Metrics
//
// Stats returns counters; Collector exports them to Prometheus as
// riffle_cache_*.
package cache
