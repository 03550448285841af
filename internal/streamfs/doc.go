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
// changes). go-fuse's inodes are made on first lookup, not at mount.
// readdir lists a directory's entries in the order their data
// lies in the layers (a directory where its first file's data is, entries
// without data last, by name), so a reader walking the tree reads each
// layer front to back, as its stream arrives, and every mount of an image
// lists it the same way.
//
// A read maps the file's range to spans of its layer. Each span is taken
// from the node cache (internal/cache) under cache.SpanKey(layer, n), or
// fetched, verified by the index's digests and stored there; concurrent
// reads of a missing span share one fetch (cache.Fill is a singleflight).
// A layer whose index came detached (index.Index.Detach, from a remote
// index service) fetches the gzip window the first span of a request
// needs from OpenOptions.Windows at the same time as the range
// request, checks it against the index, and keeps it for the mount.
// A sequential read that reaches the last quarter of a span starts
// fetching the next span of the same file; a reader that misses span k of
// a layer right after reading span k-1 (walking many small files in layer
// order) gets the next spans of the layer fetched; and once a mount's
// readers have missed a few times, every miss fetches the next
// Options.MissAhead spans of its layer (not past the end of a versioned
// shared library or an executable: their neighbours are unrelated files).
// A read that blocks on a span of a file whose rest lies within the next
// span fetches that rest at the same time. The spans a blocked miss
// guesses come with it in one ranged GET (a missRun), decoded one by one
// as their bytes arrive, the missed span first. Opening a shared library
// or an executable of more than one span fetches its last 2 MiB (the data
// segment a loader relocates right after reading the header), and reading
// the start of an ELF object fetches the start and end of the libraries
// it needs (DT_NEEDED, internal/elfdeps), and theirs. While a layer's
// prefetch pack is coming, none of these guesses is made for it.
//
// # Background streams into the layer store
//
// With a layer store (Options.Layers, internal/layerstore), a mount also
// streams every layer whole in the background, a few layers at once, and
// the store extracts it, checking the layer's diffID. A layer whose index
// addresses its blob span by span (tar, gzip, zstd) streams in chunks: runs
// of about 1 MiB of spans decoded by two workers (verified against the
// span digests), put back in order. The chunks' compressed bytes come from
// one ranged GET per run of uncached spans, read as they arrive, so the
// link does not idle a round trip per chunk; a chunk read from the same
// GET as the one before decodes after that one's output, so a detached
// index needs no window for it. While the task is busy, chunks take turns
// with a GET each instead, each from its checkpoint's window, leaving out
// the spans at their ends that readers fetched meanwhile. Spans already
// in the node cache (read by the task, or from a pack) are copied from
// there instead, so nothing is fetched or decoded twice and a warm node
// settles without the registry. Chunk memory lives outside the Go heap and is reused.
// Other layers (or Options.SingleStream) stream with one GET each,
// decompressed by klauspost/compress. Each regular file the store reports
// is matched to the tree by layer and offset and checked against the
// index's digest; from then on it is "local": opens use FUSE passthrough
// on the extracted file (no copy, no second storage), and handles opened
// before read it from there. A layer already complete in the store is not
// fetched at all. Complete is closed when every layer is.
//
// Fetches are prioritised. Reads a process is blocked on come first. While
// their span fetches are in flight, or were within the last second, and
// the task neither follows the streams (opens files they made local) nor
// walks the image (has opened an eighth of its files), the chunk fetches
// of the mount take turns, one at a time and 200 ms apart (a single
// stream instead stops reading its response body, at most maxPause at a
// time, and TCP gives the link to the blocked reads). A read of a file
// within Options.StreamWait of its layer's stream, in a chunk the stream
// has already planned, waits for the stream instead of fetching spans;
// that layer's chunks then skip their turns, and the stream's threads,
// otherwise at nice 10, run at nice 0. A read further ahead fetches its
// spans by range, and the stream skips them. Between the two sits the
// startup profile.
//
// # Startup profile
//
// A mount records, per layer, the spans readers used first, in order,
// within a time and byte budget (MountPoint.Profile). Given such a profile
// (Options.Profile), a mount fetches those spans first, a few at a time,
// ahead of the background streams; reads of spans still queued simply
// fetch them (the cache shares the fetch).
//
// Without a profile, a mount fetches the same way the spans of the files
// Options.Hints name (the program the task executes, the dynamic loader,
// libc; up to MaxHintBytes each): a container's first reads are a chain
// of them, one round trip each, and the mount can start them while the
// runtime is still creating the container.
//
// # Prefetch packs
//
// With Options.Packs as well, each profiled layer's prefetch pack (the
// profile's spans' windows and compressed bytes in profile order, in one
// blob; see
// PackHeader) is fetched in one request, layers in parallel, before any
// span by range. Each span is checked against the index's span digest and
// decoded (two spans at a time, while the next arrive) before it enters
// the cache, so the pack's source is not trusted. A warm node fetches only
// the profile spans its cache lacks: by the pack while they are at least
// half of the layer's profile, else by range. Until the packs are read,
// the layer streams fetch no chunk. A read of a span the pack
// will deliver within Options.PackWait bytes waits for it (at most a few
// seconds) instead of fetching it; a read further ahead fetches by range.
// Spans the pack lacks, damaged ones, and the rest after a pack breaks
// are fetched by range as without a pack. A pack counts as profile
// prefetch (the background streams pause while it runs) and in the
// profile's hits.
//
// # Warm files: passthrough
//
// Reads this process serves are copied from the span's file (pread) into
// the reply, never spliced: go-fuse takes a short splice(2) for the end of
// the file, and a splice from disk stops short when a signal arrives. A
// file whose spans are all cached is read from them at once, not after
// waiting for a layer stream about to reach it.
//
// Without a layer store, when an open file has been read from its start to
// its end, its whole content is stored in the cache under its sha256 (from
// the index; the cache checks it), in the background. Later opens of that
// file, from any mount of any image holding the same content, use FUSE
// passthrough: the kernel reads the cache file directly, at local-disk
// speed, and this process sees no reads. The kernel does not allow
// passthrough and cached opens of one inode at once, so a file already
// open the cached way is opened the cached way until those opens are
// closed.
//
// # Failure
//
// Fetched data that does not match the index is never returned nor cached:
// the fetch is retried (Options.Retries times in all), then the read fails
// with EIO. Every FUSE read that needs the network is bounded by
// Options.ReadTimeout (a read(2) by about twice that, as the kernel retries
// a failed readahead page once), so a registry that hangs or dies makes reads fail
// with EIO instead of hanging; data already cached keeps being served, and
// reads work again once the registry is back (streamfs remembers nothing
// about the failure; after a long outage internal/remote fails requests
// at once until its probe, every few seconds, gets an answer).
//
// The last few failed fetches, with their layer and span and whether the
// data did not match its digest, are kept for callers to report
// (MountPoint.Problems): the EIO a reader sees says none of that. A
// registry that stops answering is recognised by internal/remote, whose
// requests (and so reads of data not yet local) then fail at once with
// remote.ErrUnreachable until the registry answers again.
//
// # Crashes and shutdown
//
// The /dev/fuse descriptor is close-on-exec, so that the processes a
// server starts (runc and containers) cannot keep a mount's connection
// open after the server dies: its readers then get ENOTCONN at once. A
// connection kept open anyway (an older binary, a descriptor passed on
// purpose) is ended by CleanupDir, which a restarted node runs on its
// leftover mounts: it aborts the connection through fusectl
// (/sys/fs/fuse/connections/N/abort, mounting fusectl when needed) before
// detaching the mount. UnmountWithin bounds an unmount: a busy mount is
// detached, and its connection aborted once the grace has passed.
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
// Each mount counts compressed bytes over the wire (spans by range and
// layer streams, each named so) and uncompressed bytes made available,
// spans fetched, cache hits and misses, failed and corrupt fetches,
// passthrough and local opens, stream pauses and waits, profile prefetches
// and hits, per-layer stream progress and fetch latency; Stats returns
// them and Collector exports them to Prometheus as riffle_streamfs_*,
// labelled by mount point and image.
package streamfs
