package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// ImageSource gives container runnables their root filesystem: read-only
// directories the runtime stacks an overlay on. The scheduler asks for a
// stream when a runnable sets enableImageStreaming and falls back to Pull
// when Stream fails; an error wrapping streamfs.ErrNotEligible says the
// image cannot be streamed (the reason goes into a task event).
type ImageSource interface {
	// Pull makes the whole image available locally.
	Pull(ctx context.Context, ref string, auth Auth) (*RootFS, error)
	// Stream mounts the image lazily; file data arrives as it is read.
	Stream(ctx context.Context, ref string, auth Auth) (*RootFS, error)
}

// Auth holds a container runnable's registry credentials (its username
// and password fields); zero means the default keychain.
type Auth struct {
	Username, Password string
}

// RootFS is an image made available by an ImageSource.
type RootFS struct {
	// Lower lists the read-only directories, top-most first.
	Lower []string
	// Config is the image's configuration (entrypoint, cmd, env, user...).
	Config ocispec.ImageConfig
	// Digest is the image manifest's digest.
	Digest digest.Digest
	// Method says how it arrived: "streamed" or "pulled".
	Method string
	// Reused is set when the image was already there (pulled or mounted
	// for an earlier task), so nothing was fetched to provide it.
	Reused bool
	// Fetched is what was downloaded to provide it (for a stream: index
	// building, for a pull: the layers); 0 when Reused.
	Fetched int64
	// FetchedTotal, when set, returns the bytes a streamed mount has
	// fetched so far (it grows as the container reads).
	FetchedTotal func() int64
	// Release says the caller no longer uses the root filesystem.
	Release func()
}

// ImagesOptions configure the default ImageSource.
type ImagesOptions struct {
	// Dir holds pulled images (Dir/pulled), stream mount points
	// (Dir/mounts) and, unless Cache is set, the stream cache. Required.
	Dir string
	// Registry configures the registry client (insecure hosts, timeouts).
	// A runnable's username and password replace its Keychain.
	Registry remote.Options
	// Cache is the node cache for streamed file data; nil opens one in
	// Dir/stream-cache on first use.
	Cache *cache.Cache
	// CacheBytes bounds the cache opened when Cache is nil (default 10 GiB).
	CacheBytes int64
	// Indexes is asked for layer indexes before building them.
	Indexes streamfs.IndexSource
	// NoBuildIndexes makes images whose layers have no index not
	// eligible for streaming instead of indexing them by reading each
	// layer once.
	NoBuildIndexes bool
	// Parallel bounds concurrent layer downloads of a pull (default 4).
	Parallel int
	// Logger gets warnings; nil discards.
	Logger *slog.Logger
	// Metrics, when set, gets each mount's counters (bytes and spans
	// fetched, cache hits and misses, fetch latency) while it is mounted.
	Metrics prometheus.Registerer
}

// Images is the default ImageSource: full pulls extracted once per image
// manifest into Dir/pulled and shared by every task, and streamfs mounts
// made once per image manifest and kept until Close. It is safe for
// concurrent use.
type Images struct {
	opts ImagesOptions
	log  *slog.Logger
	sf   singleflight.Group

	mu       sync.Mutex
	clients  map[Auth]*remote.Client
	mounts   map[digest.Digest]*mount
	cache    *cache.Cache
	ownCache bool
	closed   bool
}

type mount struct {
	mp     *streamfs.MountPoint
	config ocispec.ImageConfig
}

var _ ImageSource = (*Images)(nil)

// NewImages returns the default ImageSource. It unmounts stream mounts a
// previous process left behind (FUSE mounts die with their server, leaving
// dead mount points) and removes half-extracted pulls.
func NewImages(opts ImagesOptions) (*Images, error) {
	if opts.Dir == "" || !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("scheduler: ImagesOptions.Dir %q must be an absolute directory", opts.Dir)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = 10 << 30
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{"pulled", "mounts"} {
		if err := os.MkdirAll(filepath.Join(opts.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
	}
	im := &Images{opts: opts, log: log, clients: map[Auth]*remote.Client{}, mounts: map[digest.Digest]*mount{}, cache: opts.Cache}
	if err := im.cleanup(); err != nil {
		return nil, err
	}
	return im, nil
}

func (im *Images) cleanup() error {
	var errs []error
	mdir := filepath.Join(im.opts.Dir, "mounts")
	ents, _ := os.ReadDir(mdir)
	for _, e := range ents {
		p := filepath.Join(mdir, e.Name())
		_ = streamfs.UnmountDir(p, true)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("scheduler: leftover mount %s: %w", p, err))
		}
	}
	pdir := filepath.Join(im.opts.Dir, "pulled")
	ents, _ = os.ReadDir(pdir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if err := os.RemoveAll(filepath.Join(pdir, e.Name())); err != nil {
				errs = append(errs, fmt.Errorf("scheduler: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Close unmounts every stream mount and closes the cache it opened.
// Containers using them must have stopped.
func (im *Images) Close() error {
	im.mu.Lock()
	im.closed = true
	mounts := im.mounts
	im.mounts = map[digest.Digest]*mount{}
	c, own := im.cache, im.ownCache
	im.mu.Unlock()
	var errs []error
	for _, m := range mounts {
		if im.opts.Metrics != nil {
			im.opts.Metrics.Unregister(m.mp.Collector())
		}
		if err := m.mp.Unmount(); err != nil {
			_ = streamfs.UnmountDir(m.mp.Dir(), true)
		}
		m.mp.Wait()
		_ = os.Remove(m.mp.Dir())
	}
	if own && c != nil {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// staticKeychain answers every registry with one username and password.
type staticKeychain struct{ a Auth }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: k.a.Username, Password: k.a.Password}), nil
}

func (im *Images) client(a Auth) *remote.Client {
	im.mu.Lock()
	defer im.mu.Unlock()
	if c := im.clients[a]; c != nil {
		return c
	}
	o := im.opts.Registry
	if a != (Auth{}) {
		o.Keychain = staticKeychain{a}
	}
	c := remote.New(o)
	im.clients[a] = c
	return c
}

// Pull resolves ref and extracts the image into Dir/pulled/HEX/rootfs
// once; concurrent and later pulls of the same manifest share it.
func (im *Images) Pull(ctx context.Context, ref string, auth Auth) (*RootFS, error) {
	c := im.client(auth)
	img, err := c.Resolve(ctx, ref, nil)
	if err != nil {
		return nil, err
	}
	store := pull.Store(filepath.Join(im.opts.Dir, "pulled"))
	out := &RootFS{Lower: []string{store.RootFS(img.Digest)}, Config: img.Config.Config, Digest: img.Digest, Method: "pulled", Release: func() {}}
	if store.Has(img.Digest) {
		out.Reused = true
		return out, nil
	}
	type result struct{ fetched int64 }
	v, err, shared := im.sf.Do("pull "+img.Digest.String(), func() (any, error) {
		// Not ctx: the extraction is shared, one caller giving up must
		// not fail the others; it ends when the process does.
		n, err := store.Add(context.WithoutCancel(ctx), c, img, im.opts.Parallel)
		if err != nil {
			err = fmt.Errorf("scheduler: %w", err)
		}
		return result{n}, err
	})
	if err != nil {
		return nil, err
	}
	if shared {
		out.Reused = true
	} else {
		out.Fetched = v.(result).fetched
	}
	return out, nil
}

func (im *Images) streamCache() (*cache.Cache, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.cache != nil {
		return im.cache, nil
	}
	c, err := cache.Open(filepath.Join(im.opts.Dir, "stream-cache"), cache.Options{MaxBytes: im.opts.CacheBytes})
	if err != nil {
		return nil, fmt.Errorf("scheduler: stream cache: %w", err)
	}
	im.cache, im.ownCache = c, true
	return c, nil
}

// Stream mounts ref lazily at Dir/mounts/HEX, once per manifest; the mount
// stays until Close so later tasks find its data warm.
func (im *Images) Stream(ctx context.Context, ref string, auth Auth) (*RootFS, error) {
	c := im.client(auth)
	img, err := c.Resolve(ctx, ref, nil)
	if err != nil {
		return nil, err
	}
	rootfs := func(m *mount, reused bool, fetched int64) *RootFS {
		return &RootFS{
			Lower: []string{m.mp.Dir()}, Config: m.config, Digest: img.Digest, Method: "streamed",
			Reused: reused, Fetched: fetched,
			FetchedTotal: func() int64 { return m.mp.Stats().FetchedBytes },
			Release:      func() {},
		}
	}
	im.mu.Lock()
	m := im.mounts[img.Digest]
	im.mu.Unlock()
	if m != nil {
		return rootfs(m, true, 0), nil
	}
	type result struct {
		m       *mount
		fetched int64
	}
	v, err, shared := im.sf.Do("stream "+img.Digest.String(), func() (any, error) {
		im.mu.Lock()
		m := im.mounts[img.Digest]
		closed := im.closed
		im.mu.Unlock()
		if m != nil {
			return result{m: m}, nil
		}
		if closed {
			return nil, errors.New("scheduler: image source closed")
		}
		cc, err := im.streamCache()
		if err != nil {
			return nil, err
		}
		before := c.Stats().BytesFetched
		// Pin the digest so the image mounted is the one resolved.
		byDigest := img.Repository.Digest(img.Digest.String()).String()
		simg, _, err := streamfs.Open(context.WithoutCancel(ctx), c, byDigest, streamfs.OpenOptions{
			Indexes: im.opts.Indexes, Build: !im.opts.NoBuildIndexes,
		})
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(im.opts.Dir, "mounts", img.Digest.Encoded())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("scheduler: %w", err)
		}
		mp, err := streamfs.Mount(context.WithoutCancel(ctx), dir, simg, streamfs.Options{Cache: cc, Logger: im.log})
		if err != nil {
			_ = os.Remove(dir)
			return nil, err
		}
		m = &mount{mp: mp, config: img.Config.Config}
		if im.opts.Metrics != nil {
			if err := im.opts.Metrics.Register(mp.Collector()); err != nil {
				im.log.Warn("mount metrics not registered", "image", ref, "err", err)
			}
		}
		im.mu.Lock()
		im.mounts[img.Digest] = m
		im.mu.Unlock()
		// Bytes read through this client while opening: manifests and
		// (when indexes are built here) whole layers. Concurrent use of the
		// client by others can inflate it; it is a report, not accounting.
		return result{m: m, fetched: c.Stats().BytesFetched - before}, nil
	})
	if err != nil {
		return nil, err
	}
	r := v.(result)
	if shared {
		return rootfs(r.m, true, 0), nil
	}
	return rootfs(r.m, false, r.fetched), nil
}
