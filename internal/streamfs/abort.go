package streamfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fusectlDir is where the kernel's fusectl filesystem lists FUSE
// connections; writing to N/abort ends connection N at once.
const fusectlDir = "/sys/fs/fuse/connections"

// mountCloexec is fs.Mount, except that the /dev/fuse descriptor is
// close-on-exec. go-fuse's direct mount (root) opens /dev/fuse without
// O_CLOEXEC, so every process started afterwards (runc and the container
// under it) would inherit it and keep the connection open after this
// process dies: readers of the mount would then hang instead of failing.
// ForkLock held for writing keeps any fork from happening between the
// open and the fix.
func mountCloexec(dir string, root fs.InodeEmbedder, opts *fs.Options) (*fuse.Server, error) {
	syscall.ForkLock.Lock()
	server, err := fuse.NewServer(fs.NewNodeFS(root, opts), dir, &opts.MountOptions)
	var cerr error
	if err == nil {
		cerr = fuseCloseOnExec()
	}
	syscall.ForkLock.Unlock()
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if cerr != nil {
		_ = server.Unmount()
		return nil, cerr
	}
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	return server, nil
}

// fuseCloseOnExec marks every descriptor of this process open on
// /dev/fuse close-on-exec. go-fuse does not say which one it opened; the
// others are ours already and must not leak either.
func fuseCloseOnExec() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("streamfs: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if t, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && t == "/dev/fuse" {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
				return fmt.Errorf("streamfs: close-on-exec on /dev/fuse: %w", err)
			}
		}
	}
	return nil
}

// fuseMount is a FUSE mount of this mount namespace.
type fuseMount struct {
	dir    string
	conn   int // the connection number: the device's minor
	fstype string
}

// fuseMountsAt lists the FUSE mounts stacked on dir, from
// /proc/self/mountinfo. It never touches dir itself: a mount whose server
// is gone would block the caller.
func fuseMountsAt(dir string) ([]fuseMount, error) {
	dir, err := canonical(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("streamfs: %w", err)
	}
	defer f.Close()
	var out []fuseMount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || sep+1 >= len(fields) {
			continue
		}
		fstype := fields[sep+1]
		if fstype != "fuse" && !strings.HasPrefix(fstype, "fuse.") {
			continue
		}
		if unescapeMountinfo(fields[4]) != dir {
			continue
		}
		_, minor, ok := strings.Cut(fields[2], ":")
		n, err := strconv.Atoi(minor)
		if !ok || err != nil {
			continue
		}
		out = append(out, fuseMount{dir: dir, conn: n, fstype: fstype})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("streamfs: mountinfo: %w", err)
	}
	return out, nil
}

// canonical resolves dir's parent (not dir: it may be a dead mount) to
// the path mountinfo shows.
func canonical(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("streamfs: %w", err)
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", fmt.Errorf("streamfs: %w", err)
	}
	return filepath.Join(parent, filepath.Base(abs)), nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space...) of
// mountinfo's paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// abortConn aborts FUSE connection n through fusectl, mounting fusectl
// first when it is not mounted. Every request waiting on the connection,
// and every later one, fails at once (ENOTCONN) whoever holds /dev/fuse.
func abortConn(n int) error {
	p := fmt.Sprintf("%s/%d/abort", fusectlDir, n)
	if _, err := os.Stat(filepath.Dir(p)); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("none", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("streamfs: mount fusectl on %s: %w", fusectlDir, err)
		}
	}
	if err := os.WriteFile(p, []byte("1"), 0o200); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // the connection is gone already
		}
		return fmt.Errorf("streamfs: abort FUSE connection %d: %w", n, err)
	}
	return nil
}

// AbortDir aborts the FUSE connections of the mounts at dir (see
// CleanupDir); the mounts stay, answering every request with an error.
// A dir with no FUSE mount is not an error.
func AbortDir(dir string) error {
	mounts, err := fuseMountsAt(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, fm := range mounts {
		errs = append(errs, abortConn(fm.conn))
	}
	return errors.Join(errs...)
}

// CleanupDir removes the FUSE mounts a dead process left at dir: it aborts
// their connections first, so that readers blocked on them (and
// processes holding files open) get an error at once instead of waiting
// for a server that will never answer (a descriptor inherited by a
// surviving child keeps such a connection open), then detaches them.
// A dir with no FUSE mount is not an error.
func CleanupDir(dir string) error {
	mounts, err := fuseMountsAt(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, fm := range mounts {
		errs = append(errs, abortConn(fm.conn))
	}
	// One detach per stacked mount, the top-most first.
	for _, fm := range mounts {
		if err := unix.Unmount(fm.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("streamfs: unmount %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}
