package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
)

// BlobReader reads ranges of a layer blob from its registry; *remote.Blob
// is one. It must return when ctx is done.
type BlobReader interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// IndexLayer returns the Layer that index x describes, reading spans from
// blob. A layer that x says cannot be read lazily gives a
// *NotEligibleError.
func IndexLayer(x *index.Index, blob BlobReader) (Layer, error) {
	if x == nil {
		return nil, NotEligible("", "the layer has no index")
	}
	if !x.Streamable() {
		reason := x.NotStreamable
		if reason == "" {
			reason = "its index has no spans"
		}
		return nil, NotEligible(x.BlobDigest, "%s", reason)
	}
	return &indexLayer{x: x, blob: blob}, nil
}

type indexLayer struct {
	x    *index.Index
	blob BlobReader
}

func (l *indexLayer) Digest() digest.Digest { return l.x.BlobDigest }

func (l *indexLayer) Entries() []Entry {
	out := make([]Entry, 0, len(l.x.Files))
	for i := range l.x.Files {
		f := &l.x.Files[i]
		e := Entry{
			Name:     f.Name,
			Type:     f.Type,
			Mode:     f.Mode,
			UID:      int(f.UID),
			GID:      int(f.GID),
			Size:     f.Size,
			ModTime:  f.ModTime,
			Linkname: f.Linkname,
			Devmajor: f.Devmajor,
			Devminor: f.Devminor,
			Xattrs:   f.Xattrs(),
			Offset:   f.Offset,
		}
		if f.IsRegular() {
			e.Digest = digest.NewDigestFromBytes(digest.SHA256, f.Digest[:])
		}
		out = append(out, e)
	}
	return out
}

func (l *indexLayer) Spans() []Span {
	out := make([]Span, len(l.x.Spans))
	for i, s := range l.x.Spans {
		out[i] = Span{Offset: s.UOffset, Size: s.USize}
	}
	return out
}

func (l *indexLayer) FetchSpan(ctx context.Context, n int) ([]byte, error) {
	plan, err := l.x.PlanSpans(n, n+1)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, plan.Length)
	got, err := l.blob.ReadAtContext(ctx, buf, plan.Offset)
	if err != nil && !(errors.Is(err, io.EOF) && int64(got) == plan.Length) {
		return nil, fmt.Errorf("streamfs: fetch [%d, +%d) of %s: %w", plan.Offset, plan.Length, l.x.BlobDigest, err)
	}
	spans, err := l.x.Decode(plan, buf)
	if err != nil {
		if errors.Is(err, index.ErrCorrupt) {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil, err
	}
	return spans[0], nil
}
