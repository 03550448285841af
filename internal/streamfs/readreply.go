package streamfs

import (
	"context"
	"runtime"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/riffle-dev/riffle/internal/cache"
)

// spliceMaxRead bounds a FUSE read (fs.Options' MaxWrite sets the kernel's
// max_pages for reads too): a reply spliced to the kernel goes through a
// pipe that must hold its header, its data and one more page, and the
// default pipe-max-size is 1 MiB. go-fuse gives up splicing a larger
// reply (and logs each time).
const spliceMaxRead = 1<<20 - 2*4096

// readResult serves a reader's read of file n at off. A read within one
// span is spliced from the span's file in the cache to the kernel: the
// data is never copied into this process. A read across spans is copied
// into dest from each.
func (m *MountPoint) readResult(ctx context.Context, n *node, dest []byte, off, streak int64) (fuse.ReadResult, int, error) {
	spans := m.spans[n.layer]
	if off < n.size {
		pos, stop := n.off+off, n.off+min(off+int64(len(dest)), n.size)
		if i := spanAt(spans, pos); i < len(spans) && stop <= spans[i].Offset+spans[i].Size {
			ctx, cancel := context.WithTimeout(ctx, m.opts.ReadTimeout)
			defer cancel()
			e, k, err := m.readSpan(ctx, n, i, pos, stop, streak, prioBlocked)
			if err != nil {
				return nil, 0, err
			}
			return newSpanResult(e, pos-spans[i].Offset, int(k)), int(k), nil
		}
	}
	got, err := m.readFile(ctx, n, dest, off, streak, true)
	if err != nil {
		return nil, 0, err
	}
	// A vector reply is written as it is; go-fuse would first try (and
	// fail) to splice a plain data reply, costing a few system calls.
	return fuse.ReadResultVector([][]byte{dest[:got]}), got, nil
}

// spanResult is a read reply of n bytes at off in a cached span. go-fuse
// splices it from the span's file (Seekable), or reads it into its buffer
// (Bytes) when it cannot, then calls Done, which unpins the span.
type spanResult struct {
	e   *cache.Entry
	off int64
	n   int
}

func newSpanResult(e *cache.Entry, off int64, n int) *spanResult {
	r := &spanResult{e: e, off: off, n: n}
	// go-fuse skips Done for a reply it drops (the connection died):
	// unpin the span when the reply is collected then. Close is
	// idempotent.
	runtime.AddCleanup(r, func(e *cache.Entry) { e.Close() }, e)
	return r
}

// Seekable is go-fuse's interface for replies it can splice from a file.
func (r *spanResult) Seekable() (uintptr, int64, int) { return r.e.File().Fd(), r.off, r.n }

func (r *spanResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	got, err := r.e.ReadAt(buf[:min(len(buf), r.n)], r.off)
	if err != nil && got < min(len(buf), r.n) {
		return nil, fuse.EIO
	}
	return buf[:got], fuse.OK
}

func (r *spanResult) Size() int { return r.n }

func (r *spanResult) Done() { r.e.Close() }
