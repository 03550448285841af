package indexsvc

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// MediaTypePack is the media type of a prefetch pack (streamfs.PackHeader
// and its data) on the wire.
const MediaTypePack = "application/vnd.riffle.layer.pack.v1"

// MaxPackBytes bounds the span data of one layer's pack (compressed
// bytes); profile spans past it are left out, the latest first-uses first.
const MaxPackBytes = 256 << 20

// maxPackRun bounds one coalesced range request while building a pack.
const maxPackRun = 32 << 20

// packs is the part of a Service that builds prefetch packs in the
// background, one build per layer at a time; a profile change during a
// build asks for one more build after it.
type packs struct {
	mu       sync.Mutex
	closed   bool                   // Close began: no new builds
	building map[digest.Digest]bool // a build of the layer runs
	again    map[digest.Digest]string
	// idle is closed while no build runs or waits; a new build replaces
	// it with an open one (see WaitPacks).
	idle chan struct{}
	// slots bounds builds running at once (Options.Parallel), so a node
	// reporting many layers does not start as many registry reads.
	slots chan struct{}
}

func (s *Service) packPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("indexsvc: %q is not a sha256 layer digest", d)
	}
	return filepath.Join(s.dir, "packs", "sha256", d.Encoded()+".pack"), nil
}

// Pack opens the prefetch pack of layer d, or returns an error wrapping
// streamfs.ErrNoPack. It implements streamfs.PackSource.
func (s *Service) Pack(_ context.Context, d digest.Digest) (io.ReadCloser, error) {
	f, err := s.openPack(d)
	if err != nil {
		return nil, err
	}
	return f, nil
}

var _ streamfs.PackSource = (*Service)(nil)

func (s *Service) openPack(d digest.Digest) (*os.File, error) {
	p, err := s.packPath(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("indexsvc: layer %s: %w", d, streamfs.ErrNoPack)
	}
	if err != nil {
		return nil, fmt.Errorf("indexsvc: %w", err)
	}
	return f, nil
}

// schedulePack builds layer d's pack in the background from blob
// repository repo. A build already running makes one more run after it,
// so the pack ends up matching the latest profile.
func (s *Service) schedulePack(repo string, d digest.Digest) {
	s.pack.mu.Lock()
	defer s.pack.mu.Unlock()
	if s.pack.closed {
		return
	}
	if s.pack.building[d] {
		s.pack.again[d] = repo
		return
	}
	if len(s.pack.building) == 0 {
		s.pack.idle = make(chan struct{})
	}
	s.pack.building[d] = true
	s.wg.Add(1)
	go s.packLoop(repo, d)
}

func (s *Service) packLoop(repo string, d digest.Digest) {
	defer s.wg.Done()
	for {
		select {
		case s.pack.slots <- struct{}{}:
			if err := s.BuildPack(s.ctx, repo, d); err != nil {
				s.packsFailed.Inc()
				s.log.Warn("building a prefetch pack failed", "layer", d, "err", err)
			}
			<-s.pack.slots
		case <-s.ctx.Done():
		}
		s.pack.mu.Lock()
		next, ok := s.pack.again[d]
		delete(s.pack.again, d)
		if !ok || s.pack.closed {
			delete(s.pack.building, d)
			if len(s.pack.building) == 0 {
				close(s.pack.idle)
			}
			s.pack.mu.Unlock()
			return
		}
		s.pack.mu.Unlock()
		repo = next
	}
}

// WaitPacks waits until no pack build runs or waits to run: every
// profile reported so far has its pack (or failed to get one). A build
// scheduled after it returns is not waited for.
func (s *Service) WaitPacks(ctx context.Context) error {
	s.pack.mu.Lock()
	idle := s.pack.idle
	s.pack.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopPacks keeps new pack builds from starting; Close waits for running
// ones (they share the service's WaitGroup).
func (s *Service) stopPacks() {
	s.pack.mu.Lock()
	s.pack.closed = true
	s.pack.mu.Unlock()
}

// BuildPack (re)builds the prefetch pack of layer d from its stored
// profile and index, reading the profile's spans from repository repo
// (coalescing adjacent spans into one range request) and checking each
// against its span digest before storing it. Layers read through their own
// TOC have no stored index and get no pack.
func (s *Service) BuildPack(ctx context.Context, repo string, d digest.Digest) error {
	x, _, err := s.Get(d)
	if err != nil {
		return err
	}
	lp, err := s.Profile(ctx, d)
	if err != nil {
		return err
	}
	h := packHeader(x, lp.Spans)
	if len(h.Spans) == 0 {
		return nil
	}
	if cur, err := s.readPackHeader(d); err == nil && slices.Equal(cur.Spans, h.Spans) {
		return nil // unchanged
	}
	r, err := s.client.ParseRepository(repo)
	if err != nil {
		return err
	}
	blob, err := s.client.RepositoryBlob(ctx, r, d, x.BlobSize)
	if err != nil {
		return err
	}
	p, err := s.packPath(d)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = writePack(ctx, tmp, x, h, blob)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("indexsvc: pack of %s: %w", d, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("indexsvc: %w", err)
	}
	s.packsBuilt.Inc()
	s.packBytes.Add(float64(h.DataSize()))
	s.log.Info("prefetch pack built", "layer", d, "spans", len(h.Spans), "bytes", h.DataSize())
	return nil
}

// packHeader lists the profile's spans of x, in profile order, within
// MaxPackBytes.
func packHeader(x *index.Index, spans []int) *streamfs.PackHeader {
	h := &streamfs.PackHeader{Layer: x.BlobDigest}
	var total int64
	for _, n := range spans {
		p, err := x.PlanSpans(n, n+1)
		w := int64(len(x.Spans[n].Window))
		if err != nil || total+p.Length+w > MaxPackBytes || len(h.Spans) == streamfs.MaxPackSpans {
			continue
		}
		total += p.Length + w
		h.Spans = append(h.Spans, streamfs.PackSpan{Span: n, Size: p.Length + w, Window: w})
	}
	return h
}

func (s *Service) readPackHeader(d digest.Digest) (*streamfs.PackHeader, error) {
	f, err := s.openPack(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return streamfs.ReadPackHeader(bufio.NewReader(f))
}

// blobRanger reads ranges of a layer blob (*remote.Blob).
type blobRanger interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// writePack writes h and its spans' data to f. The spans are fetched in
// blob order, runs of consecutive spans in one request, and each is
// written at its place in the pack, so memory stays at one run.
func writePack(ctx context.Context, f *os.File, x *index.Index, h *streamfs.PackHeader, blob blobRanger) error {
	hb, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	if _, err := f.Write(hb); err != nil {
		return err
	}
	at := make(map[int]int64, len(h.Spans)) // span -> offset of its blob bytes in the pack
	off := int64(len(hb))
	for _, ps := range h.Spans {
		if _, err := f.WriteAt(x.Spans[ps.Span].Window, off); err != nil {
			return err
		}
		at[ps.Span] = off + ps.Window
		off += ps.Size
	}
	sorted := make([]int, 0, len(h.Spans))
	for _, ps := range h.Spans {
		sorted = append(sorted, ps.Span)
	}
	slices.Sort(sorted)
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j] == sorted[j-1]+1 && x.Spans[sorted[j]].COffset+x.Spans[sorted[j]].CSize-x.Spans[sorted[i]].COffset <= maxPackRun {
			j++
		}
		if err := packRun(ctx, f, x, sorted[i], sorted[j-1]+1, at, blob); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// packRun fetches spans [first, end) of x in one request and writes each,
// verified, at its offset in the pack.
func packRun(ctx context.Context, f *os.File, x *index.Index, first, end int, at map[int]int64, blob blobRanger) error {
	p, err := x.PlanSpans(first, end)
	if err != nil {
		return err
	}
	buf := make([]byte, p.Length)
	n, err := blob.ReadAtContext(ctx, buf, p.Offset)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == p.Length) {
		return fmt.Errorf("fetch [%d, +%d): %w", p.Offset, p.Length, err)
	}
	for k := first; k < end; k++ {
		sp := &x.Spans[k]
		b := buf[sp.COffset-p.Offset : sp.COffset-p.Offset+sp.CSize]
		if sha256.Sum256(b) != sp.Digest {
			return fmt.Errorf("span %d: the registry served bytes that do not match the index", k)
		}
		if _, err := f.WriteAt(b, at[k]); err != nil {
			return err
		}
	}
	return nil
}

// packHandlers serves
//
//	GET /index/v1/packs/{digest}   the layer's prefetch pack (MediaTypePack,
//	                               Range requests work), 404 if none
func (s *Service) packHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /index/v1/packs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := digest.Parse(r.PathValue("digest"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "digest %q: use the layer's digest, like sha256:<64 hex digits>", r.PathValue("digest"))
			return
		}
		f, err := s.openPack(d)
		if errors.Is(err, streamfs.ErrNoPack) {
			httpError(w, http.StatusNotFound, "no prefetch pack for layer %s yet; one is built once a streamed task reported its startup profile", d)
			return
		}
		if err != nil {
			httpError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			httpError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		w.Header().Set("Content-Type", MediaTypePack)
		http.ServeContent(w, r, "", st.ModTime(), f)
	})
}

// Pack fetches layer d's prefetch pack from the service as one stream; an
// error wrapping streamfs.ErrNoPack when it has none.
func (h HTTPSource) Pack(ctx context.Context, d digest.Digest) (io.ReadCloser, error) {
	resp, err := h.get(ctx, "/index/v1/packs/"+d.String())
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Body, nil
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("indexsvc: layer %s: %w", d, streamfs.ErrNoPack)
	}
	resp.Body.Close()
	return nil, statusError(resp)
}

var _ streamfs.PackSource = HTTPSource{}
