// Package fstree records a directory tree as a sorted list of comparable
// entries and reports the differences between two such lists. Riffle's
// equivalence tests scan a lazily mounted image and a full extraction of
// the same image (package unpack) and require Diff to be empty.
//
// An [Entry] holds what an image defines about a path: type, permission
// and special mode bits, numeric owner, size, mtime in nanoseconds, symlink
// target, every extended attribute (llistxattr), nlink, device numbers, the
// sha256 of a regular file's content, and which other path it shares an
// inode with. Properties no image defines (inode numbers, directory sizes,
// atime, ctime) are left out, so trees on different filesystems compare
// equal. The root directory itself is not an entry: its owner and mode
// belong to whoever made it.
package fstree
