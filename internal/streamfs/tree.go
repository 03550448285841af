package streamfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/index/ocilayer"
)

// The tree is built in memory, once, before mounting: every stat, readdir,
// readlink and getxattr is answered from it. Its semantics are those of
// internal/unpack (see its package doc), which the tests compare it with;
// the differences that remain are listed in doc.go.

const maxSymlinks = 40 // as the kernel's MAXSYMLINKS

var epoch = time.Unix(0, 0).UTC()

// node is one inode of the merged tree. Hard links are one node under
// several names.
type node struct {
	typ      uint32 // S_IFMT bits
	perm     uint32 // mode & 07777
	uid, gid uint32
	mtime    time.Time
	size     int64
	link     string
	rdev     uint32 // the kernel's new_encode_dev form, as FUSE carries it
	xattrs   map[string]string
	children map[string]*node // directories only
	nlink    uint32
	ino      uint64
	layer    int   // regular files: index into Image.Layers
	off      int64 // regular files: data offset in the uncompressed stream
	digest   digest.Digest
	name     string // regular files: the entry's cleaned name in its layer
	// local is the path of the file extracted whole into the layer store
	// (nil until the background stream has written and checked it).
	local      atomic.Pointer[string]
	subdirs    uint32
	visitCount uint32
}

func newDir(perm uint32, mtime time.Time) *node {
	return &node{typ: unix.S_IFDIR, perm: perm, mtime: mtime, children: map[string]*node{}}
}

type dirent struct {
	dir  *node
	name string
}

type treeBuilder struct {
	root  *node
	layer int
	// unpacked holds the entries this layer added, which an opaque
	// whiteout keeps; nil for a layer without one (most: filling it cost
	// a mount of the bench image 30 ms of CPU).
	unpacked map[dirent]bool
	// lastDir is the parent directory name of the entry added last and
	// lastParent what it resolved to. Tar entries come grouped by
	// directory, and adding D/x cannot change what D resolves to (x is
	// below D), so the next entry in D skips the walk.
	lastDir    string
	lastParent *node
}

// buildTree merges the layers' file tables. It returns the root and every
// node in inode order (root first, inode 1).
func buildTree(layers [][]Entry, streamEnds []int64) (*node, []*node, error) {
	b := &treeBuilder{root: newDir(0o755, epoch)}
	for i, entries := range layers {
		b.layer = i
		b.unpacked = nil
		if hasOpaque(entries) {
			b.unpacked = map[dirent]bool{}
		}
		b.lastParent = nil
		for _, e := range entries {
			if err := b.add(e, streamEnds[i]); err != nil {
				return nil, nil, fmt.Errorf("layer %d: %w", i, err)
			}
		}
	}
	return b.root, b.root.number(), nil
}

// hasOpaque reports whether a layer's entries may hold an opaque whiteout
// marker (ocilayer.Classify decides, in add). Cleaning a name only drops
// empty and "." elements, so a marker's base name is in the raw name as
// it is.
func hasOpaque(entries []Entry) bool {
	for _, e := range entries {
		if strings.Contains(e.Name, ocilayer.OpaqueMarker) {
			return true
		}
	}
	return false
}

// cleanName cleans a tar name or hard-link target by the rules the index
// and the full pull share (ocilayer.CleanName): relative, "." for the
// root, a leading "/" dropped as containerd does, ".." refused.
func cleanName(name string) (string, error) {
	c, err := ocilayer.CleanName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsafePath, err)
	}
	return c, nil
}

// walk resolves the directory dir, following symlinks as if the root were
// "/" (as unpack's openat2(RESOLVE_IN_ROOT) does): ".." stops at the root,
// so nothing can lead out of the tree. With create, missing directories
// are made as unpack makes them (0755, 0:0, epoch).
func (b *treeBuilder) walk(dir string, create bool) (*node, error) {
	stack := []*node{b.root}
	todo := strings.Split(dir, "/")
	links := 0
	fromLink := 0 // how many of todo's first components come from symlinks
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		inLink := fromLink > 0
		if inLink {
			fromLink--
		}
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := stack[len(stack)-1]
		ch := cur.children[c]
		if ch == nil {
			// The full pull creates a missing parent by name, and a
			// dangling symlink is no name it can create (EEXIST).
			if !create || inLink {
				return nil, syscall.ENOENT
			}
			ch = newDir(0o755, epoch)
			cur.children[c] = ch
		}
		switch ch.typ {
		case unix.S_IFDIR:
			stack = append(stack, ch)
		case unix.S_IFLNK:
			if links++; links > maxSymlinks {
				return nil, syscall.ELOOP
			}
			if strings.HasPrefix(ch.link, "/") {
				stack = stack[:1]
			}
			expansion := strings.Split(ch.link, "/")
			todo = append(expansion, todo...)
			fromLink += len(expansion)
		default:
			return nil, syscall.ENOTDIR
		}
	}
	return stack[len(stack)-1], nil
}

// validDigest is d.Validate() == nil, without its regular expression for
// the sha256 digests every index gives.
func validDigest(d digest.Digest) bool {
	enc, ok := strings.CutPrefix(string(d), "sha256:")
	if !ok || len(enc) != 64 {
		return d.Validate() == nil
	}
	for i := 0; i < len(enc); i++ {
		if c := enc[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func boundTime(t time.Time) time.Time {
	if t.Before(epoch) {
		return epoch
	}
	return t
}

func (b *treeBuilder) add(e Entry, streamEnd int64) error {
	if e.Type == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(e.Name)
	if err != nil {
		return err
	}
	cn, err := ocilayer.Classify(name)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsafePath, err)
	}
	switch cn.Kind {
	case ocilayer.Root, ocilayer.Meta:
		return nil // the root is the mount's; AUFS metadata is skipped
	case ocilayer.Whiteout, ocilayer.Opaque:
		b.lastParent = nil
		return b.whiteout(name, cn)
	}
	dirName, base := cn.Dir, cn.Base
	parent := b.lastParent
	if parent == nil || b.lastDir != dirName {
		if parent, err = b.walk(dirName, true); err != nil {
			b.lastParent = nil
			return fmt.Errorf("streamfs: %s: %w", name, err)
		}
		b.lastDir, b.lastParent = dirName, parent
	}
	old := parent.children[base]
	if old != nil && ocilayer.Replaces(old.typ == unix.S_IFDIR, e.Type == tar.TypeDir) {
		delete(parent.children, base)
		old = nil
	}
	var n *node
	switch e.Type {
	case tar.TypeDir:
		n = old
		if n == nil {
			n = newDir(0, epoch)
		}
	case tar.TypeReg, tar.TypeRegA:
		if e.Size < 0 || e.Offset < 0 || e.Offset > streamEnd || e.Size > streamEnd-e.Offset {
			return fmt.Errorf("streamfs: %s: data [%d, +%d) lies outside the layer's stream of %d bytes", name, e.Offset, e.Size, streamEnd)
		}
		if e.Size > 0 && !validDigest(e.Digest) {
			return fmt.Errorf("streamfs: %s: invalid content digest %q", name, e.Digest)
		}
		n = &node{typ: unix.S_IFREG, size: e.Size, layer: b.layer, off: e.Offset, digest: e.Digest, name: name}
	case tar.TypeSymlink:
		n = &node{typ: unix.S_IFLNK, perm: 0o777, link: e.Linkname, size: int64(len(e.Linkname))}
	case tar.TypeLink:
		target, err := cleanName(e.Linkname)
		if err != nil {
			return fmt.Errorf("streamfs: hard link %s: %w", name, err)
		}
		tdir, tbase := path.Split(target)
		tparent, err := b.walk(path.Clean(tdir), false)
		if err == nil {
			n = tparent.children[tbase]
			if n == nil || tbase == "" {
				err = syscall.ENOENT
			} else if n.typ == unix.S_IFDIR {
				err = syscall.EPERM
			}
		}
		if err != nil {
			return fmt.Errorf("streamfs: hard link %s -> %s: %w", name, target, err)
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		typ := uint32(unix.S_IFIFO)
		switch e.Type {
		case tar.TypeChar:
			typ = unix.S_IFCHR
		case tar.TypeBlock:
			typ = unix.S_IFBLK
		}
		n = &node{typ: typ, rdev: encodeDev(uint32(e.Devmajor), uint32(e.Devminor))}
	default:
		return fmt.Errorf("streamfs: %s: unsupported tar entry type %q", name, e.Type)
	}
	parent.children[base] = n
	if b.unpacked != nil {
		b.unpacked[dirent{parent, base}] = true
	}

	// The header's metadata applies to the (possibly shared) inode, in
	// unpack's order: owner, xattrs (added to those there), mode, times.
	n.uid, n.gid = uint32(e.UID), uint32(e.GID)
	for k, v := range e.Xattrs {
		if !ocilayer.XattrApplies(k, n.typ == unix.S_IFREG || n.typ == unix.S_IFDIR) {
			continue
		}
		if n.xattrs == nil {
			n.xattrs = map[string]string{}
		}
		n.xattrs[k] = v
	}
	if n.typ != unix.S_IFLNK {
		n.perm = uint32(e.Mode) & 0o7777
	}
	n.mtime = boundTime(e.ModTime)
	return nil
}

func (b *treeBuilder) whiteout(name string, cn ocilayer.Name) error {
	parent, err := b.walk(cn.Dir, false)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
		return nil // nothing below to hide
	}
	if err != nil {
		return fmt.Errorf("streamfs: whiteout %s: %w", name, err)
	}
	if cn.Kind == ocilayer.Opaque {
		b.clearOpaque(parent)
		return nil
	}
	delete(parent.children, cn.Victim)
	return nil
}

// clearOpaque removes what lower layers put below d, keeping what this
// layer added (the marker may come after the directory's new content).
func (b *treeBuilder) clearOpaque(d *node) {
	for name, ch := range d.children {
		if !b.unpacked[dirent{d, name}] {
			delete(d.children, name)
		} else if ch.typ == unix.S_IFDIR {
			b.clearOpaque(ch)
		}
	}
}

// number assigns inode numbers in path order and link counts, and returns
// the reachable nodes in inode order.
func (root *node) number() []*node {
	var all []*node
	var visit func(n *node)
	visit = func(n *node) {
		n.visitCount++
		if n.visitCount > 1 {
			return // another name of a hard-linked inode
		}
		all = append(all, n)
		n.ino = uint64(len(all))
		if n.typ != unix.S_IFDIR {
			return
		}
		for _, name := range sortedNames(n.children) {
			ch := n.children[name]
			if ch.typ == unix.S_IFDIR {
				n.subdirs++
			}
			visit(ch)
		}
	}
	visit(root)
	for _, n := range all {
		if n.typ == unix.S_IFDIR {
			n.nlink = 2 + n.subdirs
		} else {
			n.nlink = n.visitCount
		}
	}
	return all
}

func sortedNames(m map[string]*node) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// encodeDev packs device numbers as the kernel's new_encode_dev, the
// 32-bit form FUSE attributes carry.
func encodeDev(major, minor uint32) uint32 {
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}
