package fstree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Type is the kind of file an entry is.
type Type string

// The file types; their values are what Diff prints.
const (
	Regular Type = "file"
	Dir     Type = "dir"
	Symlink Type = "symlink"
	Char    Type = "char"
	Block   Type = "block"
	Fifo    Type = "fifo"
	Socket  Type = "socket"
)

// Entry describes one path below the scanned root.
type Entry struct {
	// Path is slash-separated and relative to the root ("usr/bin/ls").
	Path string
	Type Type
	// Mode holds the permission bits and setuid, setgid and sticky
	// (Unix mode & 07777).
	Mode     uint32
	UID, GID uint32
	// Size is the length of a regular file or a symlink's target; zero
	// for other types, whose st_size is filesystem specific.
	Size int64
	// Mtime is the modification time, to the nanosecond.
	Mtime time.Time
	// Linkname is a symlink's target.
	Linkname string
	// Xattrs holds every extended attribute; nil when there are none.
	Xattrs map[string]string
	Nlink  uint64
	// Devmajor and Devminor are a device node's numbers.
	Devmajor, Devminor uint32
	// SHA256 is the hex digest of a regular file's content.
	SHA256 string
	// HardlinkTo is, for a non-directory whose inode has other names in
	// the tree, the first such path in Path order (itself for the first
	// one); empty otherwise. Comparing it compares the hard-link
	// structure without comparing inode numbers.
	HardlinkTo string
	// Ino is the inode number, for checks within one tree; Diff ignores it.
	Ino uint64
}

// Tree is a scanned directory: its entries sorted by Path.
type Tree []Entry

// Find returns the entry for path p.
func (t Tree) Find(p string) (Entry, bool) {
	i := sort.Search(len(t), func(i int) bool { return t[i].Path >= p })
	if i < len(t) && t[i].Path == p {
		return t[i], true
	}
	return Entry{}, false
}

// Scan walks the tree at root without following symlinks and records every
// path below it, hashing the content of every regular file.
func Scan(ctx context.Context, root string) (Tree, error) {
	type inode struct{ dev, ino uint64 }
	var tree Tree
	firstName := map[inode]string{}
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := Entry{
			Path:  filepath.ToSlash(rel),
			Mode:  st.Mode & 0o7777,
			UID:   st.Uid,
			GID:   st.Gid,
			Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC(),
			Nlink: uint64(st.Nlink),
			Ino:   st.Ino,
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			e.Type = Regular
			e.Size = st.Size
			if e.SHA256, err = hashFile(p, buf); err != nil {
				return err
			}
		case unix.S_IFDIR:
			e.Type = Dir
		case unix.S_IFLNK:
			e.Type = Symlink
			if e.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
			e.Size = int64(len(e.Linkname))
		case unix.S_IFCHR:
			e.Type = Char
		case unix.S_IFBLK:
			e.Type = Block
		case unix.S_IFIFO:
			e.Type = Fifo
		case unix.S_IFSOCK:
			e.Type = Socket
		default:
			return fmt.Errorf("unknown file type %#o", st.Mode&unix.S_IFMT)
		}
		if e.Type == Char || e.Type == Block {
			e.Devmajor, e.Devminor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		}
		if e.Xattrs, err = Xattrs(p); err != nil {
			return err
		}
		if e.Type != Dir && st.Nlink > 1 {
			id := inode{st.Dev, st.Ino}
			if first, ok := firstName[id]; ok {
				e.HardlinkTo = first
			} else {
				firstName[id] = e.Path
				e.HardlinkTo = e.Path
			}
		}
		tree = append(tree, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fstree: scan %s: %w", root, err)
	}
	// WalkDir's order is lexical per directory ("a/b" before "a.b"); sort
	// by the full path so Find and Diff can merge.
	sort.Slice(tree, func(i, j int) bool { return tree[i].Path < tree[j].Path })
	// HardlinkTo must be the smallest path of its group, whatever the walk
	// order was.
	groups := map[string]string{}
	for _, e := range tree {
		if e.HardlinkTo != "" {
			if g, ok := groups[e.HardlinkTo]; !ok || e.Path < g {
				groups[e.HardlinkTo] = e.Path
			}
		}
	}
	for i := range tree {
		if tree[i].HardlinkTo != "" {
			tree[i].HardlinkTo = groups[tree[i].HardlinkTo]
		}
	}
	return tree, nil
}

func hashFile(p string, buf []byte) (string, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Xattrs returns every extended attribute of p, not following a symlink;
// nil when it has none or the filesystem has no xattrs.
func Xattrs(p string) (map[string]string, error) {
	var names []byte
	for size := 256; ; size *= 4 {
		names = make([]byte, size)
		n, err := unix.Llistxattr(p, names)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("llistxattr %s: %w", p, err)
		}
		names = names[:n]
		break
	}
	var out map[string]string
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" {
			continue
		}
		val, err := getxattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %s %s: %w", p, name, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = val
	}
	return out, nil
}

func getxattr(p, name string) (string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}
