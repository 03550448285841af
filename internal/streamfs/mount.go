package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
)

// Defaults of Options.
const (
	DefaultReadTimeout = 30 * time.Second
	DefaultRetries     = 3
	DefaultPrefetchers = 4
	DefaultReadAhead   = 2
	// DefaultMissAhead is Options.MissAhead's default.
	DefaultMissAhead = 4
	// DefaultUnmountGrace bounds MountPoint.UnmountWithin.
	DefaultUnmountGrace = 10 * time.Second
)

// metadataTimeout is how long the kernel may cache entries and attributes.
// The tree never changes, so the only limit is memory the kernel manages.
const metadataTimeout = 24 * time.Hour

// Options configures a Mount. Cache is required; every other zero value is a
// working default.
type Options struct {
	// Cache is the node cache spans and whole files are stored in.
	Cache *cache.Cache
	// ReadTimeout bounds each FUSE read that must fetch data, retries
	// included: when the registry is unreachable the read fails with EIO
	// after this long (default DefaultReadTimeout). A read(2) may wait up
	// to about twice as long: the kernel retries a failed readahead page
	// once, synchronously.
	ReadTimeout time.Duration
	// Retries is how many times a span fetch is tried (default
	// DefaultRetries), within ReadTimeout.
	Retries int
	// Prefetchers bounds background fetches of the next span of a file
	// read sequentially (default DefaultPrefetchers).
	Prefetchers int
	// ReadAhead is how many spans ahead of a reader streaming a file are
	// fetched in the background (default DefaultReadAhead).
	ReadAhead int
	// MissAhead is how many spans of its layer after a blocked miss are
	// fetched in the background, once the mount's readers have missed
	// missAheadAfter times (default DefaultMissAhead; see readAhead).
	MissAhead int
	// NoPrefetch turns read-ahead of spans off.
	NoPrefetch bool
	// NoPassthrough never stores whole files nor opens them by FUSE
	// passthrough; every read is served by this process from spans.
	NoPassthrough bool
	// Layers is the node's layer store. With it, a mount streams every
	// layer whole in the background (BackgroundLayers at a time: in chunks
	// of spans decoded in parallel when the layer's index allows, else
	// with one request) and extracts it there; each file becomes
	// local as soon as it is extracted and checked, and is then opened by
	// passthrough on the extracted file. Layers already complete in the
	// store are not fetched at all. Image.DiffIDs must be set. Without it,
	// files read whole are copied into Cache for passthrough instead.
	Layers LayerStore
	// NoBackground turns the background stream off; with Layers set,
	// layers already in the store are still used.
	NoBackground bool
	// SingleStream streams every layer with one request and one
	// decompressor, even where its index would allow chunks (to compare
	// the two).
	SingleStream bool
	// MaxBackgroundBytes turns the background stream off for images whose
	// layers are larger than this, uncompressed (0: no limit).
	MaxBackgroundBytes int64
	// BackgroundLayers bounds how many layers stream at once (default
	// DefaultBackgroundLayers).
	BackgroundLayers int
	// StreamWait is how close a layer's stream must be to a file for a
	// read to wait for the stream instead of fetching spans (default
	// DefaultStreamWait).
	StreamWait int64
	// Profile is a startup profile recorded by earlier mounts
	// (MountPoint.Profile). Its spans are fetched first, in order,
	// ProfileParallel at a time, ahead of the background stream.
	Profile *Profile
	// Hints are paths in the image (absolute; symlinks are followed) of
	// files a task reads as it starts: the program it executes, the
	// dynamic loader, libc. Without a Profile for any of the image's
	// layers, their spans (up to MaxHintBytes of each file) are fetched
	// as the mount starts, like a profile's, so the container's first
	// reads find them; paths the image lacks are skipped.
	Hints []string
	// Packs gives prefetch packs: with a Profile, each profiled layer's
	// pack is fetched in one stream (layers in parallel) instead of its
	// spans by range; spans the pack lacks are fetched by range as
	// without it. Nil: no packs.
	Packs PackSource
	// PackWait is how far ahead of a pack stream's position (compressed
	// bytes) a span may lie for a read of it to wait for the pack instead
	// of fetching it by range (default DefaultPackWait).
	PackWait int64
	// ProfileParallel bounds concurrent profile fetches (default
	// DefaultProfileParallel).
	ProfileParallel int
	// ProfileTime and ProfileBytes bound the recording of this mount's
	// profile: spans first read later than ProfileTime after mounting, or
	// past ProfileBytes of span data, are not recorded (defaults
	// DefaultProfileTime and DefaultProfileBytes).
	ProfileTime  time.Duration
	ProfileBytes int64
	// Logger receives warnings (failed fetches). Nil discards them.
	Logger *slog.Logger
	// Debug logs every FUSE request to Logger.
	Debug bool
	// KernelReadAhead is the kernel's read-ahead window on the mount, in
	// bytes (default DefaultKernelReadAhead; negative leaves the kernel's
	// 128 KiB).
	KernelReadAhead int
	// UnmountGrace is how long UnmountWithin(0) lets files in use keep a
	// detached mount working before its connection is aborted (default
	// DefaultUnmountGrace).
	UnmountGrace time.Duration
}

// MountPoint is a mounted image.
type MountPoint struct {
	dir    string
	img    Image
	opts   Options
	cache  *cache.Cache
	log    *slog.Logger
	server *fuse.Server

	nodes []*node // inode order; nodes[0] is the root
	// noXattrs is set when no entry of the image has an extended
	// attribute (see fsNode.Getxattr).
	noXattrs   bool
	order      []uint64 // readdir's sort key by inode number - 1 (streamOrder)
	spans      [][]Span // per layer
	totalBytes int64

	metrics *metrics
	// background is the layer streams; nil without Options.Layers.
	background *background
	// urgent counts span fetches readers are blocked on (and profile
	// fetches): the background streams pause while there are any.
	urgent atomic.Int64
	// lastUrgent is when (UnixNano) an urgent fetch last ended.
	lastUrgent atomic.Int64
	// lastActive is when (UnixNano) the task last opened a file, or read
	// one through this process from the cache (readersBusy).
	lastActive atomic.Int64
	// quietSlot is held by the one chunk fetch of the layer streams that
	// may run while readers are busy (background_chunks.go).
	quietSlot chan struct{}
	lastChunk atomic.Int64 // when (UnixNano) the last chunk fetch took its turn
	// lastChunkTook is how long (ns) the network part of the last chunk
	// fetched in turns took (see chunkTurn).
	lastChunkTook atomic.Int64
	// packsDone is closed once the mount's prefetch packs are read (at
	// once when it has none): until then no chunk fetch starts.
	packsDone chan struct{}
	// localOpens counts opens of files the streams made local; following
	// samples its rate.
	localOpens atomic.Int64
	// opens counts the task's opens of regular files (see walking).
	opens       atomic.Int64
	followMu    sync.Mutex
	followAt    time.Time
	followOpens int64
	followRate  float64
	// lastSpan is, per layer, the span a reader read last (-2 none), to
	// see readers walking a layer's files in order.
	lastSpan []atomic.Int64
	// blockedMisses counts reads that waited for a span fetch.
	blockedMisses atomic.Int64
	// elfSeen holds the files fetchNeeded has followed (*node keys);
	// neededHeads counts the library headers it is fetching.
	elfSeen     sync.Map
	neededHeads atomic.Int32
	// missRuns are the missRuns under way, by the spans they bring.
	runMu    sync.Mutex
	missRuns map[runKey]*missRun
	// openTails counts the spans fetchOpenTail is fetching.
	openTails atomic.Int64
	// advised is, per layer, the last cached span whose file the kernel
	// was asked to read ahead (-1 none).
	advised []atomic.Int64
	profile *recorder
	// packs is, per layer, its prefetch pack while it is being read.
	packs []atomic.Pointer[packStream]
	// queued holds the spans of the profile or hints queued for range
	// fetches and not fetched yet (see spansComing).
	queuedMu sync.Mutex
	queued   map[profileJob]bool
	// fallbackReads counts reads of whole cached files that reached this
	// process because the kernel refused passthrough (tests check it).
	fallbackReads atomic.Int64
	prefetchSem   chan struct{}
	ctx           context.Context // ends at Unmount; background work uses it
	cancel        context.CancelFunc
	bg            sync.WaitGroup
	once          sync.Once
	unmountErr    error
	// conn is the FUSE connection number (fusectl), -1 if unknown.
	conn int
	// problems keeps the last fetch failures (Problems).
	problems problemLog
}

// Mount serves img read-only at dir, which must be an existing directory.
// It builds the whole merged tree from the layers' file tables first, so
// it fails (nothing mounted) on an unsafe or malformed table; a nil layer
// gives a *NotEligibleError. Mounting needs root (or CAP_SYS_ADMIN) for
// allow_other, and passthrough needs root as well.
func Mount(ctx context.Context, dir string, img Image, opts Options) (*MountPoint, error) {
	if opts.Cache == nil {
		return nil, errors.New("streamfs: Options.Cache is required")
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.Retries <= 0 {
		opts.Retries = DefaultRetries
	}
	if opts.ReadAhead <= 0 {
		opts.ReadAhead = DefaultReadAhead
	}
	if opts.MissAhead <= 0 {
		opts.MissAhead = DefaultMissAhead
	}
	if opts.Prefetchers <= 0 {
		opts.Prefetchers = DefaultPrefetchers
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := &MountPoint{
		dir: dir, img: img, opts: opts, cache: opts.Cache, log: log,
		metrics:     newMetrics(dir, img.Name),
		prefetchSem: make(chan struct{}, opts.Prefetchers),
		quietSlot:   make(chan struct{}, 1),
		packsDone:   make(chan struct{}),
	}
	m.lastUrgent.Store(time.Now().UnixNano()) // the task is about to start
	tables := make([][]Entry, len(img.Layers))
	ends := make([]int64, len(img.Layers))
	m.spans = make([][]Span, len(img.Layers))
	for i, l := range img.Layers {
		if l == nil {
			return nil, NotEligible("", "layer %d has no index", i)
		}
		spans := l.Spans()
		var end int64
		for j, s := range spans {
			if s.Offset != end || s.Size < 0 {
				return nil, fmt.Errorf("streamfs: layer %s: span %d at [%d, +%d) does not follow the previous one (ends at %d)", l.Digest(), j, s.Offset, s.Size, end)
			}
			end += s.Size
		}
		m.spans[i], ends[i], tables[i] = spans, end, l.Entries()
	}
	m.lastSpan = make([]atomic.Int64, len(img.Layers))
	m.missRuns = make(map[runKey]*missRun)
	m.packs = make([]atomic.Pointer[packStream], len(img.Layers))
	m.advised = make([]atomic.Int64, len(img.Layers))
	for i := range m.lastSpan {
		m.lastSpan[i].Store(-2)
		m.advised[i].Store(-1)
	}
	root, nodes, err := buildTree(tables, ends)
	if err != nil {
		return nil, fmt.Errorf("streamfs: %s: %w", img.Name, err)
	}
	m.nodes, m.order = nodes, streamOrder(nodes)
	m.noXattrs = true
	for _, n := range nodes {
		if n.typ == unix.S_IFREG {
			m.totalBytes += n.size
		}
		if len(n.xattrs) > 0 {
			m.noXattrs = false
		}
	}
	m.profile = newRecorder(m, opts)
	if opts.Layers != nil {
		if err := m.setupBackground(); err != nil {
			return nil, err
		}
	}

	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("streamfs: mount point: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("streamfs: mount point %s is not a directory", dir)
	}
	timeout := metadataTimeout
	fsopts := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
		// Mode 0 is a real mode in images (etc/shadow), not "unset".
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther: true,
			// mount(2) directly when root, fusermount3 otherwise.
			DirectMount: os.Geteuid() == 0,
			FsName:      "riffle:" + img.Name,
			Name:        "riffle",
			// The kernel checks modes and owners against the image's,
			// as on a local filesystem.
			Options: []string{"ro", "default_permissions"},
			// Reads of up to about 1 MiB per request: fewer round
			// trips to this process for data it serves itself. (The
			// kernel caps its read-ahead at 128 KiB whatever this says;
			// see setKernelReadAhead.)
			MaxReadAhead: 1 << 20,
			// Reads of up to about 1 MiB (see maxRead).
			MaxWrite: maxRead,
			// The tree never changes: the kernel keeps each symlink's
			// target (a cold python import read 378 of them).
			EnableSymlinkCaching: true,
			Debug:                opts.Debug,
			// The mount is a lower layer of overlayfs and may itself sit
			// on the cache's filesystem by passthrough.
			MaxStackDepth: 1,
		},
	}
	if opts.Debug {
		fsopts.Logger = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
		fsopts.MountOptions.Logger = fsopts.Logger
	}
	m.ctx, m.cancel = context.WithCancel(context.WithoutCancel(ctx))
	rootNode := &fsNode{n: root, m: m}
	server, err := mountCloexec(dir, rootNode, fsopts)
	if err != nil {
		m.cancel()
		m.closeBackground()
		return nil, fmt.Errorf("streamfs: mount %s: %w", dir, err)
	}
	m.server = server
	m.conn = connOf(dir)
	if opts.KernelReadAhead == 0 {
		opts.KernelReadAhead = DefaultKernelReadAhead
	}
	m.setKernelReadAhead(opts.KernelReadAhead)
	m.startProfile()
	if m.background != nil {
		m.startBackground()
	}
	return m, nil
}

// Dir returns the mount point.
func (m *MountPoint) Dir() string { return m.dir }

// Unmount unmounts the image and waits for background fetches to stop. It
// fails (and the mount stays) while files are in use, like umount(8).
func (m *MountPoint) Unmount() error {
	if err := m.server.Unmount(); err != nil {
		return fmt.Errorf("streamfs: unmount %s: %w", m.dir, err)
	}
	m.shutdown()
	return nil
}

// Wait blocks until the image is unmounted, by Unmount or from outside
// (UnmountDir, umount(8)).
func (m *MountPoint) Wait() {
	m.server.Wait()
	m.shutdown()
}

func (m *MountPoint) shutdown() {
	m.once.Do(func() {
		m.cancel()
		m.bg.Wait()
		m.closeBackground()
	})
}

// UnmountDir unmounts the image mounted at dir by another process (riffle
// unmount). With lazy, the mount is detached at once and goes away when its
// last file is closed.
func UnmountDir(dir string, lazy bool) error {
	flags := 0
	if lazy {
		flags = unix.MNT_DETACH
	}
	if err := unix.Unmount(dir, flags); err != nil {
		return fmt.Errorf("streamfs: unmount %s: %w", dir, err)
	}
	return nil
}

func sortStrings(s []string) { sort.Strings(s) }

// SpanCounts returns how many spans each layer has, bottom layer first:
// the span keys of layer i in the cache are SpanKey(digest, 0..n-1).
func (m *MountPoint) SpanCounts() []int {
	out := make([]int, len(m.spans))
	for i, s := range m.spans {
		out[i] = len(s)
	}
	return out
}
