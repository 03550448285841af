package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// usage is what the node knows to be in use, so that Prune removes only
// what nothing uses. Root filesystems handed out by Pull and Stream hold
// their lower directories until released; stream mounts hold their
// image's layers (a mount serves settled files from the layer store).
type usage struct {
	// gate is held shared by Pull and Stream from start to hand-out, so
	// that layers a pull has extracted but not yet handed out are never
	// pruned, and exclusively by Prune.
	gate sync.RWMutex

	mu    sync.Mutex
	held  map[string]int      // lower directory → root filesystems holding it
	known map[string][]string // lower directory → image references seen using it
}

// held runs get (a Pull or Stream) so that Prune does not run meanwhile,
// and keeps the root filesystem it returns from Prune until its Release.
// Holding the gate from start to hand-out matters: layers a pull has
// extracted are not in use by anything until the root filesystem exists.
func (n *Node) held(ref string, get func() (*RootFS, error)) (*RootFS, error) {
	n.use.gate.RLock()
	defer n.use.gate.RUnlock()
	rfs, err := get()
	if err != nil {
		return nil, err
	}
	return n.hold(ref, rfs), nil
}

// hold marks rfs's lower directories in use until rfs.Release, and
// stamps them used now (Prune removes the least recently used first).
func (n *Node) hold(ref string, rfs *RootFS) *RootFS {
	u := &n.use
	u.mu.Lock()
	if u.held == nil {
		u.held, u.known = map[string]int{}, map[string][]string{}
	}
	for _, d := range rfs.Lower {
		u.held[d]++
		if !slices.Contains(u.known[d], ref) {
			u.known[d] = append(u.known[d], ref)
		}
	}
	u.mu.Unlock()
	n.touch(rfs.Lower)
	release := rfs.Release
	var once sync.Once
	out := *rfs
	out.Release = func() {
		once.Do(func() {
			u.mu.Lock()
			for _, d := range rfs.Lower {
				if u.held[d]--; u.held[d] <= 0 {
					delete(u.held, d)
				}
			}
			u.mu.Unlock()
			n.touch(rfs.Lower)
			if release != nil {
				release()
			}
		})
	}
	return &out
}

// touch stamps the entries (layer or flat image directories) holding
// lower directories as used now; their mtime orders Prune's removals
// across restarts. Stream mount points are not stamped.
func (n *Node) touch(lower []string) {
	now := time.Now()
	for _, d := range lower {
		if n.ownsEntry(d) {
			_ = os.Chtimes(filepath.Dir(d), now, now)
		}
	}
}

// ownsEntry reports whether d is a layer's or a flat image's tree.
func (n *Node) ownsEntry(d string) bool {
	return strings.HasPrefix(d, n.layers.Dir()+"/") || strings.HasPrefix(d, n.opts.Layout.Flat()+"/")
}

// Entry is one layer of the layer store or one image pulled flat.
type Entry struct {
	// Kind is "layer" or "flat".
	Kind string `json:"kind"`
	// Digest is a layer's diffID or a flat image's manifest digest.
	Digest digest.Digest `json:"digest"`
	// Bytes is the disk space it uses.
	Bytes int64 `json:"bytes"`
	// InUse is set while a root filesystem or a stream mount uses it.
	InUse bool `json:"inUse"`
	// LastUsed is when a root filesystem last took or released it (or
	// when it was extracted).
	LastUsed time.Time `json:"lastUsed"`
	// Images lists the image references seen using it since the node
	// started, when known.
	Images []string `json:"images,omitempty"`
}

// Mount is a stream mount of the node.
type Mount struct {
	Image   string        `json:"image"`
	Digest  digest.Digest `json:"digest"`
	Dir     string        `json:"dir"`
	Users   int           `json:"users"`
	Settled bool          `json:"settled"`
}

// Usage is what the node keeps on disk.
type Usage struct {
	// Entries lists layers and flat images, least recently used first.
	Entries []Entry `json:"entries"`
	// LayerBytes and FlatBytes sum the entries of each kind.
	LayerBytes int64 `json:"layerBytes"`
	FlatBytes  int64 `json:"flatBytes"`
	// Mounts lists the stream mounts.
	Mounts []Mount `json:"mounts"`
}

// Usage lists what the node keeps and what of it is in use.
func (n *Node) Usage() (Usage, error) {
	var u Usage
	entries, err := n.entries()
	if err != nil {
		return u, err
	}
	u.Entries = entries
	for _, e := range entries {
		if e.Kind == "layer" {
			u.LayerBytes += e.Bytes
		} else {
			u.FlatBytes += e.Bytes
		}
	}
	n.mu.Lock()
	for _, m := range n.mounts {
		u.Mounts = append(u.Mounts, Mount{Image: m.img.Reference.String(), Digest: m.img.Digest, Dir: m.mp.Dir(), Users: m.users, Settled: m.settled})
	}
	n.mu.Unlock()
	slices.SortFunc(u.Mounts, func(a, b Mount) int { return strings.Compare(a.Dir, b.Dir) })
	return u, nil
}

// entries lists the layers and flat images, least recently used first.
func (n *Node) entries() ([]Entry, error) {
	inUse, known := n.inUse()
	layers, err := n.layers.List()
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	var out []Entry
	for _, l := range layers {
		p := n.layers.Path(l.DiffID)
		out = append(out, Entry{Kind: "layer", Digest: l.DiffID, Bytes: l.Bytes, InUse: inUse[p], LastUsed: mtime(filepath.Dir(p)), Images: known[p]})
	}
	flat := pull.Store(n.opts.Layout.Flat())
	ents, _ := os.ReadDir(n.opts.Layout.Flat())
	for _, e := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if d.Validate() != nil || !flat.Has(d) {
			continue // a temporary directory of a pull in progress
		}
		p := flat.RootFS(d)
		out = append(out, Entry{Kind: "flat", Digest: d, Bytes: diskUsage(filepath.Dir(p)), InUse: inUse[p], LastUsed: mtime(filepath.Dir(p)), Images: known[p]})
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(a.LastUsed.Compare(b.LastUsed), strings.Compare(string(a.Digest), string(b.Digest)))
	})
	return out, nil
}

// inUse returns the directories in use: lower directories held by root
// filesystems, and the layers of every stream-mounted image; and the
// image references known to use each.
func (n *Node) inUse() (map[string]bool, map[string][]string) {
	in, known := map[string]bool{}, map[string][]string{}
	n.use.mu.Lock()
	for d := range n.use.held {
		in[d] = true
	}
	for d, refs := range n.use.known {
		known[d] = slices.Clone(refs)
	}
	n.use.mu.Unlock()
	n.mu.Lock()
	for _, m := range n.mounts {
		for _, d := range m.img.Config.RootFS.DiffIDs {
			p := n.layers.Path(d)
			in[p] = true
			if ref := m.img.Reference.String(); !slices.Contains(known[p], ref) {
				known[p] = append(known[p], ref)
			}
		}
	}
	n.mu.Unlock()
	return in, known
}

// PruneResult is what Prune removed.
type PruneResult struct {
	// Removed lists the entries removed, least recently used first.
	Removed []Entry `json:"removed"`
	// Bytes is the space they used.
	Bytes int64 `json:"bytes"`
	// Kept is the space the remaining layers and flat images use.
	Kept int64 `json:"kept"`
}

// Prune removes layers and flat images nothing uses, least recently used
// first, until what remains takes at most keepBytes (0 removes every one
// not in use). It is safe while tasks run: what a root filesystem or a
// stream mount uses stays, and pulls and streams wait for it (and it for
// them).
func (n *Node) Prune(ctx context.Context, keepBytes int64) (PruneResult, error) {
	n.use.gate.Lock()
	defer n.use.gate.Unlock()
	var r PruneResult
	entries, err := n.entries()
	if err != nil {
		return r, err
	}
	for _, e := range entries {
		r.Kept += e.Bytes
	}
	var errs []error
	for _, e := range entries {
		if r.Kept <= keepBytes || ctx.Err() != nil {
			break
		}
		if e.InUse {
			continue
		}
		if err := n.remove(e); err != nil {
			errs = append(errs, err)
			continue
		}
		r.Removed = append(r.Removed, e)
		r.Bytes += e.Bytes
		r.Kept -= e.Bytes
	}
	if ctx.Err() != nil {
		errs = append(errs, ctx.Err())
	}
	return r, errors.Join(errs...)
}

// remove deletes one entry.
func (n *Node) remove(e Entry) error {
	if e.Kind == "layer" {
		return n.layers.Remove(e.Digest)
	}
	dir := filepath.Dir(pull.Store(n.opts.Layout.Flat()).RootFS(e.Digest))
	// The marker goes first, so a crash midway never leaves a flat image
	// that looks whole; New removes the rest as a leftover.
	if err := os.Remove(filepath.Join(dir, "complete")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("node: remove flat image %s: %w", e.Digest, err)
	}
	// Renamed aside first so the digest's directory is free at once.
	tmp := filepath.Join(n.opts.Layout.Flat(), ".tmp-prune-"+e.Digest.Encoded())
	if err := os.Rename(dir, tmp); err != nil {
		return fmt.Errorf("node: remove flat image %s: %w", e.Digest, err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("node: remove flat image %s: %w", e.Digest, err)
	}
	return nil
}

func mtime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// diskUsage is layerstore.DiskUsage, best effort: a report, not a limit.
func diskUsage(root string) int64 {
	n, _ := layerstore.DiskUsage(root)
	return n
}

// MountHeld is MountAt for a mount the node keeps from Prune: the image's
// layers (which the mount reads once settled) stay until release, which
// the caller calls once the mount has ended.
func (n *Node) MountHeld(ctx context.Context, ref string, auth Auth, dir string) (*streamfs.MountPoint, *remote.Image, func(), error) {
	n.use.gate.RLock()
	defer n.use.gate.RUnlock()
	mp, img, err := n.MountAt(ctx, ref, auth, dir)
	if err != nil {
		return nil, nil, nil, err
	}
	var lower []string
	for _, d := range img.Config.RootFS.DiffIDs {
		lower = append(lower, n.layers.Path(d))
	}
	rfs := n.hold(ref, &RootFS{Lower: lower})
	return mp, img, rfs.Release, nil
}
