package streamfs_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/streamfs"
)

// testStore is a minimal layer store for these tests until
// internal/layerstore lands: it extracts regular files and directories
// (nothing else the tests read through it), reports each regular file
// with its data offset and digest, and marks a layer complete only when
// the stream hashed to its diffID.
type testStore struct {
	dir string

	mu       sync.Mutex
	complete map[digest.Digest]bool
	extracts int
}

func newTestStore(dir string) *testStore {
	return &testStore{dir: dir, complete: map[digest.Digest]bool{}}
}

func (s *testStore) Path(d digest.Digest) string { return filepath.Join(s.dir, d.Encoded()) }

func (s *testStore) Has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.complete[d]
}

type offsetReader struct {
	r   io.Reader
	off int64
}

func (o *offsetReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	o.off += int64(n)
	return n, err
}

func (s *testStore) Extract(ctx context.Context, diffID digest.Digest, r io.Reader, onFile func(streamfs.StoredFile)) error {
	s.mu.Lock()
	s.extracts++
	s.mu.Unlock()
	h := sha256.New()
	or := &offsetReader{r: io.TeeReader(r, h)}
	tr := tar.NewReader(or)
	root := s.Path(diffID)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("teststore: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if strings.HasPrefix(name, "../") || strings.HasPrefix(name, "/") {
			return errors.New("teststore: unsafe name")
		}
		p := filepath.Join(root, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			off := or.off
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.Remove(p)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			fh := sha256.New()
			n, err := io.Copy(io.MultiWriter(f, fh), tr)
			f.Close()
			if err != nil {
				return fmt.Errorf("teststore: %w", err)
			}
			onFile(streamfs.StoredFile{Name: name, Offset: off, Size: n, Digest: digest.NewDigest(digest.SHA256, fh), Path: p})
		}
	}
	if _, err := io.Copy(io.Discard, or); err != nil {
		return fmt.Errorf("teststore: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return fmt.Errorf("teststore: layer hashes to %s, want %s", got, diffID)
	}
	s.mu.Lock()
	s.complete[diffID] = true
	s.mu.Unlock()
	return nil
}

func (s *testStore) extractCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.extracts
}
