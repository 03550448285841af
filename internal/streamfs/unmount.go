package streamfs

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// afterAbort bounds the wait for this process's FUSE goroutines once the
// connection is aborted: they end as soon as their requests do.
const afterAbort = 2 * time.Second

// connOf returns the FUSE connection number of the top-most mount at dir,
// or -1.
func connOf(dir string) int {
	mounts, err := fuseMountsAt(dir)
	if err != nil || len(mounts) == 0 {
		return -1
	}
	return mounts[len(mounts)-1].conn
}

// UnmountWithin unmounts the image in at most about grace (0:
// Options.UnmountGrace), whatever its users do. A mount still in use is
// detached (processes holding files keep reading them) and, past grace,
// its FUSE connection is aborted: every request waiting on it, and every
// later one, fails at once, even one from a process that inherited
// /dev/fuse. It returns an error saying what it had to do when the mount
// did not go cleanly.
func (m *MountPoint) UnmountWithin(grace time.Duration) error {
	if grace <= 0 {
		grace = m.opts.UnmountGrace
	}
	if grace <= 0 {
		grace = DefaultUnmountGrace
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	// go-fuse's Unmount waits for its serve loops, which a reader blocked
	// on this process, or a leaked /dev/fuse, can hold indefinitely.
	unmounted := make(chan error, 1)
	go func() { unmounted <- m.server.Unmount() }()
	var err error
	select {
	case err = <-unmounted:
		if err == nil {
			m.shutdown()
			return nil
		}
		// Busy: detach it; it goes when its last file is closed.
		_ = unix.Unmount(m.dir, unix.MNT_DETACH)
		err = fmt.Errorf("streamfs: unmount %s: %w; detached", m.dir, err)
	case <-deadline.C:
		return m.abort(fmt.Errorf("streamfs: unmount %s: not done within %s", m.dir, grace))
	}
	served := make(chan struct{})
	go func() { m.server.Wait(); close(served) }()
	select {
	case <-served:
		m.shutdown()
		return err
	case <-deadline.C:
		return m.abort(fmt.Errorf("%w, and still in use after %s", err, grace))
	}
}

// abort ends the mount's FUSE connection and detaches it, then waits a
// little for this process's side to stop.
func (m *MountPoint) abort(why error) error {
	m.cancel() // fetches in progress end now
	aerr := abortConn(m.conn)
	if m.conn < 0 {
		aerr = fmt.Errorf("streamfs: %s: FUSE connection unknown, cannot abort", m.dir)
	}
	_ = unix.Unmount(m.dir, unix.MNT_DETACH)
	served := make(chan struct{})
	go func() { m.Wait(); close(served) }()
	t := time.NewTimer(afterAbort)
	defer t.Stop()
	select {
	case <-served:
	case <-t.C:
	}
	if aerr != nil {
		return fmt.Errorf("%w; %w", why, aerr)
	}
	return fmt.Errorf("%w; connection aborted", why)
}
