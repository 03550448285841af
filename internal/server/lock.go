package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile is the file in the data directory whose flock marks it as used by
// one riffle serve; it holds that server's PID. The file stays when the
// server stops (removing it would let two servers lock different files of
// one name); the lock, not the file, says whether a server runs.
const lockFile = "serve.lock"

// dataDirLock holds a data directory for the life of one server. Two servers
// on one directory would corrupt each other's state (the job store, the
// registry's uploads, the node cache), and bbolt's own lock only says
// "timeout".
type dataDirLock struct{ f *os.File }

// lockDataDir takes dir for this process, or returns an error naming the
// server that holds it.
func lockDataDir(dir string) (*dataDirLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, inUseError(dir)
		}
		return nil, fmt.Errorf("server: lock data dir %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("server: lock data dir %s: %w", dir, err)
	}
	return &dataDirLock{f: f}, nil
}

// Close releases the directory; closing again does nothing.
func (l *dataDirLock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// checkDataDir returns the in-use error when another server holds dir, and
// nil otherwise (also when dir or its lock file does not exist). It creates
// nothing.
func checkDataDir(dir string) error {
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return nil
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); errors.Is(err, syscall.EWOULDBLOCK) {
		return inUseError(dir)
	}
	return nil
}

// ErrDataDirInUse is returned (wrapped, with the other server's PID and
// address) when another riffle serve holds the data directory.
var ErrDataDirInUse = errors.New("data directory is in use by another riffle serve")

func inUseError(dir string) error {
	who := "pid unknown"
	if b, err := os.ReadFile(filepath.Join(dir, lockFile)); err == nil && strings.TrimSpace(string(b)) != "" {
		who = "pid " + strings.TrimSpace(string(b))
	}
	if addr, err := ReadAddr(dir); err == nil && addr != "" {
		who += ", listening on " + addr
	}
	return fmt.Errorf("server: %s: %w (%s); stop it, or give this one another --data-dir", dir, ErrDataDirInUse, who)
}
