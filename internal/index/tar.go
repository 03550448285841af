package index

import "io"

// buildTar indexes an uncompressed tar: spans are plain SpanSize slices
// of the blob, each with its digest, so reads are verified like any other.
func buildTar(x *Index, r io.Reader) error {
	c := &tarSpanReader{r: r, h: newBlobHasher(), x: x}
	ra := newReadAhead(c)
	defer ra.Close()
	if err := walkTar(x, ra); err != nil {
		return err
	}
	if c.h.n > c.start {
		c.cut()
	}
	x.BlobSize = c.h.n
	x.BlobDigest = c.h.blobDigest()
	return nil
}

type tarSpanReader struct {
	r     io.Reader
	h     *blobHasher
	x     *Index
	start int64 // where the current span started
}

func (c *tarSpanReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	b := p[:n]
	for len(b) > 0 {
		k := min(int64(len(b)), c.start+c.x.SpanSize-c.h.n)
		c.h.Write(b[:k])
		b = b[k:]
		if c.h.n == c.start+c.x.SpanSize {
			c.cut()
		}
	}
	return n, err
}

func (c *tarSpanReader) cut() {
	size := c.h.n - c.start
	d := c.h.cut()
	c.x.Spans = append(c.x.Spans, Span{UOffset: c.start, USize: size, COffset: c.start, CSize: size, Digest: d, USum: d})
	c.start = c.h.n
}
