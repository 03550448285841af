// Package node is a node's image engine: everything a machine does to give
// containers their root filesystems, below every caller that needs one
// (riffle serve's Batch scheduler, riffle mount, riffle pull, riffle run).
//
// # Data directory
//
// Layout names every path of a data directory, so riffle serve and the CLI
// agree on where the node cache, the layer store, pulled images and mount
// points are. Defaults that more than one caller needs (DefaultCacheBytes,
// DefaultParallel) are constants here and nowhere else.
//
// # Images
//
// A Node resolves references with a registry client per credential and
// provides an image as a RootFS, read-only directories for an overlay:
//
//   - Pull extracts the image in full, once per manifest digest, shared by
//     every task;
//   - Stream mounts it lazily (package streamfs), once per manifest digest,
//     kept until Close so later tasks find its data warm;
//   - MountAt mounts it at a directory of the caller's (riffle mount).
//
// Work shared by several callers (a pull, a mount being made) runs under
// the node's lifetime, not the context of whichever caller started it: a
// caller that gives up stops waiting and the others go on. Close cancels
// that lifetime, waits for the work, and only then unmounts, so no mount
// is made after Close.
//
// A task started on an image from the layer store gets the files of the
// image's startup profile read into the page cache in the background,
// several at once, found through the layers' indexes in the node cache
// (warm.go; an image pulled without ever being streamed here has none):
// the data is local, but a task walking files reads them one small
// synchronous read at a time.
//
// # Indexes
//
// IndexSource is the one chain every caller uses to find a layer's index:
// the node cache first (a warm node fetches nothing but the manifest and
// config), then the configured index service, then index artifacts beside
// the image, then building the index from the layer. What is found is kept
// in the node cache.
package node
