package streamfs

import (
	"context"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// maxRead bounds a FUSE read (fs.Options' MaxWrite sets the kernel's
// max_pages for reads too). Replies are copied, not spliced (see
// readResult); the bound is from when they were spliced through a pipe
// that had to hold the header, the data and one more page within the
// default pipe-max-size of 1 MiB, and is kept: the read-ahead window
// (DefaultKernelReadAhead) is one such read.
const maxRead = 1<<20 - 2*4096

// readResult serves a reader's read of file n at off: the data is copied
// into dest from each span it lies in (pread from the span's file in the
// cache) and sent as a vector reply.
//
// A read within one span used to be spliced from the span's file to the
// kernel. go-fuse splices with one splice(2) call and takes a short count
// as the end of the file, replying with fewer bytes; the kernel then takes
// the file to end there. splice(2) from a file whose pages must come from
// disk can stop short when a signal arrives (the Go runtime preempts
// goroutines with SIGURG), so under load a file read back with a wrong
// end: TestEquivalenceDebian saw a file's content wrong in 2 of 13 runs
// when it read the layers in order. pread loops until the read is whole.
func (m *MountPoint) readResult(ctx context.Context, n *node, dest []byte, off, streak int64) (fuse.ReadResult, int, error) {
	got, err := m.readFile(ctx, n, dest, off, streak, true)
	if err != nil {
		return nil, 0, err
	}
	// A vector reply is written as it is; go-fuse would first try (and
	// fail) to splice a plain data reply, costing a few system calls.
	return fuse.ReadResultVector([][]byte{dest[:got]}), got, nil
}
