package remote

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
)

// ErrRangeNotSupported is returned by [Blob.ReadAt] when the registry (or the
// storage it redirects to) answers a ranged GET with the whole blob. Lazy
// pulling cannot work against such a registry; reading on would silently
// download every layer in full for every read.
var ErrRangeNotSupported = errors.New("remote: the registry ignores HTTP Range requests (answered 200 with the whole blob), so blobs cannot be read lazily")

var _ io.ReaderAt = (*Blob)(nil)

// Blob is a blob in a registry, read by ranges or streamed whole. It is safe
// for concurrent use.
type Blob struct {
	c      *Client
	hc     *http.Client
	repo   name.Repository
	digest digest.Digest
	size   int64
	url    string
}

// Blob returns a handle on the blob dgst in repo ("HOST/PATH"), doing the
// registry's auth handshake now so that reads need none. A negative size
// asks the registry for it with a HEAD request.
func (c *Client) Blob(ctx context.Context, repo string, dgst digest.Digest, size int64) (*Blob, error) {
	r, err := c.ParseRepository(repo)
	if err != nil {
		return nil, err
	}
	return c.RepositoryBlob(ctx, r, dgst, size)
}

// RepositoryBlob is Blob for a parsed repository (for example
// Image.Repository).
func (c *Client) RepositoryBlob(ctx context.Context, repo name.Repository, dgst digest.Digest, size int64) (*Blob, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("remote: blob digest %q: %w", dgst, err)
	}
	tr, err := c.transportFor(ctx, repo.Registry, repo.Scope(transport.PullScope))
	if err != nil {
		return nil, err
	}
	b := &Blob{c: c, hc: c.httpClient(tr), repo: repo, digest: dgst, size: size, url: registryURL(repo, "blobs", dgst.String())}
	if size < 0 {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, b.url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := b.hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("remote: blob %s in %s: %w", dgst, repo, err)
		}
		resp.Body.Close()
		if err := transport.CheckError(resp, http.StatusOK); err != nil {
			return nil, fmt.Errorf("remote: blob %s in %s: %w", dgst, repo, explain(err, repo.RegistryStr()))
		}
		if resp.ContentLength < 0 {
			return nil, fmt.Errorf("remote: blob %s in %s: the registry did not report its size", dgst, repo)
		}
		b.size = resp.ContentLength
	}
	return b, nil
}

// Digest returns the blob's digest.
func (b *Blob) Digest() digest.Digest { return b.digest }

// Size returns the blob's size in bytes.
func (b *Blob) Size() int64 { return b.size }

// ReadAt reads len(p) bytes at off with one ranged GET (more only if the
// server returns a shorter range or the connection fails). It follows the
// io.ReaderAt contract: a read that reaches the end of the blob returns
// io.EOF with the bytes it got. ReadAt is not cancellable beyond
// Options.Timeout; use ReadAtContext for that.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt under ctx.
func (b *Blob) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("remote: blob %s: negative offset %d", b.digest, off)
	}
	if off >= b.size {
		if len(p) == 0 && off == b.size {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := min(int64(len(p)), b.size-off)
	done := int64(0)
	failures := 0
	for done < want {
		n, err := b.readRange(ctx, p[done:want], off+done)
		done += int64(n)
		if err == nil {
			continue
		}
		// The transport already retried the request itself; this retries
		// only a body cut midway, from where it stopped.
		var cut *bodyCutError
		if !errors.As(err, &cut) || !retryableError(err) || ctx.Err() != nil {
			return int(done), err
		}
		failures++
		if failures >= b.c.retry.MaxAttempts {
			return int(done), err
		}
		b.c.stats.retries.Add(1)
		if err := sleepCtx(ctx, b.c.retry.delay(failures, nil)); err != nil {
			return int(done), err
		}
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// readRange issues one ranged GET for len(p) bytes at off and reads what
// the server sends of it.
func (b *Blob) readRange(ctx context.Context, p []byte, off int64) (int, error) {
	last := off + int64(len(p)) - 1
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, last))
	b.c.stats.rangeReads.Add(1)
	resp, err := b.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("remote: blob %s: %w", b.digest, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		if off == 0 && last == b.size-1 {
			// Asked for everything; a 200 is a correct answer.
			break
		}
		return 0, fmt.Errorf("%w: GET %s with Range bytes=%d-%d (from %s)", ErrRangeNotSupported, b.repo, off, last, resp.Request.URL.Host)
	case http.StatusRequestedRangeNotSatisfiable:
		return 0, fmt.Errorf("remote: blob %s: range %d-%d not satisfiable (the registry says %q; is the size %d right?)", b.digest, off, last, resp.Header.Get("Content-Range"), b.size)
	default:
		return 0, fmt.Errorf("remote: blob %s: %w", b.digest, explain(transport.CheckError(resp, http.StatusPartialContent), b.repo.RegistryStr()))
	}
	n := int64(len(p))
	if resp.StatusCode == http.StatusPartialContent {
		start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return 0, fmt.Errorf("remote: blob %s: %w", b.digest, err)
		}
		if start != off || end < start || end > last {
			return 0, fmt.Errorf("remote: blob %s: asked for bytes %d-%d, the registry sent %d-%d", b.digest, off, last, start, end)
		}
		if total >= 0 && total != b.size {
			return 0, fmt.Errorf("remote: blob %s: the registry says it is %d bytes, the manifest says %d", b.digest, total, b.size)
		}
		n = end - start + 1
	}
	got, err := io.ReadFull(resp.Body, p[:n])
	if err != nil {
		return got, &bodyCutError{fmt.Errorf("remote: blob %s: reading bytes %d-%d: %w", b.digest, off, last, err)}
	}
	return got, nil
}

// OpenRange opens one ranged GET for the n bytes at off and returns its
// body, for a caller that reads them in pieces as they arrive (a layer's
// background stream reading many chunks with one request). Unlike ReadAt
// it neither retries nor resumes: a cut body is an error the caller
// handles, with ReadAt for example. Under WithReceiveWindow the request
// gets a connection of its own with that receive buffer.
func (b *Blob) OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if off < 0 || n <= 0 || off+n > b.size {
		return nil, fmt.Errorf("remote: blob %s: range [%d, +%d) is outside its %d bytes", b.digest, off, n, b.size)
	}
	last := off + n - 1
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, last))
	b.c.stats.rangeReads.Add(1)
	resp, err := b.hc.Do(receiveWindow(req))
	if err != nil {
		return nil, fmt.Errorf("remote: blob %s: %w", b.digest, err)
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		if off == 0 && n == b.size {
			// Asked for everything; a 200 is a correct answer.
			return resp.Body, nil
		}
		resp.Body.Close()
		return nil, fmt.Errorf("%w: GET %s with Range bytes=%d-%d (from %s)", ErrRangeNotSupported, b.repo, off, last, resp.Request.URL.Host)
	default:
		defer resp.Body.Close()
		return nil, fmt.Errorf("remote: blob %s: %w", b.digest, explain(transport.CheckError(resp, http.StatusPartialContent), b.repo.RegistryStr()))
	}
	start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err == nil && (start != off || end != last || (total >= 0 && total != b.size)) {
		err = fmt.Errorf("asked for bytes %d-%d of %d, the registry sent %d-%d/%d", off, last, b.size, start, end, total)
	}
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("remote: blob %s: %w", b.digest, err)
	}
	return resp.Body, nil
}

// bodyCutError marks a response body that ended early.
type bodyCutError struct{ err error }

func (e *bodyCutError) Error() string { return e.err.Error() }
func (e *bodyCutError) Unwrap() error { return e.err }

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*",
// returned as -1).
func parseContentRange(v string) (start, end, total int64, err error) {
	bad := fmt.Errorf("malformed Content-Range %q", v)
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil {
		return 0, 0, 0, bad
	}
	if end, err = strconv.ParseInt(e, 10, 64); err != nil {
		return 0, 0, 0, bad
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil {
			return 0, 0, 0, bad
		}
	}
	return start, end, total, nil
}

// Open streams the whole blob. The reader returns ErrDigestMismatch at EOF
// if the content does not hash to the blob's digest or has the wrong size,
// so a caller that reads to EOF without error has verified content. A
// connection cut midway is resumed with a ranged GET from where it stopped.
func (b *Blob) Open(ctx context.Context) (io.ReadCloser, error) {
	if !b.digest.Algorithm().Available() {
		return nil, fmt.Errorf("remote: blob %s: digest algorithm %q is not supported", b.digest, b.digest.Algorithm())
	}
	s := &blobStream{ctx: ctx, b: b, h: b.digest.Algorithm().Hash()}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

type blobStream struct {
	ctx      context.Context
	b        *Blob
	body     io.ReadCloser
	h        hash.Hash
	off      int64
	failures int
	err      error
}

// connect opens the body at s.off: a plain GET first, a ranged GET to
// resume.
func (s *blobStream) connect() error {
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, s.b.url, nil)
	if err != nil {
		return err
	}
	want := http.StatusOK
	if s.off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", s.off))
		want = http.StatusPartialContent
	}
	resp, err := s.b.hc.Do(receiveWindow(req))
	if err != nil {
		return fmt.Errorf("remote: blob %s: %w", s.b.digest, err)
	}
	if resp.StatusCode != want {
		defer resp.Body.Close()
		if s.off > 0 && resp.StatusCode == http.StatusOK {
			return fmt.Errorf("remote: blob %s: resuming at byte %d: %w", s.b.digest, s.off, ErrRangeNotSupported)
		}
		return fmt.Errorf("remote: blob %s: %w", s.b.digest, explain(transport.CheckError(resp, want), s.b.repo.RegistryStr()))
	}
	if s.off > 0 {
		start, _, _, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != s.off {
			resp.Body.Close()
			return fmt.Errorf("remote: blob %s: resuming at byte %d, the registry sent Content-Range %q", s.b.digest, s.off, resp.Header.Get("Content-Range"))
		}
	}
	s.body = resp.Body
	return nil
}

func (s *blobStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	for {
		if s.body == nil {
			if err := s.connect(); err != nil {
				s.err = err
				return 0, err
			}
		}
		if rem := s.b.size - s.off; int64(len(p)) > rem+1 {
			// One byte past the size shows an overlong blob.
			p = p[:rem+1]
		}
		n, err := s.body.Read(p)
		s.h.Write(p[:n])
		s.off += int64(n)
		if s.off > s.b.size {
			s.err = fmt.Errorf("remote: blob %s: %w: more than the %d bytes the manifest says", s.b.digest, ErrDigestMismatch, s.b.size)
			return n, s.err
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF:
			if s.off != s.b.size {
				err = io.ErrUnexpectedEOF
				break
			}
			if got := digest.NewDigest(s.b.digest.Algorithm(), s.h); got != s.b.digest {
				s.err = fmt.Errorf("remote: blob %s: %w (got %s)", s.b.digest, ErrDigestMismatch, got)
				return n, s.err
			}
			s.err = io.EOF
			return n, io.EOF
		}
		// A cut connection: resume from s.off, within the retry budget.
		s.body.Close()
		s.body = nil
		s.failures++
		if !retryableError(err) || s.ctx.Err() != nil || s.failures >= s.b.c.retry.MaxAttempts {
			s.err = fmt.Errorf("remote: blob %s at byte %d: %w", s.b.digest, s.off, err)
			return n, s.err
		}
		s.b.c.stats.retries.Add(1)
		if err := sleepCtx(s.ctx, s.b.c.retry.delay(s.failures, nil)); err != nil {
			s.err = err
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (s *blobStream) Close() error {
	if s.err == nil {
		s.err = errors.New("remote: read after Close")
	}
	if s.body != nil {
		err := s.body.Close()
		s.body = nil
		return err
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
