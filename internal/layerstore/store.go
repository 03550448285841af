package layerstore

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/unpack"
)

// ErrCrossLayerLink matches the error Extract returns for a layer that
// holds a hard link to a file of a lower layer (see the package doc).
var ErrCrossLayerLink = unpack.ErrCrossLayerLink

// Store holds extracted layers, one directory per layer keyed by diffID
// (the sha256 of the uncompressed tar), in overlayfs format: whiteouts as
// 0:0 character devices, opaque directories with the xattr
// trusted.overlay.opaque=y. Safe for concurrent use, and for several
// processes on one directory (riffle serve and riffle pull).
type Store struct {
	dir string

	mu sync.Mutex
	// flights holds the extraction running in this process for each
	// diffID; guarded by mu. The extracting call removes its entry before
	// it closes done.
	flights map[digest.Digest]*flight
	// emptying is set while a goroutine removes the trash.
	emptying atomic.Bool
}

// flight is one extraction of a layer that other callers in the process
// wait for instead of extracting it again.
type flight struct {
	done chan struct{}
	// Set before done is closed, read only after.
	err error
	// gaveUp says the extraction stopped because its caller's context
	// ended: a waiter with a live context then extracts itself, so one
	// caller giving up never fails the others.
	gaveUp bool
}

// File is a regular file Extract wrote, given to its onFile callback.
type File struct {
	// Name is cleaned like index.File.Name ("usr/bin/ls").
	Name string
	// Offset is where the file's data starts in the uncompressed stream;
	// it equals index.File.Offset for the same entry.
	Offset int64
	Size   int64
	// Digest is the sha256 of the bytes written; empty when the stream
	// was marked Verified.
	Digest digest.Digest
	// Path is the absolute path of the written file (under Path(diffID)).
	Path string
}

// Layer is a complete layer in the store.
type Layer struct {
	DiffID digest.Digest
	// Bytes is the disk space its tree uses (allocated blocks, each
	// hard-linked inode once).
	Bytes int64
}

// marker is the content of a layer's complete file.
type marker struct {
	DiffID digest.Digest `json:"diffID"`
	Bytes  int64         `json:"bytes"`
}

// Open opens the store in dir, creating dir if needed, and removes the
// incomplete layers a crashed process left (only ones no live process
// holds the lock of).
func Open(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	if err := os.Mkdir(filepath.Join(abs, "sha256"), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	s := &Store{dir: abs, flights: map[digest.Digest]*flight{}}
	if err := s.removeIncomplete(); err != nil {
		return nil, err
	}
	s.emptyTrash() // what a process that ended before emptying it left
	return s, nil
}

// trash is where discarded trees wait to be removed.
func (s *Store) trash() string { return filepath.Join(s.dir, "trash") }

// discard removes the tree at p without waiting for it: p is renamed into
// the trash, and a goroutine removes it there. Removing a half-extracted
// layer of thousands of files takes seconds, which a task that ended
// while its layers streamed should not wait for. What a process leaves in
// the trash when it exits, the next Open removes.
func (s *Store) discard(p string) error {
	if err := os.MkdirAll(s.trash(), 0o700); err != nil {
		return os.RemoveAll(p)
	}
	t, err := os.MkdirTemp(s.trash(), "")
	if err != nil {
		return os.RemoveAll(p)
	}
	if err := os.Rename(p, filepath.Join(t, "tree")); err != nil {
		os.Remove(t)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return os.RemoveAll(p)
	}
	s.emptyTrash()
	return nil
}

// emptyTrash removes the trash's entries in a goroutine, unless one is
// at it already.
func (s *Store) emptyTrash() {
	if !s.emptying.CompareAndSwap(false, true) {
		return
	}
	go func() {
		for {
			entries, _ := os.ReadDir(s.trash())
			for _, e := range entries {
				// Another process may be removing it too; what
				// remains is tried again next time.
				_ = os.RemoveAll(filepath.Join(s.trash(), e.Name()))
			}
			s.emptying.Store(false)
			// An entry discarded after ReadDir, whose emptyTrash found
			// this goroutine running, is taken now.
			if more, _ := os.ReadDir(s.trash()); len(more) == 0 || !s.emptying.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// Dir returns the store's directory (absolute).
func (s *Store) Dir() string { return s.dir }

func (s *Store) top(diffID digest.Digest) string {
	return filepath.Join(s.dir, "sha256", diffID.Encoded())
}

// Path is the directory holding layer diffID's tree. It is stable:
// extraction writes there directly (no rename at the end), so a path
// handed out during extraction stays valid.
func (s *Store) Path(diffID digest.Digest) string {
	return filepath.Join(s.top(diffID), "fs")
}

// Has reports whether layer diffID is complete (extracted, its stream's
// sha256 checked equal to diffID, data synced).
func (s *Store) Has(diffID digest.Digest) bool {
	if checkDiffID(diffID) != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(s.top(diffID), "complete"))
	return err == nil
}

func checkDiffID(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("layerstore: diffID %q: %w", d, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("layerstore: diffID %s: only sha256 diffIDs are supported", d)
	}
	return nil
}

// Extract applies the uncompressed layer tar r as layer diffID unless it is
// complete already (then r is not read). It reads r to its end, checks its
// sha256 against diffID, syncs the filesystem once, then marks the layer
// complete. onFile (may be nil) is called synchronously, in stream order,
// after each regular file's content has been written and its descriptor
// closed. If another extraction of diffID is running in this process or
// another process, Extract waits for it and returns its result, with no
// onFile calls (if that extraction was cancelled, or another process's
// failed, this call extracts from r itself). A failed or cancelled
// extraction removes what it wrote and returns the error.
func (s *Store) Extract(ctx context.Context, diffID digest.Digest, r io.Reader, onFile func(File)) error {
	if err := checkDiffID(diffID); err != nil {
		return err
	}
	for {
		if s.Has(diffID) {
			return nil
		}
		s.mu.Lock()
		f, running := s.flights[diffID]
		if !running {
			f = &flight{done: make(chan struct{})}
			s.flights[diffID] = f
		}
		s.mu.Unlock()
		if !running {
			return s.lead(ctx, f, diffID, r, onFile)
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("layerstore: layer %s: %w", diffID, ctx.Err())
		}
		if !f.gaveUp {
			return f.err
		}
	}
}

// lead runs flight f: the extraction of diffID that other callers wait for.
func (s *Store) lead(ctx context.Context, f *flight, diffID digest.Digest, r io.Reader, onFile func(File)) error {
	err := s.extract(ctx, diffID, r, onFile)
	f.err = err
	f.gaveUp = err != nil && ctx.Err() != nil
	s.mu.Lock()
	delete(s.flights, diffID)
	s.mu.Unlock()
	close(f.done)
	return err
}

// extract extracts diffID under its cross-process lock.
func (s *Store) extract(ctx context.Context, diffID digest.Digest, r io.Reader, onFile func(File)) (err error) {
	l, err := s.lock(ctx, diffID)
	if err != nil {
		return err
	}
	defer l.unlock()
	if s.Has(diffID) {
		return nil // another process extracted it while we waited
	}
	top := s.top(diffID)
	defer func() {
		if err != nil {
			// Under the lock, so no other process sees the layer half
			// removed as anything but incomplete.
			if rerr := s.discard(top); rerr != nil {
				err = fmt.Errorf("%w (and removing what it wrote: %v)", err, rerr)
			}
			l.remove()
		}
	}()
	// Whatever is there is a leftover: a crashed process's, or Open ran
	// before that process died.
	if err := os.RemoveAll(top); err != nil {
		return fmt.Errorf("layerstore: layer %s: remove leftover: %w", diffID, err)
	}
	if err := os.MkdirAll(s.Path(diffID), 0o755); err != nil {
		return fmt.Errorf("layerstore: layer %s: %w", diffID, err)
	}
	if err := s.apply(ctx, diffID, r, onFile); err != nil {
		return err
	}
	return s.complete(diffID)
}

// Verified marks r, for Extract, as a stream its reader verifies as it
// goes (span by span against a layer index): the files Extract reports
// then carry no digest, as hashing each would check the same bytes again.
// The stream is still checked against the layer's diffID.
func Verified(r io.Reader) io.Reader { return verified{r} }

type verified struct{ io.Reader }

// apply extracts r into Path(diffID) and checks its digest.
func (s *Store) apply(ctx context.Context, diffID digest.Digest, r io.Reader, onFile func(File)) error {
	var cb func(unpack.File)
	if onFile != nil {
		cb = func(f unpack.File) { onFile(File(f)) }
	}
	_, noDigests := r.(verified)
	h := sha256.New()
	err := unpack.ApplyWith(ctx, s.Path(diffID), io.TeeReader(r, h), unpack.ApplyOptions{Overlay: true, OnFile: cb, NoFileDigests: noDigests})
	if err != nil {
		return fmt.Errorf("layerstore: layer %s: %w", diffID, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return fmt.Errorf("layerstore: layer %s: the uncompressed stream hashes to %s: %w", diffID, got, unpack.ErrDiffIDMismatch)
	}
	return nil
}

// complete makes the tree durable, then writes the marker so that it is
// durable only after the tree.
func (s *Store) complete(diffID digest.Digest) error {
	fail := func(err error) error { return fmt.Errorf("layerstore: layer %s: complete: %w", diffID, err) }
	if err := syncFS(s.Path(diffID)); err != nil {
		return fail(err)
	}
	n, err := DiskUsage(s.Path(diffID))
	if err != nil {
		return fail(err)
	}
	b, err := json.Marshal(marker{DiffID: diffID, Bytes: n})
	if err != nil {
		return fail(err)
	}
	top := s.top(diffID)
	tmp := filepath.Join(top, "complete.tmp")
	if err := writeSynced(tmp, append(b, '\n')); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, filepath.Join(top, "complete")); err != nil {
		return fail(err)
	}
	if err := syncPath(top); err != nil {
		return fail(err)
	}
	return nil
}

func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// DiskUsage sums the blocks allocated below root, counting each inode
// once (hard links), as du does. On an error it returns what it summed so
// far with the error.
func DiskUsage(root string) (int64, error) {
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if st.Nlink > 1 && !fi.IsDir() {
			k := ino{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// Remove deletes layer diffID, complete or not. Only call it when nothing
// uses the layer (no mount, no reader); the caller knows.
func (s *Store) Remove(diffID digest.Digest) error {
	if err := checkDiffID(diffID); err != nil {
		return err
	}
	l, err := s.lock(context.Background(), diffID)
	if err != nil {
		return err
	}
	defer l.unlock()
	top := s.top(diffID)
	// The marker goes first: a crash midway leaves an incomplete layer,
	// which Open removes.
	if err := os.Remove(filepath.Join(top, "complete")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("layerstore: remove %s: %w", diffID, err)
	}
	if err := os.RemoveAll(top); err != nil {
		return fmt.Errorf("layerstore: remove %s: %w", diffID, err)
	}
	l.remove()
	return nil
}

// List returns the complete layers, sorted by diffID, with the disk space
// each uses.
func (s *Store) List() ([]Layer, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "sha256"))
	if err != nil {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	var out []Layer
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, "sha256", e.Name(), "complete"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // being extracted, or left incomplete
		}
		if err != nil {
			return nil, fmt.Errorf("layerstore: %w", err)
		}
		var m marker
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("layerstore: layer %s: marker: %w", e.Name(), err)
		}
		out = append(out, Layer{DiffID: digest.NewDigestFromEncoded(digest.SHA256, e.Name()), Bytes: m.Bytes})
	}
	slices.SortFunc(out, func(a, b Layer) int { return strings.Compare(string(a.DiffID), string(b.DiffID)) })
	return out, nil
}

// removeIncomplete removes what crashed processes left: layers without a
// marker whose lock no live process holds, and stray temporary files.
func (s *Store) removeIncomplete() error {
	entries, err := os.ReadDir(filepath.Join(s.dir, "sha256"))
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	for _, e := range entries {
		hex, isLock := strings.CutSuffix(e.Name(), ".lock")
		d := digest.NewDigestFromEncoded(digest.SHA256, hex)
		if checkDiffID(d) != nil || (isLock && dirExists(s.top(d))) {
			continue // not ours; or a lock seen with its layer
		}
		if s.Has(d) {
			continue
		}
		l, ok, err := s.tryLock(d)
		if err != nil {
			return err
		}
		if !ok {
			continue // a live process is extracting or removing it
		}
		if !s.Has(d) {
			err = s.discard(s.top(d))
			l.remove()
		}
		l.unlock()
		if err != nil {
			return fmt.Errorf("layerstore: remove incomplete layer %s: %w", d, err)
		}
	}
	return nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
