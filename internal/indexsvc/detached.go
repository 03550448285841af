package indexsvc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// A node fetches a layer's index detached (index.Index.Detach): the file
// table and the spans with a digest of each span's gzip window, not the
// windows (about 12 KB a span, most of a gzip layer's index). It fetches a
// window only when it reads a span that is not cached, in parallel with
// the span's range request, so smaller spans do not make the index a node
// needs before its first read any bigger.

// detachedCache keeps the detached encodings and the windows of the
// layers most recently asked for, within maxDetachedBytes, so a window
// request does not parse the whole index again.
type detachedCache struct {
	mu     sync.Mutex
	layers map[digest.Digest]*detachedLayer
	order  []digest.Digest // least recently used first
	bytes  int64
}

type detachedLayer struct {
	raw     []byte   // the detached index, marshalled
	windows [][]byte // by span (gzip layers only)
	spans   int      // how many spans the index has
	size    int64

	gzOnce sync.Once
	gz     []byte // raw gzipped, for clients that accept it; nil if that failed
}

// gzipped returns the detached index gzip-compressed, made at the first
// request that accepts gzip. File tables compress well (the bench image's
// 2.47 MB to 1.59 MB: names, modes and offsets; the file digests do not),
// and a cold node waits for them before its first read.
func (l *detachedLayer) gzipped() []byte {
	l.gzOnce.Do(func() {
		var b bytes.Buffer
		zw, err := gzip.NewWriterLevel(&b, gzip.DefaultCompression)
		if err != nil {
			return
		}
		if _, err := zw.Write(l.raw); err != nil {
			return
		}
		if zw.Close() == nil && b.Len() < len(l.raw) {
			l.gz = b.Bytes()
		}
	})
	return l.gz
}

// maxDetachedBytes bounds the detached cache (a 1 GB gzip layer with
// 1 MiB spans has about 12 MB of windows).
const maxDetachedBytes = 64 << 20

// detached returns layer d's detached index and windows. A node's first
// window requests come several at once: one of them parses the index.
func (s *Service) detached(d digest.Digest) (*detachedLayer, error) {
	c := &s.detach
	c.mu.Lock()
	if l, ok := c.layers[d]; ok {
		c.touch(d)
		c.mu.Unlock()
		return l, nil
	}
	c.mu.Unlock()
	v, err, _ := s.group.Do("detached "+d.String(), func() (any, error) { return s.loadDetached(d) })
	if err != nil {
		return nil, err
	}
	return v.(*detachedLayer), nil
}

// detachedSpans returns the number of spans of layer d's index when its
// detached form is in s.detach, without loading it.
func (s *Service) detachedSpans(d digest.Digest) (int, bool) {
	c := &s.detach
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.layers[d]
	if !ok {
		return 0, false
	}
	return l.spans, true
}

// loadDetached detaches layer d's stored index and keeps it in s.detach.
func (s *Service) loadDetached(d digest.Digest) (*detachedLayer, error) {
	c := &s.detach
	x, _, err := s.Get(d)
	if err != nil {
		return nil, err
	}
	y, windows := x.Detach()
	raw, err := y.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("indexsvc: detaching the index of %s: %w", d, err)
	}
	l := &detachedLayer{raw: raw, windows: windows, spans: len(x.Spans), size: int64(len(raw))}
	for _, w := range windows {
		l.size += int64(len(w))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.layers == nil {
		c.layers = map[digest.Digest]*detachedLayer{}
	}
	if old, ok := c.layers[d]; ok {
		c.touch(d)
		return old, nil
	}
	c.layers[d] = l
	c.order = append(c.order, d)
	c.bytes += l.size
	for c.bytes > maxDetachedBytes && len(c.order) > 1 {
		old := c.order[0]
		c.order = c.order[1:]
		c.bytes -= c.layers[old].size
		delete(c.layers, old)
	}
	return l, nil
}

// touch moves d to the back of the order; c.mu is held.
func (c *detachedCache) touch(d digest.Digest) {
	for i, o := range c.order {
		if o == d {
			c.order = append(append(c.order[:i:i], c.order[i+1:]...), d)
			return
		}
	}
}

// forget drops layer d (its index was stored again).
func (c *detachedCache) forget(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.layers[d]; ok {
		c.bytes -= l.size
		delete(c.layers, d)
		for i, o := range c.order {
			if o == d {
				c.order = append(c.order[:i:i], c.order[i+1:]...)
				break
			}
		}
	}
}

// Window returns the stored window of span n of layer d's index: it
// implements streamfs.WindowSource from the local store (for a node in the
// same process, which has checked repo itself).
func (s *Service) Window(_ context.Context, _ string, d digest.Digest, n int) ([]byte, error) {
	l, err := s.detached(d)
	if err != nil {
		return nil, err
	}
	if n < 0 || n >= len(l.windows) || l.windows[n] == nil {
		return nil, fmt.Errorf("indexsvc: layer %s has no window for span %d", d, n)
	}
	return l.windows[n], nil
}

var _ streamfs.WindowSource = (*Service)(nil)

// windowHandler serves GET /index/v1/layers/{digest}/windows/{span}
// (?repository=R: only if R holds the layer, see inRepository).
func (s *Service) windowHandler(w http.ResponseWriter, r *http.Request) {
	d, err := digest.Parse(r.PathValue("digest"))
	if err != nil {
		httpError(w, http.StatusBadRequest, "digest %q: use the layer's digest, like sha256:<64 hex digits>", r.PathValue("digest"))
		return
	}
	n, err := strconv.Atoi(r.PathValue("span"))
	if err != nil || n < 0 {
		httpError(w, http.StatusBadRequest, "span %q: use the span's number in the layer's index (0, 1, ...)", r.PathValue("span"))
		return
	}
	if !s.inRepository(w, r, d) {
		return
	}
	win, err := s.Window(r.Context(), "", d, n)
	if err != nil {
		httpError(w, http.StatusNotFound, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(win)))
	w.Write(win)
}

// Window fetches the stored window of span n of layer d from the
// service, for a node that took the layer's index detached, naming repo
// (where the node reads the layer) so that a caller without access to
// every project is let through. The caller checks the window against the
// index (index.Index.CheckWindow).
func (h HTTPSource) Window(ctx context.Context, repo string, d digest.Digest, n int) ([]byte, error) {
	p := "/index/v1/layers/" + d.String() + "/windows/" + strconv.Itoa(n)
	if repo != "" {
		p += "?repository=" + url.QueryEscape(repo)
	}
	resp, err := h.get(ctx, p)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxWindowBytes+1))
	if err != nil {
		return nil, fmt.Errorf("indexsvc: window %d of %s: %w", n, d, err)
	}
	if len(b) > maxWindowBytes {
		return nil, fmt.Errorf("indexsvc: window %d of %s is larger than %d bytes", n, d, maxWindowBytes)
	}
	return b, nil
}

// maxWindowBytes bounds a window read from a service (a stored window is
// a zstd frame of at most 32 KiB of history).
const maxWindowBytes = 2 * index.WindowSize

var _ streamfs.WindowSource = HTTPSource{}
