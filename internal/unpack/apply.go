package unpack

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/index/ocilayer"
)

// ErrUnsafePath is returned for a tar entry whose name or hard-link target
// contains ".." or NUL, or a whiteout of "." or "..": the rules are
// ocilayer's (an absolute name is relative to the root, as in containerd).
var ErrUnsafePath = errors.New("unpack: unsafe path in layer")

// ErrCrossLayerLink is returned in overlay mode for a hard link whose
// target is not in the layer itself. overlayfs cannot link across its
// layers, and what such a link shares depends on the layers below, so the
// layer cannot be extracted on its own.
var ErrCrossLayerLink = errors.New("unpack: hard link to a file of a lower layer; the layer cannot be extracted on its own")

const (
	// overlayXattrPrefix names the xattrs overlayfs reads from its layers.
	overlayXattrPrefix = "trusted.overlay."
	// opaqueXattr marks a directory that hides the lower layers' content.
	opaqueXattr = overlayXattrPrefix + "opaque"

	xattrPrefix = "SCHILY.xattr."
)

// Apply applies one layer, given as its uncompressed tar stream, onto dir,
// which must exist and hold the layers below it. The stream is read to its
// end, so a caller hashing it sees every byte.
func Apply(ctx context.Context, dir string, layer io.Reader) error {
	return ApplyWith(ctx, dir, layer, ApplyOptions{})
}

// ApplyOptions change how [ApplyWith] applies a layer. The zero value is
// [Apply]'s merged behaviour.
type ApplyOptions struct {
	// Overlay extracts the layer on its own into dir (normally empty) in
	// overlayfs format, as a lower directory of an overlay mount: see
	// "Overlay format" in the package doc.
	Overlay bool
	// OnFile, when set, is called synchronously, in stream order, after
	// each regular file's content has been written and its descriptor
	// closed. Files are hashed only when it is set.
	OnFile func(File)
	// NoFileDigests leaves File.Digest empty and hashes nothing per file:
	// for a caller that verified the stream as it read it (span by span
	// against a layer index), the per-file sha256 would be the same check
	// again (about 1 s of CPU for a 1.16 GB image).
	NoFileDigests bool
}

// File describes a regular file ApplyWith wrote, for ApplyOptions.OnFile.
type File struct {
	// Name is the entry's name cleaned ("usr/bin/ls"), as index.File.Name.
	Name string
	// Offset is where the file's data starts in the uncompressed stream
	// (the byte count read before it), as index.File.Offset.
	Offset int64
	Size   int64
	// Digest is the sha256 of the bytes written; empty with
	// ApplyOptions.NoFileDigests.
	Digest digest.Digest
	// Path is the absolute path of the written file. It differs from
	// dir/Name only when a parent is a symlink of this layer.
	Path string
}

// ApplyWith is Apply with options.
func ApplyWith(ctx context.Context, dir string, layer io.Reader, opts ApplyOptions) error {
	rootfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unpack: open %s: %w", dir, err)
	}
	a := &applier{
		ctx:      ctx,
		root:     rootfd,
		overlay:  opts.Overlay,
		onFile:   opts.OnFile,
		unpacked: map[dirent]bool{},
		gen:      map[inode]int{},
		touched:  map[dirID]touchedDir{},
		cacheFd:  -1,
		buf:      bufPool.Get().(*[]byte),
	}
	if a.onFile != nil && !opts.NoFileDigests {
		a.hash = sha256.New()
	}
	defer a.close()
	// archive/tar reads headers block by block and never reads ahead, so
	// the count read so far is the offset of an entry's data.
	cr := &countingReader{r: layer}
	tr := tar.NewReader(cr)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("unpack: read tar: %w", err)
		}
		if err := a.entry(hdr, tr, cr.n); err != nil {
			return err
		}
	}
	if err := a.finish(); err != nil {
		return err
	}
	// Drain what follows the end-of-archive marker (tar padding), so the
	// caller's digest covers the whole blob.
	if _, err := io.CopyBuffer(io.Discard, cr, *a.buf); err != nil {
		return fmt.Errorf("unpack: read tar: %w", err)
	}
	return nil
}

// bufPool holds the copy buffers of appliers, so that layers extracted in
// parallel or one after another do not each allocate one.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type inode struct{ dev, ino uint64 }

// dirID names a directory for the life of an applier: its inode and how
// many directories this applier has made with that inode number, since a
// removed directory's number comes back. A directory the layer replaced is
// so never taken for the one that replaced it.
type dirID struct {
	ino inode
	gen int
}

// dirent is a name in a directory, as the streaming tree keys what a layer
// unpacked: by the directory, however the entry's path reached it.
type dirent struct {
	dir  dirID
	name string
}

type touchedDir struct {
	name         string
	atime, mtime unix.Timespec
}

// namedDir is a directory the layer made or restated, with the header
// whose times it gets (nil for a created parent).
type namedDir struct {
	name string
	id   dirID
	hdr  *tar.Header
}

type applier struct {
	ctx     context.Context
	root    int
	overlay bool
	onFile  func(File)
	hash    hash.Hash // of one file's content; nil without onFile
	// unpacked holds the entries this layer has created, which an opaque
	// marker must not remove.
	unpacked map[dirent]bool
	gen      map[inode]int // see dirID
	dirs     []namedDir    // directory entries, whose times are set last
	implicit []namedDir    // parents created for entries without them
	touched  map[dirID]touchedDir
	// A one-entry cache of the last parent directory opened. It cannot go
	// stale: only a removal changes what an existing name resolves to,
	// and every removal happens below the cached directory itself.
	cacheName string
	cacheFd   int
	cachePath string // the cached directory's absolute path, once asked for
	buf       *[]byte
}

func (a *applier) close() {
	a.dropCache()
	unix.Close(a.root)
	bufPool.Put(a.buf)
}

func (a *applier) dropCache() {
	if a.cacheFd >= 0 {
		unix.Close(a.cacheFd)
	}
	a.cacheFd, a.cacheName, a.cachePath = -1, "", ""
}

// parentPath returns the absolute path of the directory parent last
// returned, as the kernel resolved it.
func (a *applier) parentPath() (string, error) {
	if a.cachePath == "" {
		p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(a.cacheFd))
		if err != nil {
			return "", err
		}
		a.cachePath = p
	}
	return a.cachePath, nil
}

// cleanName cleans a tar name or hard-link target by the rules every
// Riffle applier shares (ocilayer.CleanName): relative, "." for the root,
// a leading "/" dropped as containerd does, ".." refused.
func cleanName(name string) (string, error) {
	c, err := ocilayer.CleanName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsafePath, err)
	}
	return c, nil
}

func (a *applier) entry(hdr *tar.Header, r io.Reader, offset int64) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	cn, err := ocilayer.Classify(name)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsafePath, err)
	}
	dirName, base := cn.Dir, cn.Base
	switch cn.Kind {
	case ocilayer.Root, ocilayer.Meta:
		return nil // the root belongs to the caller; AUFS metadata is skipped
	case ocilayer.Whiteout, ocilayer.Opaque:
		if a.overlay {
			return a.overlayWhiteout(name, cn)
		}
		return a.whiteout(name, cn)
	}

	pfd, err := a.parent(dirName, true)
	if err != nil {
		return fmt.Errorf("unpack: %s: %w", name, err)
	}
	if err := a.touch(pfd, dirName); err != nil {
		return fmt.Errorf("unpack: %s: %w", name, err)
	}

	// Replace what is there, unless a directory meets a directory.
	var st unix.Stat_t
	replacedWhiteout := false
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if ocilayer.Replaces(st.Mode&unix.S_IFMT == unix.S_IFDIR, hdr.Typeflag == tar.TypeDir) {
			replacedWhiteout = a.overlay && isWhiteout(&st)
			if err := removeAllAt(pfd, base); err != nil {
				return fmt.Errorf("unpack: replace %s: %w", name, err)
			}
		}
	} else if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpack: %s: %w", name, err)
	}

	perm := uint32(hdr.Mode) & 0o7777
	isSymlink := false
	switch hdr.Typeflag {
	case tar.TypeDir:
		err := unix.Mkdirat(pfd, base, 0o700)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("unpack: mkdir %s: %w", name, err)
		}
		id, ierr := a.childID(pfd, base, err == nil)
		if ierr != nil {
			return fmt.Errorf("unpack: mkdir %s: %w", name, ierr)
		}
		if replacedWhiteout {
			// The layer deleted the lower NAME, then made a directory
			// there: nothing below may show through it.
			if err := setOpaque(pfd, base); err != nil {
				return fmt.Errorf("unpack: %s: %w", name, err)
			}
		}
		a.dirs = append(a.dirs, namedDir{name, id, hdr})
	case tar.TypeReg:
		if err := a.regular(pfd, base, name, offset, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("unpack: symlink %s: %w", name, err)
		}
		isSymlink = true
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("unpack: hard link %s: %w", name, err)
		}
		tdir, tbase := path.Split(target)
		tfd, err := a.openDir(path.Clean(tdir))
		if err == nil {
			err = unix.Linkat(tfd, tbase, pfd, base, 0)
			if err == nil {
				err = unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW)
			}
			unix.Close(tfd)
		}
		if err != nil && a.overlay && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)) {
			return fmt.Errorf("unpack: hard link %s -> %s: %w", name, target, ErrCrossLayerLink)
		}
		if err != nil {
			return fmt.Errorf("unpack: hard link %s -> %s: %w", name, target, err)
		}
		isSymlink = st.Mode&unix.S_IFMT == unix.S_IFLNK
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := uint32(unix.S_IFIFO)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode = unix.S_IFCHR
		case tar.TypeBlock:
			mode = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, mode|0o600, int(dev)); err != nil {
			return fmt.Errorf("unpack: mknod %s: %w", name, err)
		}
	default:
		return fmt.Errorf("unpack: %s: unsupported tar entry type %q", name, hdr.Typeflag)
	}
	if !a.overlay {
		pid, err := a.idOf(pfd)
		if err != nil {
			return fmt.Errorf("unpack: %s: %w", name, err)
		}
		a.unpacked[dirent{pid, base}] = true
	}

	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("unpack: chown %s: %w", name, err)
	}
	// After chown, which clears security.capability; before chmod, as
	// containerd does.
	regOrDir := -1 // unknown until an xattr asks
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, xattrPrefix)
		if !ok {
			continue
		}
		if a.overlay && strings.HasPrefix(attr, overlayXattrPrefix) {
			continue // overlayfs would read it as its own (redirects, opaque)
		}
		if regOrDir < 0 {
			if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("unpack: %s: %w", name, err)
			}
			regOrDir = 0
			if t := st.Mode & unix.S_IFMT; t == unix.S_IFREG || t == unix.S_IFDIR {
				regOrDir = 1
			}
		}
		if !ocilayer.XattrApplies(attr, regOrDir == 1) {
			continue
		}
		if err := unix.Lsetxattr(procPath(pfd, base), attr, []byte(v), 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				continue // the filesystem has no such namespace; containerd skips too
			}
			return fmt.Errorf("unpack: setxattr %s %s: %w", name, attr, err)
		}
	}
	if !isSymlink {
		// After chown, which clears setuid and setgid.
		if err := unix.Fchmodat(pfd, base, perm, 0); err != nil {
			return fmt.Errorf("unpack: chmod %s: %w", name, err)
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		if err := utimes(pfd, base, hdr); err != nil {
			return fmt.Errorf("unpack: set times of %s: %w", name, err)
		}
	}
	return nil
}

func procPath(fd int, base string) string {
	return "/proc/self/fd/" + strconv.Itoa(fd) + "/" + base
}

var epoch = time.Unix(0, 0)

func boundTime(t time.Time) time.Time {
	if t.Before(epoch) {
		return epoch
	}
	return t
}

func utimes(dirfd int, base string, hdr *tar.Header) error {
	mtime := boundTime(hdr.ModTime)
	atime := mtime
	if hdr.AccessTime.After(mtime) {
		atime = hdr.AccessTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	return unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// regular writes a regular file's content and reports it to onFile.
func (a *applier) regular(pfd int, base, name string, offset int64, r io.Reader) error {
	n, err := a.writeFile(pfd, base, r)
	if err != nil {
		return fmt.Errorf("unpack: write %s: %w", name, err)
	}
	if a.onFile == nil {
		return nil
	}
	dir, err := a.parentPath()
	if err != nil {
		return fmt.Errorf("unpack: %s: %w", name, err)
	}
	f := File{Name: name, Offset: offset, Size: n, Path: dir + "/" + base}
	if a.hash != nil {
		f.Digest = digest.NewDigest(digest.SHA256, a.hash)
	}
	a.onFile(f)
	return nil
}

// writeFile creates base in dirfd with the content r, hashing it when
// onFile wants digests, and returns its size. It copies through the
// applier's one buffer, in large writes, and does not fsync.
func (a *applier) writeFile(dirfd int, base string, r io.Reader) (int64, error) {
	fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, err
	}
	f := os.NewFile(uintptr(fd), base)
	if a.hash != nil {
		a.hash.Reset()
	}
	n, err := a.copyData(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

func (a *applier) copyData(f *os.File, r io.Reader) (int64, error) {
	buf := *a.buf
	var n int64
	for {
		// A long copy stops when ctx ends.
		if err := a.ctx.Err(); err != nil {
			return n, err
		}
		m, rerr := fill(r, buf)
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				return n, err
			}
			if a.hash != nil {
				a.hash.Write(buf[:m])
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// fill reads into buf until it is full or r fails; unlike io.ReadFull it
// passes every error through unchanged, so a truncated stream
// (io.ErrUnexpectedEOF from archive/tar) is never taken for the end of an
// entry (io.EOF).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (a *applier) whiteout(name string, cn ocilayer.Name) error {
	dirName := cn.Dir
	pfd, err := a.parent(dirName, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // nothing below to hide
	}
	if err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	if err := a.touch(pfd, dirName); err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	if cn.Kind == ocilayer.Opaque {
		fd, err := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("unpack: opaque %s: %w", dirName, err)
		}
		err = a.clearOpaque(fd, dirName)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("unpack: opaque %s: %w", dirName, err)
		}
		return nil
	}
	if err := removeAllAt(pfd, cn.Victim); err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	return nil
}

// overlayWhiteout writes a whiteout in overlayfs format: .wh.NAME becomes
// the 0:0 character device NAME and .wh..wh..opq the opaque xattr on its
// directory. The layers below are other directories, so nothing is
// removed but what this layer itself put at NAME.
func (a *applier) overlayWhiteout(name string, cn ocilayer.Name) error {
	dirName := cn.Dir
	pfd, err := a.parent(dirName, true)
	if err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	if err := a.touch(pfd, dirName); err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	if cn.Kind == ocilayer.Opaque {
		if err := setOpaque(pfd, "."); err != nil {
			return fmt.Errorf("unpack: opaque %s: %w", dirName, err)
		}
		return nil
	}
	if err := removeAllAt(pfd, cn.Victim); err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	if err := unix.Mknodat(pfd, cn.Victim, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	return nil
}

// isWhiteout reports whether st is an overlayfs whiteout.
func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// setOpaque marks the directory base in dirfd opaque for overlayfs.
func setOpaque(dirfd int, base string) error {
	return unix.Lsetxattr(procPath(dirfd, base), opaqueXattr, []byte("y"), 0)
}

// clearOpaque removes what the lower layers put below the directory open
// as fd, keeping what this layer unpacked there (the marker may come after
// the directory's new content).
func (a *applier) clearOpaque(fd int, dirName string) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	id, err := a.idOf(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		full := path.Join(dirName, n)
		if !a.unpacked[dirent{id, n}] {
			if err := removeAllAt(fd, n); err != nil {
				return err
			}
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		cfd, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = a.clearOpaque(cfd, full)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

// idOf returns the dirID of the directory open as fd.
func (a *applier) idOf(fd int) (dirID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return dirID{}, err
	}
	id := inode{st.Dev, st.Ino}
	return dirID{id, a.gen[id]}, nil
}

// childID returns the dirID of the directory base in dirfd; made says the
// applier has just created it, which starts a new generation.
func (a *applier) childID(dirfd int, base string, made bool) (dirID, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return dirID{}, err
	}
	id := inode{st.Dev, st.Ino}
	if made {
		a.gen[id]++
	}
	return dirID{id, a.gen[id]}, nil
}

func readDirNames(fd int) ([]string, error) {
	// Dup, as os.File takes ownership of (and closes) its descriptor.
	dfd, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dfd), "dir")
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return f.Readdirnames(-1)
}

// removeAllAt removes name in the directory dirfd and, for a directory,
// everything below it, never following a symlink.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// openDir resolves the directory dirName inside the root, following
// symlinks as if the root were "/".
func (a *applier) openDir(dirName string) (int, error) {
	for {
		fd, err := unix.Openat2(a.root, dirName, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // a concurrent rename elsewhere; openat2 asks to retry
		}
		return fd, err
	}
}

// parent returns a descriptor of the directory dirName, owned by the
// cache (callers must not close it). With create, missing directories are
// made as the package doc says.
func (a *applier) parent(dirName string, create bool) (int, error) {
	if a.cacheFd >= 0 && a.cacheName == dirName {
		return a.cacheFd, nil
	}
	fd, err := a.openDir(dirName)
	if errors.Is(err, unix.ENOENT) && create {
		fd, err = a.mkdirAll(dirName)
	}
	if err != nil {
		return -1, err
	}
	a.dropCache()
	a.cacheName, a.cacheFd = dirName, fd
	return fd, nil
}

func (a *applier) mkdirAll(dirName string) (int, error) {
	comps := strings.Split(dirName, "/")
	prev, err := unix.Openat2(a.root, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC})
	if err != nil {
		return -1, err
	}
	for i := range comps {
		prefix := strings.Join(comps[:i+1], "/")
		fd, err := a.openDir(prefix)
		if errors.Is(err, unix.ENOENT) {
			if err := a.touch(prev, strings.Join(comps[:i], "/")); err != nil {
				unix.Close(prev)
				return -1, err
			}
			if err := unix.Mkdirat(prev, comps[i], 0o755); err != nil {
				unix.Close(prev)
				return -1, fmt.Errorf("create parent %s: %w", prefix, err)
			}
			id, ierr := a.childID(prev, comps[i], true)
			if ierr != nil {
				unix.Close(prev)
				return -1, fmt.Errorf("create parent %s: %w", prefix, ierr)
			}
			a.implicit = append(a.implicit, namedDir{name: prefix, id: id})
			fd, err = a.openDir(prefix)
		}
		unix.Close(prev)
		if err != nil {
			return -1, fmt.Errorf("parent %s: %w", prefix, err)
		}
		prev = fd
	}
	return prev, nil
}

// touch records the times of directory fd before this layer changes its
// entries, so finish can restore them if the layer does not restate it.
func (a *applier) touch(fd int, dirName string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	ino := inode{st.Dev, st.Ino}
	id := dirID{ino, a.gen[ino]}
	if _, ok := a.touched[id]; !ok {
		if dirName == "" {
			dirName = "."
		}
		a.touched[id] = touchedDir{name: dirName, atime: st.Atim, mtime: st.Mtim}
	}
	return nil
}

// finish sets directory times, which creating entries inside them kept
// changing: restated directories get their header's times, created parents
// the epoch, and lower directories changed by this layer their old times.
func (a *applier) finish() error {
	done := map[dirID]bool{}
	// set gives the directory still at name the times ts, or with nil
	// its recorded old times, if it is still the directory want.
	set := func(name string, want dirID, ts []unix.Timespec) error {
		fd, err := a.openDir(name)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return nil // the name leads nowhere now: the directory was replaced
		}
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		id, err := a.idOf(fd)
		if err != nil {
			return err
		}
		if id != want || done[id] {
			return nil // replaced since it was recorded, or already set
		}
		done[id] = true
		if ts == nil {
			t := a.touched[id]
			if t.name != name {
				return nil
			}
			ts = []unix.Timespec{t.atime, t.mtime}
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, procPath(fd, "."), ts, 0)
	}
	// Later headers for the same directory win, so walk backwards.
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		mtime := boundTime(d.hdr.ModTime)
		atime := mtime
		if d.hdr.AccessTime.After(mtime) {
			atime = d.hdr.AccessTime
		}
		ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
		if err := set(d.name, d.id, ts); err != nil {
			return fmt.Errorf("unpack: set times of %s: %w", d.name, err)
		}
	}
	zero := []unix.Timespec{{}, {}}
	for _, d := range a.implicit {
		if err := set(d.name, d.id, zero); err != nil {
			return fmt.Errorf("unpack: set times of %s: %w", d.name, err)
		}
	}
	for id, t := range a.touched {
		if err := set(t.name, id, nil); err != nil {
			return fmt.Errorf("unpack: restore times of %s: %w", t.name, err)
		}
	}
	return nil
}
