package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// layerLock is a held flock(2) on DIR/sha256/HEX.lock, which excludes other
// processes (and other open files in this one) from extracting or removing
// the layer. The holder may delete the lock file; lockers that opened the
// deleted file notice and retry on the new one, so two never hold it.
type layerLock struct {
	f    *os.File
	path string
}

func (s *Store) lockPath(diffID digest.Digest) string {
	return filepath.Join(s.dir, "sha256", diffID.Encoded()+".lock")
}

// lock waits for the layer's lock until ctx ends. flock cannot be
// interrupted, so it polls; it contends only with another process working
// on the same layer.
func (s *Store) lock(ctx context.Context, diffID digest.Digest) (*layerLock, error) {
	delay := 2 * time.Millisecond
	for {
		l, ok, err := s.tryLock(diffID)
		if err != nil || ok {
			return l, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("layerstore: layer %s: waiting for another process: %w", diffID, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// tryLock takes the layer's lock if no one holds it.
func (s *Store) tryLock(diffID digest.Digest) (*layerLock, bool, error) {
	p := s.lockPath(diffID)
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("layerstore: lock %s: %w", diffID, err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, false, nil
		}
		if err != nil {
			f.Close()
			return nil, false, fmt.Errorf("layerstore: lock %s: %w", diffID, err)
		}
		if samePath(f, p) {
			return &layerLock{f: f, path: p}, true, nil
		}
		f.Close() // its holder deleted it after we opened it
	}
}

// samePath reports whether f is still the file at p.
func samePath(f *os.File, p string) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	pi, err := os.Stat(p)
	return err == nil && os.SameFile(fi, pi)
}

// remove deletes the lock file while the lock is held.
func (l *layerLock) remove() {
	_ = os.Remove(l.path) // a lock file left behind is harmless
}

func (l *layerLock) unlock() {
	l.f.Close() // closing the only descriptor releases the flock
}
