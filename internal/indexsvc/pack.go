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
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

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
			if err := s.buildPackLow(repo, d); err != nil {
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

// packNice is the CPU nice value of pack builds. Recompressing a profile's
// spans at the strongest zstd level takes several seconds of CPU (about 7
// for the 137 MB a python import reads), and on a node that also runs
// tasks it must not take the cores from them.
const packNice = 19

// buildPackLow runs BuildPack on a goroutine locked to an OS thread of its
// own at packNice. The thread is never unlocked: it exits with the
// goroutine, so no other goroutine ever runs at its priority, and only
// builds holding a slot have one. The nice value is best effort: without
// it builds only compete harder.
func (s *Service) buildPackLow(repo string, d digest.Digest) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), packNice)
		done <- s.BuildPack(s.ctx, repo, d)
	}()
	return <-done
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
	spans := packSpans(x, lp.Spans)
	if len(spans) == 0 {
		return nil
	}
	if cur, err := s.readPackHeader(d); err == nil && slices.EqualFunc(cur.Spans, spans, func(e streamfs.PackSpan, n int) bool { return e.Span == n }) {
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
	h, err := writePack(ctx, tmp, x, spans, blob)
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

// packSpans lists the profile's spans of x that a pack can hold, in
// profile order, within MaxPackBytes of the layer's compressed bytes (the
// pack's frames are usually smaller).
func packSpans(x *index.Index, profile []int) []int {
	var out []int
	var total int64
	for _, n := range profile {
		if n < 0 || n >= len(x.Spans) || !streamfs.Packable(x, n) {
			continue
		}
		c := x.Spans[n].CSize
		if total+c > MaxPackBytes || len(out) == streamfs.MaxPackSpans {
			continue
		}
		total += c
		out = append(out, n)
	}
	return out
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

// writePack writes the pack of spans (in that order) to f and returns its
// header. The spans are fetched in blob order, runs of consecutive spans
// in one request, verified, decoded and recompressed one by one into a
// scratch file beside f; then the header and the frames in pack order are
// written to f. Memory stays at one run.
func writePack(ctx context.Context, f *os.File, x *index.Index, spans []int, blob blobRanger) (*streamfs.PackHeader, error) {
	scratch, err := os.CreateTemp(filepath.Dir(f.Name()), ".frames-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(scratch.Name())
	defer scratch.Close()
	fw := &frameWriter{f: scratch, at: make(map[int][2]int64, len(spans)), strong: make(map[int]bool)}
	if fw.best, err = streamfs.NewPackEncoder(true); err != nil {
		return nil, err
	}
	defer fw.best.Close()
	if fw.fast, err = streamfs.NewPackEncoder(false); err != nil {
		return nil, err
	}
	defer fw.fast.Close()
	var u int64
	for _, n := range spans {
		if u += x.Spans[n].USize; u > bestPackBytes {
			break
		}
		fw.strong[n] = true
	}
	sorted := slices.Clone(spans)
	slices.Sort(sorted)
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j] == sorted[j-1]+1 && x.Spans[sorted[j]].COffset+x.Spans[sorted[j]].CSize-x.Spans[sorted[i]].COffset <= maxPackRun {
			j++
		}
		if err := packRun(ctx, fw, x, sorted[i], sorted[j-1]+1, blob); err != nil {
			return nil, err
		}
		i = j
	}
	h := &streamfs.PackHeader{Layer: x.BlobDigest}
	for _, n := range spans {
		h.Spans = append(h.Spans, streamfs.PackSpan{Span: n, Size: fw.at[n][1]})
	}
	hb, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := w.Write(hb); err != nil {
		return nil, err
	}
	for _, n := range spans {
		loc := fw.at[n]
		if _, err := io.Copy(w, io.NewSectionReader(scratch, loc[0], loc[1])); err != nil {
			return nil, err
		}
	}
	return h, w.Flush()
}

// frameWriter appends spans, recompressed as pack frames, to a scratch
// file and notes where each lies.
type frameWriter struct {
	f          *os.File
	best, fast *zstd.Encoder
	strong     map[int]bool // spans encoded by best
	buf        []byte
	off        int64
	at         map[int][2]int64 // span -> offset, size
}

// bestPackBytes is how much of a pack, uncompressed and in profile order,
// is recompressed at the strongest zstd level: all of a python import's
// profile (137 MB on the bench image, about 7 s of CPU), while a profile
// of reading every file (up to MaxPackBytes compressed) costs about a
// fifth as much past it.
const bestPackBytes = 160 << 20

func (fw *frameWriter) add(n int, data []byte) error {
	enc := fw.fast
	if fw.strong[n] {
		enc = fw.best
	}
	fw.buf = enc.EncodeAll(data, fw.buf[:0])
	if _, err := fw.f.Write(fw.buf); err != nil {
		return err
	}
	fw.at[n] = [2]int64{fw.off, int64(len(fw.buf))}
	fw.off += int64(len(fw.buf))
	return nil
}

// packRun fetches spans [first, end) of x in one request, checks and
// decodes them, and adds each to fw.
func packRun(ctx context.Context, fw *frameWriter, x *index.Index, first, end int, blob blobRanger) error {
	p, err := x.PlanSpans(first, end)
	if err != nil {
		return err
	}
	buf := make([]byte, p.Length)
	n, err := blob.ReadAtContext(ctx, buf, p.Offset)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == p.Length) {
		return fmt.Errorf("fetch [%d, +%d): %w", p.Offset, p.Length, err)
	}
	var scratch []byte
	for k := first; k < end; k++ {
		// Span by span (the service's index has every window), so memory
		// stays at the run's compressed bytes and one decoded span.
		sp, err := x.PlanSpans(k, k+1)
		if err != nil {
			return err
		}
		if n := x.DecodeSize(sp); int64(cap(scratch)) < n {
			scratch = make([]byte, n)
		}
		out, err := x.DecodeInto(sp, buf[sp.Offset-p.Offset:sp.Offset-p.Offset+sp.Length], scratch[:cap(scratch)])
		if err != nil {
			return fmt.Errorf("the registry served bytes that do not match the index: %w", err)
		}
		data := out[0]
		if sha256.Sum256(data) != x.Spans[k].USum {
			return fmt.Errorf("span %d: the index's digest of its uncompressed bytes does not match them", k)
		}
		if err := fw.add(k, data); err != nil {
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
