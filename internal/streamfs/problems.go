package streamfs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// maxProblems is how many fetch failures a mount remembers.
const maxProblems = 8

// Problem is a failed fetch of a span from the registry.
type Problem struct {
	// Time is when the fetch failed.
	Time time.Time
	// Layer is the layer's (compressed) digest, Span the span's number in
	// its index, and Offset and Size where the span lies in the layer's
	// uncompressed tar stream.
	Layer        digest.Digest
	Span         int
	Offset, Size int64
	// Corrupt is set when the data arrived but did not match its digest
	// (ErrCorrupt).
	Corrupt bool
	// Err is the fetch's error.
	Err error
}

// String names the layer, the span and what went wrong, for events and
// logs.
func (p Problem) String() string {
	what := "could not be fetched"
	if p.Corrupt {
		what = "does not match its digest"
	}
	return fmt.Sprintf("layer %s span %d (bytes %d-%d of the layer's tar) %s: %v", p.Layer, p.Span, p.Offset, p.Offset+p.Size, what, p.Err)
}

// problemLog keeps the last maxProblems fetch failures of a mount.
type problemLog struct {
	mu   sync.Mutex
	last []Problem
}

// recordProblem remembers that fetching span s of layer l failed with err.
// A fetch its caller gave up on (unmount, a prefetch dropped) is not one.
func (m *MountPoint) recordProblem(l, s int, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	sp := m.spans[l][s]
	p := Problem{Time: time.Now(), Layer: m.img.Layers[l].Digest(), Span: s, Offset: sp.Offset, Size: sp.Size,
		Corrupt: errors.Is(err, ErrCorrupt), Err: err}
	m.problems.mu.Lock()
	defer m.problems.mu.Unlock()
	if len(m.problems.last) == maxProblems {
		m.problems.last = append(m.problems.last[:0], m.problems.last[1:]...)
	}
	m.problems.last = append(m.problems.last, p)
}

// Problems returns the mount's last few failed span fetches, oldest
// first (retries included), so that a caller can say which layer and
// span failed and why: data that does not match its digest, or a
// registry that cannot be reached.
func (m *MountPoint) Problems() []Problem {
	m.problems.mu.Lock()
	defer m.problems.mu.Unlock()
	return append([]Problem(nil), m.problems.last...)
}
