package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/riffle-dev/riffle/internal/pull"
)

// Defaults shared by riffle serve and the CLI. Nothing else spells these
// numbers or names: use the constants.
const (
	// DefaultCacheBytes bounds the node cache (spans of streamed layers and
	// layer indexes) unless configured.
	DefaultCacheBytes int64 = 20 << 30
	// DefaultLayerBytes caps the layer store and flat images together
	// unless configured; unused ones are removed past it.
	DefaultLayerBytes int64 = 50 << 30
	// DefaultParallel is how many layers a pull downloads at once.
	DefaultParallel = pull.DefaultParallel
)

// Layout is a data directory: where every part of a node and of riffle
// serve keeps its state. riffle serve, riffle pull, riffle mount and
// riffle run all derive their paths from it, so they agree on where the
// node's cache and layers are.
type Layout struct {
	// Root is the data directory.
	Root string
}

// DefaultRoot is the user's state directory for Riffle:
// $XDG_STATE_HOME/riffle, or ~/.local/state/riffle.
func DefaultRoot() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "riffle")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "riffle")
	}
	return filepath.Join(os.TempDir(), "riffle")
}

// DefaultLayout is the Layout of DefaultRoot.
func DefaultLayout() Layout { return Layout{Root: DefaultRoot()} }

// Create makes the data directory, with perm where it does not exist,
// and returns its Layout by the directory's real path: absolute, with
// symbolic links resolved (runc refuses a container root under a link).
// A root that is a link to nothing, or not a directory, is an error that
// says so (MkdirAll alone reports "file exists").
func (l Layout) Create(perm os.FileMode) (Layout, error) {
	abs, err := filepath.Abs(l.Root)
	if err != nil {
		return Layout{}, err
	}
	if fi, err := os.Lstat(abs); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if _, err := os.Stat(abs); errors.Is(err, fs.ErrNotExist) {
			to, _ := os.Readlink(abs)
			return Layout{}, fmt.Errorf("data directory %s is a symbolic link to %s, which does not exist: create that directory or remove the link", abs, to)
		}
	}
	if fi, err := os.Stat(abs); err == nil && !fi.IsDir() {
		return Layout{}, fmt.Errorf("data directory %s is not a directory", abs)
	}
	if err := os.MkdirAll(abs, perm); err != nil {
		return Layout{}, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return Layout{}, err
	}
	return Layout{Root: real}, nil
}

// Cache is the node cache: spans of streamed layers and layer indexes.
func (l Layout) Cache() string { return filepath.Join(l.Root, "cache") }

// Layers is the layer store (package layerstore): every layer extracted
// once, in overlayfs format, shared by pulled and settled images.
func (l Layout) Layers() string { return filepath.Join(l.Root, "layers") }

// Flat holds images pulled flat, all layers merged into one tree, when
// their layers cannot be extracted on their own (pull.Store).
func (l Layout) Flat() string { return filepath.Join(l.Root, "images", "flat") }

// Mounts holds the mount points of streamed images.
func (l Layout) Mounts() string { return filepath.Join(l.Root, "images", "mounts") }

// Profiles holds the node's copies of layers' startup profiles, by layer
// digest: the last fetched from the profile source, or recorded here.
func (l Layout) Profiles() string { return filepath.Join(l.Root, "profiles") }

// Registry is the embedded registry's storage (riffle serve).
func (l Layout) Registry() string { return filepath.Join(l.Root, "registry") }

// Indexes is the index service's store of layer indexes (riffle serve).
func (l Layout) Indexes() string { return filepath.Join(l.Root, "indexes") }

// Runtime is the container runtime's state (bundles, overlays).
func (l Layout) Runtime() string { return filepath.Join(l.Root, "runtime") }
