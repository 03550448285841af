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
// # Safety
//
// Entry names and hard-link targets that are absolute or contain a ".."
// component are refused with [ErrUnsafePath]. Every path is resolved with
// openat2(RESOLVE_IN_ROOT), so symlinks in the image (including absolute
// ones and ones climbing with "..") resolve inside the directory, as they
// would inside the container: nothing outside it is ever read or written.
// Symlink targets themselves are data and are stored as given.
//
// Applying needs root for chown, mknod and security.* xattrs.
package unpack
