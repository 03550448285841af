package registry

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
)

// DefaultGCQuiet is how long the registry must have seen no write (blob
// upload, manifest push, delete) before GC sweeps: a push uploads its blobs
// before the manifest that references them, and a sweep in between would
// delete blobs the coming manifest needs.
const DefaultGCQuiet = 10 * time.Second

// gcPoll is how often GC looks again while a write is in progress.
const gcPoll = 100 * time.Millisecond

// GCResult is what a garbage collection removed.
type GCResult struct {
	// Blobs and Bytes are the blobs deleted and the bytes they held.
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

// writes tracks the registry's write requests so that GC can run between
// pushes, never inside one. Reads are not held: a blob GC deletes is one
// no manifest references, so a read of it may fail either way.
type writes struct {
	gate sync.RWMutex // writes hold it shared, GC exclusively
	last atomic.Int64 // unix nanoseconds of the last write's end
}

func (w *writes) begin() { w.gate.RLock() }

func (w *writes) end() {
	w.last.Store(time.Now().UnixNano())
	w.gate.RUnlock()
}

// GC deletes the blobs no manifest references (what "riffle image rm"
// left behind), as distribution's garbage-collect command does, while
// the registry keeps serving. It waits until no write has been seen for
// quiet (DefaultGCQuiet when 0) so that a push in progress is not cut
// between its blobs and its manifest, then holds writes off while it
// sweeps. Untagged manifests are kept (they may be pushed by digest on
// purpose, as index artifacts are).
func (r *Registry) GC(ctx context.Context, quiet time.Duration) (GCResult, error) {
	if quiet <= 0 {
		quiet = DefaultGCQuiet
	}
	for {
		// TryLock, not Lock: a waiting Lock would hold off every new push
		// behind one slow upload for as long as GC waits.
		wait := gcPoll
		if r.writes.gate.TryLock() {
			idle := time.Since(time.Unix(0, r.writes.last.Load()))
			if idle >= quiet {
				break
			}
			r.writes.gate.Unlock()
			wait = quiet - idle
		}
		select {
		case <-ctx.Done():
			return GCResult{}, fmt.Errorf("registry: garbage collection: waiting for pushes to end: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	defer r.writes.gate.Unlock()
	return GC(ctx, r.opts.RootDir)
}

// GC collects the garbage of the registry stored in rootDir (Options.RootDir)
// when no registry serves it (riffle system prune without riffle serve).
func GC(ctx context.Context, rootDir string) (GCResult, error) {
	storageDir := filepath.Join(rootDir, "storage")
	blobs := filepath.Join(storageDir, "docker", "registry", "v2", "blobs")
	if _, err := os.Stat(blobs); errors.Is(err, fs.ErrNotExist) {
		return GCResult{}, nil // nothing ever pushed
	}
	before, err := blobUsage(blobs)
	if err != nil {
		return GCResult{}, err
	}
	drv, err := factory.Create(ctx, "filesystem", map[string]any{"rootdirectory": storageDir})
	if err != nil {
		return GCResult{}, fmt.Errorf("registry: garbage collection: %w", err)
	}
	ns, err := storage.NewRegistry(ctx, drv, storage.EnableDelete)
	if err != nil {
		return GCResult{}, fmt.Errorf("registry: garbage collection: %w", err)
	}
	if err := storage.MarkAndSweep(ctx, drv, ns, storage.GCOpts{Quiet: true}); err != nil {
		return GCResult{}, fmt.Errorf("registry: garbage collection: %w", err)
	}
	after, err := blobUsage(blobs)
	if err != nil {
		return GCResult{}, err
	}
	return GCResult{Blobs: before.Blobs - after.Blobs, Bytes: before.Bytes - after.Bytes}, nil
}

// Usage is the space the registry's blobs take.
func Usage(rootDir string) (GCResult, error) {
	u, err := blobUsage(filepath.Join(rootDir, "storage", "docker", "registry", "v2", "blobs"))
	if errors.Is(err, fs.ErrNotExist) {
		return GCResult{}, nil
	}
	return u, err
}

// blobUsage counts the blobs below dir (each is DIR/sha256/XX/HEX/data).
func blobUsage(dir string) (GCResult, error) {
	var u GCResult
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != dir {
				return nil // swept meanwhile
			}
			return err
		}
		if d.Name() != "data" || d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		u.Blobs++
		u.Bytes += fi.Size()
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("registry: %w", err)
	}
	return u, nil
}
