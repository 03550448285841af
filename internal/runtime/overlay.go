package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// overlayFlags are the options every task overlay is mounted with.
// index=off and xino=off: a lower layer may be a FUSE mount whose inode
// numbers and file handles overlayfs must not rely on.
var overlayFlags = [][2]string{{"index", "off"}, {"xino", "off"}}

// maxFsconfigString is the longest value fsconfig(2) takes as a string
// (the kernel copies at most 256 bytes, NUL included); a longer directory
// is passed as an open file descriptor instead.
const maxFsconfigString = 255

// mountOverlay stacks an overlayfs with the given upper and work directories
// on lower (top-most first) at target.
//
// It uses the new mount API (fsopen, one fsconfig "lowerdir+" per layer,
// fsmount, move_mount), which has no limit on the number of layers but
// overlayfs's own (500). mount(2) takes all options in one page, enough
// for only about 35 layer-store paths, and is used only on kernels without
// lowerdir+ (before Linux 6.8).
func mountOverlay(lower []string, upper, work, target string) error {
	if err := checkLower(lower); err != nil {
		return err
	}
	if !hasLowerdirAdd() {
		return legacyMountOverlay(lower, upper, work, target)
	}
	return fsmountOverlay(lower, upper, work, target)
}

// hasLowerdirAdd reports whether this kernel's overlayfs takes lower
// directories one at a time through fsconfig "lowerdir+". It asks once,
// with a path that has a comma and does not exist: Linux 6.8 and later
// look the path up (ENOENT); before 6.8 the key is unknown (EINVAL), and
// before 6.5, where fsconfig keys become a legacy mount(2) option string,
// a comma is refused (EINVAL); before 5.2 there is no fsopen (ENOSYS).
// Deciding up front, not from a failed mount's errno, keeps a genuine
// error of a mount from being retried through mount(2) and hidden.
var hasLowerdirAdd = sync.OnceValue(func() bool {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	err = unix.FsconfigSetString(fd, "lowerdir+", "/nonexistent,riffle-probe")
	return err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
})

// checkLower refuses lower directories that are not absolute paths of
// directories, or that the mount(2) fallback could not name.
func checkLower(lower []string) error {
	if len(lower) == 0 {
		return fmt.Errorf("%w: no lower directory for the root filesystem", ErrInvalidSpec)
	}
	for _, l := range lower {
		// overlayfs splits lowerdir on ':' and options on ','.
		if strings.ContainsAny(l, ":,") || !filepath.IsAbs(l) {
			return fmt.Errorf("%w: lower directory %q must be an absolute path without ':' or ','", ErrInvalidSpec, l)
		}
		if fi, err := os.Stat(l); err != nil {
			return fmt.Errorf("runtime: lower directory: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("%w: lower directory %q is not a directory", ErrInvalidSpec, l)
		}
	}
	return nil
}

// fsmountOverlay mounts the overlay through the new mount API.
func fsmountOverlay(lower []string, upper, work, target string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("runtime: fsopen overlay: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.FsconfigSetString(fd, "source", "overlay"); err != nil {
		return fsconfigError(fd, "source", err)
	}
	for _, l := range lower {
		if err := fsconfigDir(fd, "lowerdir+", l); err != nil {
			return err
		}
	}
	if err := fsconfigDir(fd, "upperdir", upper); err != nil {
		return err
	}
	if err := fsconfigDir(fd, "workdir", work); err != nil {
		return err
	}
	for _, kv := range overlayFlags {
		if err := unix.FsconfigSetString(fd, kv[0], kv[1]); err != nil {
			return fsconfigError(fd, kv[0], err)
		}
	}
	// volatile: no sync of the upper filesystem, ever. The upper
	// directory is the task's scratch and is removed with it, so nothing
	// in it needs to outlive a crash; without it the unmount after the
	// task syncs the whole filesystem holding the data directory, and a
	// task that ended while a layer was being written waited for that
	// layer to reach the disk (0.34 s after a cold read of the bench
	// image, against 0.07 s for an idle disk). The mount(2) fallback
	// leaves it out: its kernels may predate it (Linux 5.10).
	if err := unix.FsconfigSetFlag(fd, "volatile"); err != nil {
		return fsconfigError(fd, "volatile", err)
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fsconfigError(fd, "create", err)
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fsconfigError(fd, "fsmount", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("runtime: mount overlay at %s: %w", target, err)
	}
	return nil
}

// fsconfigDir sets key to the directory dir: as a string when the kernel
// takes it as one, else as an open descriptor (Linux 6.13).
func fsconfigDir(fd int, key, dir string) error {
	if len(dir) <= maxFsconfigString {
		if err := unix.FsconfigSetString(fd, key, dir); err != nil {
			return fsconfigError(fd, key+"="+dir, err)
		}
		return nil
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("runtime: overlay %s %s: %w", key, dir, err)
	}
	defer unix.Close(dfd)
	if err := unix.FsconfigSetFd(fd, key, dfd); err != nil {
		return fsconfigError(fd, key+"="+dir, err)
	}
	return nil
}

// fsconfigError wraps err with what the kernel logged on the filesystem
// context, which names the reason that the errno alone does not.
func fsconfigError(fd int, what string, err error) error {
	if msg := fsLog(fd); msg != "" {
		return fmt.Errorf("runtime: overlay %s: %w (%s)", what, err, msg)
	}
	return fmt.Errorf("runtime: overlay %s: %w", what, err)
}

// fsLog drains the messages the kernel queued on a filesystem context;
// reading it never blocks (ENODATA once empty).
func fsLog(fd int) string {
	var msgs []string
	buf := make([]byte, 512)
	for len(msgs) < 8 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

// legacyMountOverlay mounts the overlay with mount(2), whose options must
// fit in one page.
func legacyMountOverlay(lower []string, upper, work, target string) error {
	opts := legacyOverlayOptions(lower, upper, work)
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("runtime: overlay options for %d lower directories take %d bytes, more than a page (%d) that mount(2) accepts; use an image with fewer layers or a kernel with overlayfs lowerdir+ (Linux 6.8)",
			len(lower), len(opts), os.Getpagesize())
	}
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("runtime: mount overlay at %s: %w", target, err)
	}
	return nil
}

// legacyOverlayOptions is the mount(2) option string of an overlay.
func legacyOverlayOptions(lower []string, upper, work string) string {
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	for _, kv := range overlayFlags {
		opts += "," + kv[0] + "=" + kv[1]
	}
	return opts
}

// unmount unmounts target, retrying briefly while it is busy and then
// detaching it lazily so a stuck reader cannot make a task leak forever.
func unmount(target string) error {
	var err error
	for i := 0; i < 20; i++ {
		err = unix.Unmount(target, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // EINVAL: not a mount point (any more)
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err2 := unix.Unmount(target, unix.MNT_DETACH); err2 == nil || errors.Is(err2, unix.EINVAL) {
		return nil
	}
	return fmt.Errorf("runtime: unmount %s: %w", target, err)
}

// mountsUnder lists the mount points at or below dir from
// /proc/self/mountinfo, deepest first, so they can be unmounted in order.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	defer f.Close()
	dir = filepath.Clean(dir)
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("runtime: reading mountinfo: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for space etc.).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
