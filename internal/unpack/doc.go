// Package unpack extracts OCI images onto a directory: the normal, full
// pull. It is Riffle's fallback when an image cannot be streamed, and the
// reference the streaming filesystem is checked against, so its semantics
// are spelled out here.
//
// # Layer semantics
//
// Layers are applied in order, as containerd's applier does onto a single
// directory (the OCI image-spec "Applying changesets" rules):
//
//   - .wh.NAME removes NAME (and everything below it) from the lower layers;
//     .wh..wh..opq removes everything the lower layers put in its directory,
//     wherever the marker appears in the layer. Other .wh..wh.* names are
//     AUFS metadata and are skipped.
//   - An entry replaces whatever is at its path, except that a directory
//     entry over an existing directory merges: only the metadata changes.
//   - A hard link shares the inode of its target, which may come from this
//     layer or a lower one; its header's owner, mode, xattrs and mtime are
//     applied to that shared inode, as containerd does. So the last header
//     naming an inode decides its owner, mode and mtime; xattrs accumulate,
//     except security.capability, which the kernel drops on every chown
//     and which survives only if that last header carries it again.
//   - Owner (numeric uid/gid), mode including setuid, setgid and sticky,
//     PAX SCHILY.xattr.* attributes, device numbers and mtimes (also of
//     symlinks, and of directories once the layer is done) are applied.
//     Times before 1970 become 1970, as in containerd.
//   - The root entry ("./") is ignored: the caller owns the directory.
//
// Two choices go beyond containerd, to make the result a function of the
// layers alone (containerd leaves "now" in these places):
//
//   - A parent directory missing from the layer is created with mode 0755,
//     owner 0:0 and mtime 1970-01-01T00:00:00Z.
//   - A directory from a lower layer that this layer changes (adds or
//     removes a child) without restating it keeps its previous mtime, as a
//     merged view of the layers shows it.
//
// # Overlay format
//
// With [ApplyOptions].Overlay, [ApplyWith] extracts a layer on its own into
// an empty directory that overlayfs then uses as a lower layer (package
// layerstore keeps such directories), as containerd's overlay snapshotter
// does:
//
//   - .wh.NAME becomes NAME as a 0:0 character device, and .wh..wh..opq
//     the xattr trusted.overlay.opaque=y on its directory. Nothing else is
//     removed: the lower layers are other directories.
//   - A directory that replaces a whiteout of its own layer is made opaque,
//     as applying would have removed the lower directory first.
//   - trusted.overlay.* xattrs in the layer are dropped: overlayfs would
//     read them as its own (redirects, opaque marks).
//   - A hard link whose target is not in the layer fails with
//     [ErrCrossLayerLink]; overlayfs cannot link across layers.
//   - Paths resolve within the layer alone, so a missing parent is created
//     (0755, root, epoch) even where a lower layer has a symlink there.
//     Image builders list every directory a layer touches and never write
//     through a symlink, so images from them are not affected.
//
// [ApplyOptions].OnFile reports each regular file once its content is
// written and closed, with its data offset in the uncompressed stream (the
// same as the streaming index's) and its sha256. Content is copied through
// one pooled buffer per applier, in writes of up to 1 MiB, with no fsync:
// callers that need durability sync the filesystem once at the end.
//
// # Safety
//
// Names, whiteouts and hard-link targets follow internal/index/ocilayer,
// the rules the index and the streaming tree share: an absolute name or
// target is relative to the root, as containerd's archive.Apply and Docker
// take it; one with a ".." component is refused with [ErrUnsafePath]. The
// blob's compression is recognised from its first bytes, not its media
// type. Every path is resolved with
// openat2(RESOLVE_IN_ROOT), so symlinks in the image (including absolute
// ones and ones climbing with "..") resolve inside the directory, as they
// would inside the container: nothing outside it is ever read or written.
// Symlink targets themselves are data and are stored as given.
//
// Applying needs root for chown, mknod and security.* xattrs.
package unpack
