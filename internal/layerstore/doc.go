// Package layerstore keeps a node's extracted image layers, one directory
// per layer, in the format overlayfs reads as a lower directory, as
// containerd's overlay snapshotter does. An image's root filesystem is
// then an overlay mount over its layers' directories (top-most first), and
// a layer shared by several images is extracted, stored and cached once.
//
// Both the full pull (package pull) and the streaming engine (which
// extracts layers from a background stream while a FUSE mount serves
// reads) fill the same store; several processes on one node (riffle serve,
// riffle pull) may use it at once.
//
// # Layout
//
//	DIR/sha256/HEX/fs        the layer's tree; Store.Path
//	DIR/sha256/HEX/complete  marker: the tree is whole and on disk (JSON:
//	                         diffID and bytes used)
//	DIR/sha256/HEX.lock      flock(2) held by the process extracting or
//	                         removing the layer
//
// HEX is the hex sha256 of the layer's uncompressed tar (its diffID, as
// the image config lists it). DIR/sha256 is mode 0700: the trees hold the
// images' setuid binaries and devices, which no other user of the host
// may reach.
//
// # Format
//
// A layer is extracted on its own (package unpack, overlay mode):
// whiteouts become 0:0 character devices, opaque markers the xattr
// trusted.overlay.opaque=y on their directory, and nothing of a lower layer
// is read or removed. Two consequences follow from keying a layer by its
// diffID alone, so that any image can share it whatever is below it:
//
//   - A hard link to a file of a lower layer cannot be extracted; Extract
//     fails with an error matching [unpack.ErrCrossLayerLink] and the
//     image needs the merged full pull instead. Image builders emit such
//     links rarely (a link made to a lower file is stored with its target
//     copied up into the layer).
//   - A parent directory a layer does not list is created 0755 root:root
//     with mtime 1970-01-01, and overlayfs shows the upper-most
//     directory's metadata; builders list every directory a layer touches.
//
// # Completeness and crashes
//
// Extract writes into Path directly (a path handed out while it runs stays
// valid), checks the stream's sha256 against the diffID, flushes the
// filesystem once with syncfs(2) (never an fsync per file), then writes the
// complete marker through a synced temporary file and a rename. So a layer
// with a marker is whole on disk after a crash, and one without is removed
// by the next [Open], unless a live process holds its lock.
package layerstore
