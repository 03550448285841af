package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/layerstore"
	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/unpack"
)

// ErrClosed is returned by Pull and Stream once Close has begun.
var ErrClosed = errors.New("node: closed")

// Auth holds registry credentials (a container runnable's username and
// password); the zero value means the default keychain.
type Auth struct {
	Username, Password string
}

// How an image arrived, as RootFS.Method reports it.
const (
	// MethodStreamed: a lazy FUSE mount; file data arrives as it is read.
	MethodStreamed = "streamed"
	// MethodPulled: every layer was downloaded and extracted first.
	MethodPulled = "pulled"
	// MethodSettled: a streamed image whose layers have all been extracted
	// on the node since, served as overlayfs over them (no FUSE).
	MethodSettled = "settled"
)

// RootFS is an image made available on the node: read-only directories a
// container's overlay stacks on.
type RootFS struct {
	// Lower lists the read-only directories, top-most first.
	Lower []string
	// Config is the image's configuration (entrypoint, cmd, env, user...).
	Config ocispec.ImageConfig
	// Digest is the image manifest's digest.
	Digest digest.Digest
	// Method says how it arrived (MethodStreamed, MethodPulled).
	Method string
	// Reused is set when the image was already there (pulled or mounted
	// for an earlier task), so nothing was fetched to provide it.
	Reused bool
	// Fetched is the compressed bytes downloaded to provide it (a stream:
	// indexes built or fetched; a pull: the layers); 0 when Reused.
	Fetched int64
	// Extracted is the uncompressed bytes (layer tar streams) a pull
	// extracted to provide it; 0 when Reused, and for a stream, whose
	// uncompressed bytes arrive as it is read (Stats).
	Extracted int64
	// FetchedTotal, when set, returns the compressed bytes a streamed
	// mount has fetched so far (it grows as the container reads).
	FetchedTotal func() int64
	// Stats, when set (a streamed mount), returns the mount's counters:
	// compressed bytes over the wire, uncompressed bytes made available,
	// profile prefetches and hits.
	Stats func() streamfs.Stats
	// Problems, when set (a streamed mount), returns the mount's last
	// failed span fetches (corrupt data, registry unreachable).
	Problems func() []streamfs.Problem
	// WaitSettled, when set (a streamed mount), waits until every layer of
	// the image is in the layer store and the image has settled: later
	// users get overlayfs over its layers. It returns ctx's error if ctx
	// ends first, and ErrNotSettling when the mount's layer streams are off
	// or one failed.
	WaitSettled func(ctx context.Context) error
	// Release says the caller no longer uses the root filesystem.
	Release func()
}

// ErrNotSettling is returned by RootFS.WaitSettled for a mount that will
// not settle: its background layer streams are off, or one failed (its
// files stay on demand).
var ErrNotSettling = errors.New("node: the image is not being fetched in full (background layer streams off or failed)")

// Options configure a Node.
type Options struct {
	// Layout is the data directory. Required (Root must be absolute).
	Layout Layout
	// Registry configures the registry client (insecure hosts, timeouts).
	// Credentials given to Pull and Stream replace its Keychain.
	Registry remote.Options
	// Cache is the node cache; nil opens CacheDir on first use (bounded by
	// CacheBytes) and Close closes it.
	Cache *cache.Cache
	// CacheDir is where the cache is opened when Cache is nil (default
	// Layout.Cache()).
	CacheDir string
	// CacheBytes bounds the cache opened when Cache is nil (default
	// DefaultCacheBytes).
	CacheBytes int64
	// Indexes is asked for layer indexes after the node's own index cache
	// (riffle serve: its index service; a node: another server's service).
	Indexes streamfs.IndexSource
	// Profiles keeps startup profiles (riffle serve: its index service; a
	// node: another server's). A stream mount prefetches the profile of its
	// layers and reports what its first task read when that task releases
	// it. Nil: no profiles.
	Profiles Profiles
	// Referrers makes the node look for index artifacts stored beside the
	// image in its registry (indexsvc.PushReferrer) before building.
	Referrers bool
	// NoBuildIndexes makes images whose layers have no index anywhere not
	// eligible for streaming, instead of indexing them by reading each
	// layer once.
	NoBuildIndexes bool
	// SpanSize is used when this node builds an index (0: the default).
	SpanSize int64
	// Parallel bounds concurrent layer downloads (default DefaultParallel).
	Parallel int
	// Mount tunes every stream mount (read timeout, retries...). Its Cache
	// and Logger are set by the node.
	Mount streamfs.Options
	// Logger gets warnings; nil discards.
	Logger *slog.Logger
	// Metrics, when set, gets each mount's counters while it is mounted.
	Metrics prometheus.Registerer
}

// Profiles stores startup profiles by layer digest; *indexsvc.Service
// and indexsvc.HTTPSource are ones. AddProfile gets the repository the
// layer was read from, so the store can build the layer's prefetch pack;
// a Profiles that is also a streamfs.PackSource (both of those are) gives
// the packs to stream mounts.
type Profiles interface {
	Profile(ctx context.Context, layer digest.Digest) (*indexsvc.LayerProfile, error)
	AddProfile(ctx context.Context, repo string, layer digest.Digest, spans []int) error
}

// Node is a node's image engine: full pulls extracted once per image and
// stream mounts made once per image, shared by every caller and kept until
// Close. riffle serve's scheduler, riffle mount, riffle pull and riffle run
// all go through it. It is safe for concurrent use.
type Node struct {
	opts Options
	log  *slog.Logger
	sf   singleflight.Group

	// ctx is the node's lifetime: shared pulls and mounts run under it,
	// not under the context of whichever caller started them, so one
	// caller giving up does not fail the others. Close cancels it and
	// waits for work (wg) before unmounting.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// reports are startup profiles being reported after a release; Close
	// waits for them. Added to under mu, only before closed is set.
	reports sync.WaitGroup

	layers  *layerstore.Store
	metrics *metrics
	use     usage // what is in use, for Prune (usage.go)

	mu       sync.Mutex
	clients  map[Auth]*remote.Client
	mounts   map[digest.Digest]*mount
	warmed   map[digest.Digest]time.Time // when each image was last warmed (warm.go)
	cache    *cache.Cache
	ownCache bool
	closed   bool
}

type mount struct {
	mp     *streamfs.MountPoint
	config ocispec.ImageConfig
	img    *remote.Image
	spans  []int // per layer, how many spans its index has

	users   int  // RootFSes handed out and not released; guarded by Node.mu
	settled bool // every layer is in the layer store; guarded by Node.mu
	// settledCh is closed when settled is set.
	settledCh chan struct{}
	reported  sync.Once
	// jobOff is set when the background stream is off only because the
	// task that mounted it asked (WithoutBackground): a later task that
	// wants it mounts the image anew once nobody uses this mount.
	jobOff bool
	// gone is closed when the mount is unmounted.
	gone     chan struct{}
	goneOnce sync.Once
}

// retire reports whether m should make way for a new mount of its image
// for a task that wants what so says: m has no background stream only
// because its task asked, this task wants one, and nobody uses m. Without
// it, one task that switched the stream off would leave every later task
// of the image on the node without it, and the image would never settle.
// Called with Node.mu held.
func (m *mount) retire(so streamOptions) bool {
	return m.jobOff && !so.noBackground && m.users == 0
}

// New returns a Node. It unmounts stream mounts a previous process left
// behind (FUSE mounts die with their server, leaving dead mount points)
// and removes half-extracted pulls.
func New(opts Options) (*Node, error) {
	if opts.Layout.Root == "" || !isAbs(opts.Layout.Root) {
		return nil, fmt.Errorf("node: Layout.Root %q must be an absolute directory", opts.Layout.Root)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = DefaultCacheBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Every path below the root is the real one: runc refuses a
	// container root under a symbolic link ("invalid rootfs").
	layout, err := opts.Layout.Create(0o755)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	opts.Layout = layout
	for _, d := range []string{opts.Layout.Mounts(), opts.Layout.Flat()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	layers, err := layerstore.Open(opts.Layout.Layers())
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		opts: opts, log: log, ctx: ctx, cancel: cancel, layers: layers,
		clients: map[Auth]*remote.Client{}, mounts: map[digest.Digest]*mount{}, warmed: map[digest.Digest]time.Time{}, cache: opts.Cache,
	}
	if err := n.cleanup(); err != nil {
		cancel()
		return nil, err
	}
	n.wg.Add(1)
	go n.syncCache()
	n.metrics = newMetrics(n)
	if opts.Metrics != nil {
		if err := opts.Metrics.Register(n.metrics); err != nil {
			n.log.Warn("node: metrics not registered", "err", err)
		}
	}
	return n, nil
}

func isAbs(p string) bool { return strings.HasPrefix(p, "/") }

// cleanup removes what a previous process left: dead stream mounts and
// half-extracted flat pulls (the layer store removes its own half-extracted
// layers).
func (n *Node) cleanup() error {
	var errs []error
	mdir := n.opts.Layout.Mounts()
	ents, _ := os.ReadDir(mdir)
	for _, e := range ents {
		p := mdir + "/" + e.Name()
		_ = streamfs.CleanupDir(p) // aborts a connection a leaked /dev/fuse keeps open
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("node: leftover mount %s: %w", p, err))
		}
	}
	fdir := n.opts.Layout.Flat()
	ents, _ = os.ReadDir(fdir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if err := os.RemoveAll(fdir + "/" + e.Name()); err != nil {
				errs = append(errs, fmt.Errorf("node: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Close stops the node: pulls and mounts in progress are cancelled and
// waited for, then every stream mount is unmounted and the cache the node
// opened is closed. Containers using the mounts must have stopped.
func (n *Node) Close() error {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.cancel()
	n.wg.Wait()
	n.mu.Lock()
	mounts := make([]*mount, 0, len(n.mounts))
	for _, m := range n.mounts {
		mounts = append(mounts, m)
	}
	for _, m := range mounts {
		n.forgetLocked(m)
	}
	c, own := n.cache, n.ownCache
	n.mu.Unlock()
	var errs []error
	// At once, so that shutdown waits one unmount grace, not one per
	// mount; and the profile reports (the network) beside the unmounts
	// (the disk: a mount waits for its layer streams, which may be
	// syncing a layer they just completed). After a cold read of every
	// file of the bench image, riffle run waited 66 ms for the report,
	// then 390 ms to unmount.
	var wg sync.WaitGroup
	for _, m := range mounts {
		wg.Go(func() { n.reportProfile(m) })
		wg.Go(func() { n.unmount(m) })
	}
	wg.Wait()
	n.reports.Wait()
	if own && c != nil {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// cacheSyncInterval is how often the node makes its cache's new entries
// durable (one syncfs): the cache writes entries without an fsync each,
// and drops what was not synced when a process ended uncleanly.
const cacheSyncInterval = 30 * time.Second

// syncCache syncs the node cache every cacheSyncInterval until Close.
func (n *Node) syncCache() {
	defer n.wg.Done()
	t := time.NewTicker(cacheSyncInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		c := n.cache
		n.mu.Unlock()
		if c != nil {
			if err := c.Sync(); err != nil {
				n.log.Warn("node: syncing the cache failed", "err", err)
			}
		}
	}
}

// forgetLocked removes m from the node's mounts, its counters going to
// the node's totals in the same critical section, so a scrape sees them
// once. n.mu is held.
func (n *Node) forgetLocked(m *mount) {
	if n.mounts[m.img.Digest] == m {
		delete(n.mounts, m.img.Digest)
		n.metrics.unmounted(m.mp.Stats())
	}
}

func (n *Node) unmount(m *mount) {
	if n.opts.Metrics != nil {
		n.opts.Metrics.Unregister(m.mp.Collector())
	}

	if err := m.mp.UnmountWithin(0); err != nil {
		n.log.Warn("node: unmount", "image", m.img.Reference, "err", err)
	}
	_ = os.Remove(m.mp.Dir())
	m.goneOnce.Do(func() { close(m.gone) })
}

// begin registers work that Close must wait for; it fails once Close has
// begun, so nothing starts (or inserts a mount) after Close.
func (n *Node) begin() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	n.wg.Add(1)
	return nil
}

// Layout returns the node's data directory layout.
func (n *Node) Layout() Layout { return n.opts.Layout }

// Client returns the registry client for auth, one per credential.
func (n *Node) Client(a Auth) *remote.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.clients[a]; c != nil {
		return c
	}
	o := n.opts.Registry
	if a != (Auth{}) {
		o.Keychain = staticKeychain{a}
	}
	c := remote.New(o)
	n.clients[a] = c
	return c
}

// staticKeychain answers every registry with one username and password.
type staticKeychain struct{ a Auth }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: k.a.Username, Password: k.a.Password}), nil
}

// Cache returns the node cache, opening it on first use.
func (n *Node) Cache() (*cache.Cache, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cache != nil {
		return n.cache, nil
	}
	dir := cmp.Or(n.opts.CacheDir, n.opts.Layout.Cache())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("node: cache: %w", err)
	}
	c, err := cache.Open(dir, cache.Options{MaxBytes: n.opts.CacheBytes})
	if errors.Is(err, cache.ErrLocked) {
		return nil, fmt.Errorf("node: the node cache %s is in use by another riffle process (riffle serve, mount or run on this data directory); stop it, or give this one its own data directory: %w", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("node: cache: %w", err)
	}
	n.cache, n.ownCache = c, true
	return c, nil
}

// shared runs fn once for key however many callers ask at once, under the
// node's lifetime rather than any caller's context; a caller whose ctx
// ends stops waiting (the work goes on for the others). shared reports
// whether this caller joined work another caller led.
func (n *Node) shared(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (v any, shared bool, err error) {
	// Only the caller whose function runs leads; singleflight's Shared is
	// set for the leader too when others joined, and the leader is the
	// one whose task reports what the work fetched.
	var led atomic.Bool
	ch := n.sf.DoChan(key, func() (any, error) {
		led.Store(true)
		if err := n.begin(); err != nil {
			return nil, err
		}
		defer n.wg.Done()
		return fn(n.ctx)
	})
	select {
	case r := <-ch:
		return r.Val, !led.Load(), r.Err
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// Pull resolves ref and extracts every layer it does not have yet into
// the node's layer store, in parallel, each layer once however many
// images share it; concurrent pulls of one manifest share the work. The
// root filesystem is overlayfs over the layer directories.
func (n *Node) Pull(ctx context.Context, ref string, auth Auth) (*RootFS, error) {
	return n.held(ref, func() (*RootFS, error) { return n.counted(n.pull(ctx, ref, auth)) })
}

// counted counts a root filesystem handed out, by method.
func (n *Node) counted(rfs *RootFS, err error) (*RootFS, error) {
	if err == nil {
		n.metrics.started(rfs.Method)
	}
	return rfs, err
}

func (n *Node) pull(ctx context.Context, ref string, auth Auth) (*RootFS, error) {
	c := n.Client(auth)
	img, err := n.resolve(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	out := &RootFS{Lower: pull.LowerDirs(n.layers, img), Config: img.Config.Config, Digest: img.Digest, Method: MethodPulled, Release: func() {}}
	if n.complete(img) {
		out.Reused = true
		n.warm(img)
		return out, nil
	}
	flat := pull.Store(n.opts.Layout.Flat())
	if flat.Has(img.Digest) {
		out.Lower, out.Reused = []string{flat.RootFS(img.Digest)}, true
		return out, nil
	}
	v, shared, err := n.shared(ctx, "pull "+img.Digest.String(), func(ctx context.Context) (any, error) {
		b, err := pull.Layers(ctx, c, img, n.layers, n.opts.Parallel)
		n.metrics.pulled(b)
		if errors.Is(err, unpack.ErrCrossLayerLink) {
			n.log.Info("node: a layer links into a lower one; pulling the image flat", "image", img.Reference, "err", err)
			more, ferr := flat.Add(ctx, c, img, n.opts.Parallel)
			n.metrics.pulled(more)
			return pull.Bytes{Wire: b.Wire + more.Wire, Uncompressed: b.Uncompressed + more.Uncompressed}, ferr
		}
		if err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	if flat.Has(img.Digest) {
		out.Lower = []string{flat.RootFS(img.Digest)}
	}
	if shared {
		out.Reused = true
	} else {
		b := v.(pull.Bytes)
		out.Fetched, out.Extracted = b.Wire, b.Uncompressed
	}
	return out, nil
}

// complete reports whether every layer of img is in the layer store.
func (n *Node) complete(img *remote.Image) bool {
	for _, d := range img.Config.RootFS.DiffIDs {
		if !n.layers.Has(d) {
			return false
		}
	}
	return true
}

// settled returns img as overlayfs over its extracted layers, when every
// layer is in the store: a streamed image that has settled, or one pulled.
// Layers from the store are warmed with the image's startup profile.
func (n *Node) settled(img *remote.Image) *RootFS {
	out := &RootFS{Config: img.Config.Config, Digest: img.Digest, Method: MethodSettled, Reused: true, Release: func() {}}
	switch flat := pull.Store(n.opts.Layout.Flat()); {
	case n.complete(img):
		out.Lower = pull.LowerDirs(n.layers, img)
		n.warm(img)
	case flat.Has(img.Digest):
		out.Lower = []string{flat.RootFS(img.Digest)}
	default:
		return nil
	}
	return out
}

// Stream gives ref's root filesystem without waiting for its data. An
// image whose layers are all on the node already (settled, or pulled) is
// overlayfs over them, with no FUSE on its data path. Otherwise ref is
// mounted lazily under Layout.Mounts(), once per manifest, and the mount
// stays until Close so later tasks find its data warm. An error wrapping
// streamfs.ErrNotEligible says why the image cannot be streamed.
func (n *Node) Stream(ctx context.Context, ref string, auth Auth, opts ...StreamOption) (*RootFS, error) {
	var so streamOptions
	for _, o := range opts {
		o(&so)
	}
	return n.held(ref, func() (*RootFS, error) { return n.counted(n.stream(ctx, ref, auth, so)) })
}

// StreamOption changes how Stream mounts an image that is not mounted on
// the node yet; a mount already in use is shared as it is. An idle mount
// whose background stream a task switched off is mounted anew for a task
// that wants it.
type StreamOption func(*streamOptions)

type streamOptions struct {
	noBackground bool
	exec         []string
}

// WithExec names the command the task runs (its argv; empty when it runs
// the image's own entrypoint). A mount without a startup profile fetches
// the spans of the program, of the program a shell's -c script starts
// with, and of the dynamic loader and libc as it starts, so that the
// container's first reads find them instead of waiting a round trip each
// (streamfs.Options.Hints).
func WithExec(argv ...string) StreamOption {
	return func(o *streamOptions) { o.exec = argv }
}

// WithoutBackground makes the mount fetch only what its readers read (and
// the startup profile): no whole-layer streams in the background, so the
// image does not settle. For a task that reads little of a big image on a
// link others need.
func WithoutBackground() StreamOption {
	return func(o *streamOptions) { o.noBackground = true }
}

func (n *Node) stream(ctx context.Context, ref string, auth Auth, so streamOptions) (*RootFS, error) {
	c := n.Client(auth)
	img, err := n.resolveManifest(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	// Without its config in the node cache, the image never ran on this
	// node, so it has not settled: the config comes with the indexes.
	if img.RawConfig != nil {
		if rfs := n.settled(img); rfs != nil {
			return rfs, nil
		}
	}
	rootfs := func(m *mount, reused bool, fetched int64) *RootFS {
		var once sync.Once
		return &RootFS{
			Lower: []string{m.mp.Dir()}, Config: m.config, Digest: img.Digest, Method: MethodStreamed,
			Reused: reused, Fetched: fetched,
			FetchedTotal: func() int64 { return m.mp.Stats().WireBytes },
			Stats:        m.mp.Stats,
			Problems:     m.mp.Problems,
			WaitSettled:  func(ctx context.Context) error { return n.waitSettled(ctx, m) },
			Release:      func() { once.Do(func() { n.release(m) }) },
		}
	}
	n.mu.Lock()
	m := n.mounts[img.Digest]
	if m != nil && !m.retire(so) {
		m.users++
	} else {
		m = nil
	}
	n.mu.Unlock()
	if m != nil {
		return rootfs(m, true, 0), nil
	}
	type result struct {
		m       *mount
		fetched int64
	}
	v, shared, err := n.shared(ctx, "stream "+img.Digest.String(), func(ctx context.Context) (any, error) {
		n.mu.Lock()
		m := n.mounts[img.Digest]
		var old *mount
		if m != nil && m.retire(so) {
			n.forgetLocked(m)
			old, m = m, nil
		}
		n.mu.Unlock()
		if m != nil {
			return result{m: m}, nil
		}
		if old != nil {
			// Unmounted before the new mount takes its directory; new
			// callers wait in this flight meanwhile.
			n.unmount(old)
		}
		m, fetched, err := n.mount(ctx, c, img, so)
		if err != nil {
			return nil, err
		}
		return result{m: m, fetched: fetched}, nil
	})
	if err != nil {
		return nil, err
	}
	r := v.(result)
	n.mu.Lock()
	r.m.users++
	n.mu.Unlock()
	if shared {
		return rootfs(r.m, true, 0), nil
	}
	return rootfs(r.m, false, r.fetched), nil
}

// mount opens img for streaming and mounts it at the node's mount point
// for it, registering the mount unless Close began meanwhile.
func (n *Node) mount(ctx context.Context, c *remote.Client, img *remote.Image, so streamOptions) (*mount, int64, error) {
	before := c.Stats().BytesFetched
	mp, err := n.mountAt(ctx, c, img, n.opts.Layout.Mounts()+"/"+img.Digest.Encoded(), so)
	if err != nil {
		return nil, 0, err
	}
	m := &mount{
		mp: mp, config: img.Config.Config, img: img, spans: mp.SpanCounts(),
		settledCh: make(chan struct{}), gone: make(chan struct{}),
		jobOff: so.noBackground && !n.opts.Mount.NoBackground,
	}
	n.mu.Lock()
	closed := n.closed
	if !closed {
		n.mounts[img.Digest] = m
		n.wg.Add(1)
		go n.settle(m)
	}
	n.mu.Unlock()
	if closed {
		n.unmount(m)
		return nil, 0, ErrClosed
	}
	if n.opts.Metrics != nil {
		if err := n.opts.Metrics.Register(mp.Collector()); err != nil {
			n.log.Warn("mount metrics not registered", "image", img.Reference, "err", err)
		}
	}
	// Bytes read through this client while opening: manifests, indexes
	// and (when indexes are built here) whole layers. Concurrent use of
	// the client by others can inflate it; it is a report, not accounting.
	return m, c.Stats().BytesFetched - before, nil
}

// mountAt mounts img at dir, creating dir.
func (n *Node) mountAt(ctx context.Context, c *remote.Client, img *remote.Image, dir string, so streamOptions) (*streamfs.MountPoint, error) {
	cc, err := n.Cache()
	if err != nil {
		return nil, err
	}
	mo := n.opts.Mount
	// The startup profile is asked for while the indexes arrive: both are
	// round trips before the first read. Its packs are asked for as soon
	// as it is in (earlypack.go).
	type learned struct {
		profile *streamfs.Profile
		early   *earlyPacks // nil when no pack was asked for ahead
	}
	profile := make(chan learned, 1)
	if mo.Profile == nil {
		n.wg.Add(1) // mountAt runs as counted work: Close waits for this too
		go func() {
			defer n.wg.Done()
			l := learned{profile: n.profile(ctx, img)}
			if ps, ok := n.opts.Profiles.(streamfs.PackSource); ok && mo.Packs == nil && l.profile != nil && ctx.Err() == nil {
				l.early = startEarlyPacks(n.ctx, &n.wg, ps, cc, l.profile)
			}
			profile <- l
		}()
	} else {
		profile <- learned{profile: mo.Profile}
	}
	var got *learned // once received
	mounted := false
	defer func() {
		if mounted {
			return
		}
		// The mount failed: the packs asked for ahead are not read.
		if got != nil {
			if got.early != nil {
				got.early.drop()
			}
			return
		}
		go func() {
			if l := <-profile; l.early != nil {
				l.early.drop()
			}
		}()
	}()
	src := n.IndexSource(c, img)
	ws, _ := src.(streamfs.WindowSource)
	fetchConfig := img.RawConfig == nil
	simg, err := streamfs.OpenImage(ctx, c, img, streamfs.OpenOptions{Indexes: src, Windows: ws})
	if err != nil {
		return nil, err
	}
	if fetchConfig {
		n.keepConfig(ctx, img)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	mo.Cache, mo.Logger, mo.Layers = cc, n.log, n.layers
	mo.NoBackground = mo.NoBackground || so.noBackground
	mo.Hints = append(execHints(so.exec), mo.Hints...)
	l := <-profile
	got = &l
	mo.Profile = l.profile
	if l.early != nil {
		mo.Packs = l.early
	} else if ps, ok := n.opts.Profiles.(streamfs.PackSource); ok && mo.Packs == nil {
		mo.Packs = ps
	}
	mp, err := streamfs.Mount(ctx, dir, simg, mo)
	if err != nil {
		_ = os.Remove(dir)
		return nil, err
	}
	mounted = true
	return mp, nil
}

// MountAt mounts ref lazily at dir (created if missing) for riffle mount,
// through the node's cache and index sources. The mount is the caller's
// to unmount; it is not shared with Stream.
func (n *Node) MountAt(ctx context.Context, ref string, auth Auth, dir string) (*streamfs.MountPoint, *remote.Image, error) {
	if err := n.begin(); err != nil {
		return nil, nil, err
	}
	defer n.wg.Done()
	c := n.Client(auth)
	img, err := n.resolveManifest(ctx, c, ref)
	if err != nil {
		return nil, nil, err
	}
	mp, err := n.mountAt(ctx, c, img, dir, streamOptions{})
	if err != nil {
		return nil, nil, err
	}
	return mp, img, nil
}

// resolve resolves ref to its manifest and config for this platform.
func (n *Node) resolve(ctx context.Context, c *remote.Client, ref string) (*remote.Image, error) {
	img, err := n.resolveManifest(ctx, c, ref)
	if err != nil || img.RawConfig != nil {
		return img, err
	}
	if err := c.FetchConfig(ctx, img); err != nil {
		return nil, err
	}
	n.keepConfig(ctx, img)
	return img, nil
}

// resolveManifest resolves ref to its manifest for this platform, with the
// config when the node cache has it. The config is content-addressed and
// small: the node cache keeps it by digest (the cache checks the digest
// when storing it), so a warm start asks the registry for the manifest
// alone, a round trip less. A stream on a cold node leaves the config to
// streamfs.OpenImage, which fetches it beside the layers' indexes.
func (n *Node) resolveManifest(ctx context.Context, c *remote.Client, ref string) (*remote.Image, error) {
	r, err := c.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	img, err := c.ResolveManifest(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	if cc, err := n.Cache(); err == nil {
		if raw, ok := cachedBytes(ctx, cc, img.Manifest.Config.Digest.String()); ok {
			if img.SetConfig(raw) != nil {
				img.RawConfig = nil // fetched again, and the entry replaced
			}
		}
	}
	return img, nil
}

// keepConfig keeps img's config in the node cache by digest.
func (n *Node) keepConfig(ctx context.Context, img *remote.Image) {
	cc, err := n.Cache()
	if err != nil {
		return
	}
	key := img.Manifest.Config.Digest.String()
	if err := cacheBytes(ctx, cc, key, img.RawConfig); err != nil {
		n.log.Warn("node: keeping an image config in the cache failed", "config", key, "err", err)
	}
}
