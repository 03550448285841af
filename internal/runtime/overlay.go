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
	"time"

	"golang.org/x/sys/unix"
)

// mountOverlay stacks an overlayfs with the given upper and work directories
// on lower (top-most first) at target.
func mountOverlay(lower []string, upper, work, target string) error {
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
	// index=off and xino=off: the lower layer may be a FUSE mount whose
	// inode numbers and file handles overlayfs must not rely on.
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=off,xino=off",
		strings.Join(lower, ":"), upper, work)
	if len(opts) >= os.Getpagesize() {
		return fmt.Errorf("runtime: overlay options for %d lower directories exceed a page; use fewer layers", len(lower))
	}
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("runtime: mount overlay at %s: %w", target, err)
	}
	return nil
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
