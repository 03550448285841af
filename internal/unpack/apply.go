package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is returned for a tar entry whose name or hard-link target
// is absolute or contains "..".
var ErrUnsafePath = errors.New("unpack: unsafe path in layer")

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
	xattrPrefix    = "SCHILY.xattr."
)

// Apply applies one layer, given as its uncompressed tar stream, onto dir,
// which must exist and hold the layers below it. The stream is read to its
// end, so a caller hashing it sees every byte.
func Apply(ctx context.Context, dir string, layer io.Reader) error {
	rootfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unpack: open %s: %w", dir, err)
	}
	a := &applier{
		ctx:      ctx,
		root:     rootfd,
		unpacked: map[string]bool{},
		touched:  map[inode]touchedDir{},
		cacheFd:  -1,
		buf:      make([]byte, 1<<20),
	}
	defer a.close()
	tr := tar.NewReader(layer)
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
		if err := a.entry(hdr, tr); err != nil {
			return err
		}
	}
	if err := a.finish(); err != nil {
		return err
	}
	// Drain what follows the end-of-archive marker (tar padding), so the
	// caller's digest covers the whole blob.
	if _, err := io.CopyBuffer(io.Discard, layer, a.buf); err != nil {
		return fmt.Errorf("unpack: read tar: %w", err)
	}
	return nil
}

type inode struct{ dev, ino uint64 }

type touchedDir struct {
	name         string
	atime, mtime unix.Timespec
}

type applier struct {
	ctx  context.Context
	root int
	// unpacked holds the cleaned names this layer has created, which an
	// opaque marker must not remove.
	unpacked map[string]bool
	dirs     []*tar.Header // directory entries, whose times are set last
	implicit []string      // parents created for entries without them
	touched  map[inode]touchedDir
	// A one-entry cache of the last parent directory opened. It cannot go
	// stale: only a removal changes what an existing name resolves to,
	// and every removal happens below the cached directory itself.
	cacheName string
	cacheFd   int
	buf       []byte
}

func (a *applier) close() {
	a.dropCache()
	unix.Close(a.root)
}

func (a *applier) dropCache() {
	if a.cacheFd >= 0 {
		unix.Close(a.cacheFd)
	}
	a.cacheFd, a.cacheName = -1, ""
}

// cleanName checks a tar name or hard-link target and returns it cleaned
// and relative ("." for the root).
func cleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: %q is absolute", ErrUnsafePath, name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: %q contains \"..\"", ErrUnsafePath, name)
		}
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: %q contains NUL", ErrUnsafePath, name)
	}
	return path.Clean(name), nil
}

func (a *applier) entry(hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		return nil // the root belongs to the caller
	}
	if strings.HasPrefix(name, whiteoutMeta) {
		return nil // AUFS metadata (.wh..wh.plnk and the like)
	}
	dirName, base := path.Split(name)
	dirName = path.Clean(dirName)

	if strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(name, dirName, base)
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
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if !(st.Mode&unix.S_IFMT == unix.S_IFDIR && hdr.Typeflag == tar.TypeDir) {
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
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("unpack: mkdir %s: %w", name, err)
		}
		a.dirs = append(a.dirs, hdr)
	case tar.TypeReg:
		if err := a.writeFile(pfd, base, r); err != nil {
			return fmt.Errorf("unpack: write %s: %w", name, err)
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
		if err != nil {
			return fmt.Errorf("unpack: hard link %s -> %s: %w", name, target, err)
		}
		err = unix.Linkat(tfd, tbase, pfd, base, 0)
		if err == nil {
			err = unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
		unix.Close(tfd)
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
	a.unpacked[name] = true

	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("unpack: chown %s: %w", name, err)
	}
	// After chown, which clears security.capability; before chmod, as
	// containerd does.
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, xattrPrefix)
		if !ok {
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

func (a *applier) writeFile(dirfd int, base string, r io.Reader) error {
	fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	_, err = io.CopyBuffer(f, ctxReader{a.ctx, r}, a.buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (a *applier) whiteout(name, dirName, base string) error {
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
	if base == opaqueMarker {
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
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("%w: whiteout %q", ErrUnsafePath, name)
	}
	if err := removeAllAt(pfd, victim); err != nil {
		return fmt.Errorf("unpack: whiteout %s: %w", name, err)
	}
	return nil
}

// clearOpaque removes what the lower layers put below the directory open
// as fd, keeping what this layer unpacked there (the marker may come after
// the directory's new content).
func (a *applier) clearOpaque(fd int, dirName string) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		full := path.Join(dirName, n)
		if !a.unpacked[full] {
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
			a.implicit = append(a.implicit, prefix)
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
	id := inode{st.Dev, st.Ino}
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
	done := map[inode]bool{}
	set := func(name string, ts []unix.Timespec) error {
		fd, err := a.openDir(name)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		id := inode{st.Dev, st.Ino}
		if done[id] {
			return nil
		}
		done[id] = true
		if ts == nil {
			t, ok := a.touched[id]
			if !ok || t.name != name {
				return nil // replaced since it was recorded
			}
			ts = []unix.Timespec{t.atime, t.mtime}
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, procPath(fd, "."), ts, 0)
	}
	// Later headers for the same directory win, so walk backwards.
	for i := len(a.dirs) - 1; i >= 0; i-- {
		hdr := a.dirs[i]
		name, _ := cleanName(hdr.Name)
		mtime := boundTime(hdr.ModTime)
		atime := mtime
		if hdr.AccessTime.After(mtime) {
			atime = hdr.AccessTime
		}
		ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
		if err := set(name, ts); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unpack: set times of %s: %w", name, err)
		}
	}
	zero := []unix.Timespec{{}, {}}
	for _, name := range a.implicit {
		if err := set(name, zero); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unpack: set times of %s: %w", name, err)
		}
	}
	for _, t := range a.touched {
		if err := set(t.name, nil); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("unpack: restore times of %s: %w", t.name, err)
		}
	}
	return nil
}
