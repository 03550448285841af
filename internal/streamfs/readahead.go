package streamfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// DefaultKernelReadAhead is the kernel's read-ahead window on a mount
// (Options.KernelReadAhead): one FUSE read request of the largest size
// the mount allows (1 MiB less 8 KiB, see maxRead), so that a window
// is never split into a large and a tiny request.
//
// The kernel caps a FUSE mount's read-ahead at its default of 128 KiB,
// whatever the server asks for at init (fs.Options' MaxReadAhead), so a
// reader streaming a file served by this process got 128 KiB requests,
// eight round trips per MiB. The window is the mount's backing device's,
// which root can raise after mounting. A 4 MiB window read a big file no
// measurably faster (bench/streamfs), and a page fault in an mmap'ed file
// (shared libraries) reads the whole window around it, which on a cold
// mount is data fetched that nobody may read.
const DefaultKernelReadAhead = maxRead

// setKernelReadAhead sets the read-ahead window of the mount's FUSE
// connection (its backing device 0:conn) to n bytes. Not being able to is
// not an error worth failing a mount for: reads work, in smaller requests.
func (m *MountPoint) setKernelReadAhead(n int) {
	if m.conn < 0 || n <= 0 {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/0:%d/read_ahead_kb", m.conn)
	if err := os.WriteFile(p, []byte(strconv.Itoa(n>>10)), 0); err != nil {
		m.log.Warn("streamfs: setting the mount's read-ahead failed; reads of 128 KiB", "path", p, "err", err)
	}
}

// KernelReadAhead returns the kernel's read-ahead window on the mount, in
// bytes, or -1 when it cannot be read.
func (m *MountPoint) KernelReadAhead() int {
	b, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/0:%d/read_ahead_kb", m.conn))
	if err != nil {
		return -1
	}
	kb, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return -1
	}
	return kb << 10
}
