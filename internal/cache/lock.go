package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned (wrapped) by Open when another Cache, in this or
// another process, has the directory open.
var ErrLocked = errors.New("cache: directory is in use")

// lockFile takes an exclusive flock on dir/lock. flock belongs to the open
// file description, so it excludes a second Open in the same process as
// well as another process, and the kernel drops it when a process dies, so
// a crash never leaves a stale lock behind.
func lockFile(dir string) (*os.File, error) {
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner := ""
		if b, rerr := os.ReadFile(p); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				owner = fmt.Sprintf(" (held by pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s%s; each cache directory belongs to one process: stop the other riffle process or configure a different cache directory", ErrLocked, dir, owner)
		}
		return nil, fmt.Errorf("cache: lock %s: %w", p, err)
	}
	// The pid is only for the error message above; the lock is the flock.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
