package cache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Sentinel errors, checked with errors.Is.
var (
	// ErrNotFound is returned by Get when the key is not in the cache.
	ErrNotFound = errors.New("cache: not found")
	// ErrClosed is returned by calls on a closed Cache.
	ErrClosed = errors.New("cache: closed")
	// ErrDigestMismatch is returned by Fill when the bytes written do not
	// hash to the digest key.
	ErrDigestMismatch = errors.New("cache: digest mismatch")
	// ErrSizeMismatch is returned by Fill when the fill function wrote a
	// different number of bytes than the size given.
	ErrSizeMismatch = errors.New("cache: size mismatch")
)

// DefaultTouchInterval is how often, at most, an entry's mtime is updated
// on access when Options.TouchInterval is 0.
const DefaultTouchInterval = time.Minute

// version is written to dir/VERSION. Open refuses a directory with another
// version, or a non-empty directory without one, so pointing the cache at
// the wrong directory never deletes anybody's files.
const version = "riffle-cache 1\n"

// Options configure a Cache. The zero value is valid: no size limit, crash
// bookkeeping on (see NoSync), no re-verification.
type Options struct {
	// MaxBytes bounds the total size of the entries; least recently used
	// unpinned entries are evicted past it. 0 means unlimited. Pinned
	// entries are never evicted, so the total can exceed MaxBytes while
	// readers hold more than that.
	MaxBytes int64
	// TouchInterval is how often, at most, an access persists an entry's
	// recency (its mtime) so LRU order survives a restart. 0 means
	// DefaultTouchInterval; negative means on every access.
	TouchInterval time.Duration
	// NoSync turns the crash bookkeeping off: no sync at Open, Sync and
	// Close, and every entry found at Open is trusted. After a machine
	// crash an entry may then hold garbage, which the cache cannot detect
	// for span keys. For tests and throwaway nodes.
	//
	// Without it, entries are not fsynced one by one either (one fsync per
	// small file cost more than the data); instead Sync and Close sync
	// the whole filesystem once and record up to when entries are durable,
	// and an Open after an unclean end (a crash, or a process killed before
	// Close) drops the span entries stored after that point and re-hashes
	// such digest entries on first use.
	NoSync bool
	// VerifyOnLoad re-hashes a digest-keyed entry found on disk at Open the
	// first time this process uses it, and drops it if it does not match.
	// It costs reading the whole entry once per process (sha256 runs at
	// 1-2 GB/s), on the path of that first Get or Fill. Entries this
	// process filled are verified while being written and never re-hashed.
	VerifyOnLoad bool
}

// Cache is a content-addressed store of immutable entries in one directory.
// It is safe for concurrent use. See the package documentation.
type Cache struct {
	dir   string
	opts  Options
	lockf *os.File

	mu        sync.Mutex
	closed    bool
	entries   map[string]*entry
	lru       *list.List // of *entry; front is most recently used
	flights   map[string]*flight
	bytes     int64
	lastStamp time.Time
	stats     Stats
	wg        sync.WaitGroup // running fills
}

// entry is one stored item. Fields other than the guarded ones are
// immutable once the entry is in c.entries.
type entry struct {
	key  string
	path string
	size int64

	// Guarded by Cache.mu.
	elem      *list.Element
	pins      int
	removed   bool
	lastTouch time.Time

	// needVerify is set at Open for digest keys when VerifyOnLoad is on.
	needVerify bool
	verifyMu   sync.Mutex
	verified   bool // guarded by verifyMu
	bad        bool // guarded by verifyMu
}

// flight is a fill in progress. Everyone interested in the key waits on
// done; the fill itself runs in its own goroutine so that one caller giving
// up does not fail the others.
type flight struct {
	done   chan struct{}
	cancel context.CancelFunc

	// Guarded by Cache.mu.
	interested int  // callers still waiting
	abandoned  bool // every caller gave up; the result is discarded
	finished   bool // result is set; each waiter then owns a pin if ok
	ent        *entry
	err        error
}

// Open opens the cache in dir, creating it if needed, and takes an exclusive
// lock on it: a second Open of the same directory, in this or another
// process, fails with ErrLocked until Close. Open removes temporary files a
// crash left behind and rebuilds the LRU order from the entries' mtimes.
func Open(dir string, opts Options) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("cache: directory is empty; set the cache directory")
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("cache: MaxBytes is %d; use 0 for unlimited or a positive size", opts.MaxBytes)
	}
	if opts.TouchInterval == 0 {
		opts.TouchInterval = DefaultTouchInterval
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	// Check before creating the lock file, so a foreign directory is left
	// untouched, and again under the lock before claiming it.
	if err := checkVersion(dir, false); err != nil {
		return nil, err
	}
	lf, err := lockFile(dir)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(dir, true); err != nil {
		lf.Close()
		return nil, err
	}
	c := &Cache{
		dir:     dir,
		opts:    opts,
		lockf:   lf,
		entries: make(map[string]*entry),
		lru:     list.New(),
		flights: make(map[string]*flight),
	}
	if err := c.load(); err != nil {
		lf.Close()
		return nil, err
	}
	if !opts.NoSync {
		if err := c.recover(); err != nil {
			lf.Close()
			return nil, err
		}
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return c, nil
}

// checkVersion claims an empty directory for the cache, and refuses one
// that belongs to something else.
// With claim false it only checks.
func checkVersion(dir string, claim bool) error {
	p := filepath.Join(dir, "VERSION")
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		if string(b) != version {
			return fmt.Errorf("cache: %s has cache format %q, this riffle uses %q; delete the directory to start an empty cache", dir, strings.TrimSpace(string(b)), strings.TrimSpace(version))
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("cache: %w", err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	for _, de := range des {
		if de.Name() != "lock" {
			return fmt.Errorf("cache: %s is not empty and is not a riffle cache (no VERSION file); point the cache directory at an empty or new directory", dir)
		}
	}
	if !claim {
		return nil
	}
	if err := os.WriteFile(p, []byte(version), 0o600); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// load removes leftovers of interrupted fills and indexes the entries.
func (c *Cache) load() error {
	tmp := filepath.Join(c.dir, tmpDir)
	// Temp files are never visible as entries, so removing them all is the
	// whole crash recovery: an entry exists only after its rename.
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("cache: remove leftover temporary files: %w", err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	type found struct {
		e     *entry
		mtime time.Time
	}
	var all []found
	for _, top := range []string{blobsDir, spansDir, indexesDir} {
		root := filepath.Join(c.dir, top)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) && p == root {
					return nil
				}
				return err
			}
			if d.IsDir() {
				return nil
			}
			rel, err := filepath.Rel(c.dir, p)
			if err != nil {
				return err
			}
			k, kerr := keyFromPath(rel)
			if kerr != nil || !d.Type().IsRegular() {
				// Not something this cache wrote (the VERSION check makes
				// sure the directory is ours): it would only take space.
				return os.RemoveAll(p)
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			all = append(all, found{
				e: &entry{
					key:        k.String(),
					path:       p,
					size:       fi.Size(),
					lastTouch:  fi.ModTime(),
					needVerify: c.opts.VerifyOnLoad && k.kind == kindBlob,
				},
				mtime: fi.ModTime(),
			})
			return nil
		})
		if err != nil {
			return fmt.Errorf("cache: scan %s: %w", root, err)
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if !all[i].mtime.Equal(all[j].mtime) {
			return all[i].mtime.Before(all[j].mtime)
		}
		return all[i].e.key < all[j].e.key
	})
	for _, f := range all { // oldest first, each pushed to the front
		f.e.elem = c.lru.PushFront(f.e)
		c.entries[f.e.key] = f.e
		c.bytes += f.e.size
		if f.mtime.After(c.lastStamp) {
			c.lastStamp = f.mtime
		}
	}
	return nil
}

// Close cancels fills in progress, waits for them, and releases the
// directory. Entries still open stay readable; Get and Fill return
// ErrClosed. Close waits for fill functions to return, so they must honour
// their context.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, f := range c.flights {
		f.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
	if !c.opts.NoSync {
		if err := c.closeClean(); err != nil {
			c.lockf.Close()
			return err
		}
	}
	// Closing the file drops the flock.
	if err := c.lockf.Close(); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// Dir returns the cache directory (absolute).
func (c *Cache) Dir() string { return c.dir }

// Get returns the entry stored under key, pinned until the Entry is closed,
// or an error wrapping ErrNotFound. Get never waits for a fill in progress;
// use Fill to share one.
func (c *Cache) Get(ctx context.Context, key string) (*Entry, error) {
	k, err := parseKey(key)
	if err != nil {
		return nil, err
	}
	key = k.String()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		e := c.entries[key]
		if e == nil {
			c.stats.Misses++
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		touch := c.pinLocked(e)
		c.stats.Hits++
		c.mu.Unlock()
		ent, err := c.open(ctx, e, touch)
		if errors.Is(err, errGone) {
			continue // dropped as corrupt or vanished: look again
		}
		return ent, err
	}
}

// errGone says a pinned entry turned out to be unusable and was dropped.
var errGone = errors.New("cache: entry gone")

// pinLocked pins e and marks it most recently used. It returns the time to
// persist as e's mtime, or zero when the last touch is recent enough.
func (c *Cache) pinLocked(e *entry) time.Time {
	e.pins++
	c.lru.MoveToFront(e.elem)
	if c.opts.TouchInterval > 0 && time.Since(e.lastTouch) < c.opts.TouchInterval {
		return time.Time{}
	}
	t := c.stampLocked()
	e.lastTouch = t
	return t
}

// stampLocked returns a strictly increasing time, so entries filled or used
// in one clock tick still get distinct mtimes and a restart keeps their
// order.
func (c *Cache) stampLocked() time.Time {
	t := time.Now()
	if !t.After(c.lastStamp) {
		t = c.lastStamp.Add(time.Nanosecond)
	}
	c.lastStamp = t
	return t
}

// open turns a pinned entry into an Entry: it persists recency, verifies
// the entry if needed, and opens a read-only descriptor. On error the pin
// is released.
func (c *Cache) open(ctx context.Context, e *entry, touch time.Time) (*Entry, error) {
	if !touch.IsZero() {
		// Best effort: losing a touch only makes the order after a restart
		// a little less exact.
		_ = os.Chtimes(e.path, touch, touch)
	}
	if e.needVerify {
		if err := c.verify(ctx, e); err != nil {
			c.unpin(e)
			return nil, err
		}
	}
	f, err := openRead(e.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// Somebody deleted it behind our back; forget it.
			c.mu.Lock()
			c.dropLocked(e)
			c.mu.Unlock()
			c.unpin(e)
			return nil, errGone
		}
		c.unpin(e)
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Entry{c: c, e: e, f: f}, nil
}

// openRead opens path read-only. It skips os.Open's poller registration
// (epoll_ctl, fcntl), which cannot help a regular file and costs more than
// the open itself on the Get hit path.
func openRead(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// verify hashes a digest-keyed entry loaded from disk, once per process.
func (c *Cache) verify(ctx context.Context, e *entry) error {
	e.verifyMu.Lock()
	defer e.verifyMu.Unlock()
	if e.verified {
		return nil
	}
	if e.bad {
		return errGone
	}
	k, _ := parseKey(e.key)
	f, err := os.Open(e.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			e.bad = true
			c.mu.Lock()
			c.dropLocked(e)
			c.mu.Unlock()
			return errGone
		}
		return fmt.Errorf("cache: verify %s: %w", e.key, err)
	}
	defer f.Close()
	v := k.dig.Verifier()
	if _, err := io.Copy(v, ctxReader{ctx, f}); err != nil {
		return fmt.Errorf("cache: verify %s: %w", e.key, err)
	}
	if !v.Verified() {
		e.bad = true
		c.mu.Lock()
		c.stats.Corrupt++
		c.dropLocked(e)
		c.mu.Unlock()
		return errGone
	}
	e.verified = true
	return nil
}

// ctxReader stops a long read when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// dropLocked removes e from the index and deletes its file. Both happen
// under c.mu, so a new fill of the same key cannot rename its file into
// place between them and lose it.
func (c *Cache) dropLocked(e *entry) {
	if e.removed {
		return
	}
	e.removed = true
	delete(c.entries, e.key)
	c.lru.Remove(e.elem)
	c.bytes -= e.size
	_ = os.Remove(e.path)
}

// unpin releases one pin, and evicts if the cache is over its limit now
// that this entry may go.
func (c *Cache) unpin(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.pins--
	if e.pins == 0 && !c.closed {
		c.evictLocked()
	}
}

// evictLocked deletes least recently used unpinned entries until the total
// is within MaxBytes. Pinned entries are skipped, never unlinked: a reader
// (or a FUSE passthrough backing file) keeps using them, and unlinking
// would stop counting bytes that still occupy the disk until the last
// descriptor closes. They are evicted later, on their last unpin, if they
// are still the least recently used.
func (c *Cache) evictLocked() {
	if c.opts.MaxBytes <= 0 {
		return
	}
	for el := c.lru.Back(); el != nil && c.bytes > c.opts.MaxBytes; {
		e := el.Value.(*entry)
		el = el.Prev()
		if e.pins > 0 {
			continue
		}
		c.dropLocked(e)
		c.stats.Evictions++
		c.stats.EvictedBytes += e.size
	}
}

// Fill returns the entry stored under key, creating it with fill if it is
// absent. Concurrent Fills of one key run fill once and share its result;
// each caller waits until the fill ends or its own ctx is done, in which
// case it gets ctx.Err(). fill runs in its own goroutine with a context
// that carries ctx's values and is cancelled once every waiting caller has
// given up, or the Cache is closed; fill must return promptly then.
//
// fill writes the content to w. For a digest key the bytes must hash to the
// key; when size >= 0 exactly size bytes must be written (writing more
// fails at once). The data goes to a temporary file, is checked and
// fsynced, and is renamed into place; on any failure nothing is stored and
// every waiting caller gets the error. After a successful fill,
// least recently used entries are evicted to honour MaxBytes.
func (c *Cache) Fill(ctx context.Context, key string, size int64, fill func(ctx context.Context, w io.Writer) error) (*Entry, error) {
	k, err := parseKey(key)
	if err != nil {
		return nil, err
	}
	key = k.String()
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if e := c.entries[key]; e != nil {
			touch := c.pinLocked(e)
			c.stats.Hits++
			c.mu.Unlock()
			ent, err := c.open(ctx, e, touch)
			if errors.Is(err, errGone) {
				continue
			}
			return ent, err
		}
		c.stats.Misses++
		f := c.flights[key]
		if f == nil {
			f = c.startLocked(ctx, k, size, fill)
		}
		f.interested++
		c.mu.Unlock()

		select {
		case <-f.done:
		case <-ctx.Done():
		}
		c.mu.Lock()
		if !f.finished {
			// Only ctx can have fired: give up our interest, and stop the
			// fill if nobody else wants it.
			f.interested--
			if f.interested == 0 {
				// Nobody wants the result: stop the fill, and let a later
				// caller start afresh instead of joining a dying flight.
				f.cancel()
				f.abandoned = true
				if c.flights[key] == f {
					delete(c.flights, key)
				}
			}
			c.mu.Unlock()
			return nil, ctx.Err()
		}
		e, ferr := f.ent, f.err
		c.mu.Unlock()
		if ferr != nil {
			return nil, ferr
		}
		// The flight pinned e for us when it finished.
		if err := ctx.Err(); err != nil {
			c.unpin(e)
			return nil, err
		}
		ent, err := c.open(ctx, e, time.Time{})
		if errors.Is(err, errGone) {
			continue
		}
		return ent, err
	}
}

// startLocked starts the fill of k in a new goroutine.
func (c *Cache) startLocked(ctx context.Context, k key, size int64, fill func(context.Context, io.Writer) error) *flight {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight{done: make(chan struct{}), cancel: cancel}
	c.flights[k.String()] = f
	c.stats.InFlight++
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer cancel()
		path, err := c.write(fctx, k, size, fill)
		c.finish(k, f, path, err)
	}()
	return f
}

// write runs fill into a temporary file and checks, stamps and syncs it.
// It returns the temporary file's path.
func (c *Cache) write(ctx context.Context, k key, size int64, fill func(context.Context, io.Writer) error) (path string, err error) {
	tf, err := os.CreateTemp(filepath.Join(c.dir, tmpDir), "fill-*")
	if err != nil {
		return "", fmt.Errorf("cache: fill %s: %w", k, err)
	}
	name := tf.Name()
	defer func() {
		if tf != nil {
			tf.Close()
		}
		if err != nil {
			os.Remove(name)
		}
	}()
	w := &fillWriter{f: tf, limit: size}
	if k.kind == kindBlob {
		w.v = k.dig.Verifier()
	}
	if err := runFill(ctx, fill, w); err != nil {
		return "", fmt.Errorf("cache: fill %s: %w", k, err)
	}
	w.mu.Lock()
	w.done = true // a fill that leaked a writer cannot change the file now
	n, werr := w.n, w.err
	w.mu.Unlock()
	if werr != nil {
		return "", fmt.Errorf("cache: fill %s: %w", k, werr)
	}
	if size >= 0 && n != size {
		return "", fmt.Errorf("%w: fill %s wrote %d bytes, want %d", ErrSizeMismatch, k, n, size)
	}
	if w.v != nil && !w.v.Verified() {
		return "", fmt.Errorf("%w: fill %s: content does not hash to the key", ErrDigestMismatch, k)
	}
	if err := tf.Close(); err != nil {
		tf = nil
		return "", fmt.Errorf("cache: fill %s: %w", k, err)
	}
	tf = nil
	return name, nil
}

// runFill calls fill, turning a panic into an error: fill runs on a
// goroutine of ours, and one bad read must not bring down every mount on
// the node.
func runFill(ctx context.Context, fill func(context.Context, io.Writer) error, w io.Writer) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fill panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return fill(ctx, w)
}

// finish publishes the result of a fill: on success it renames the file
// into place, indexes it pinned once per waiting caller, and evicts.
func (c *Cache) finish(k key, f *flight, tmp string, err error) {
	c.mu.Lock()
	defer func() {
		f.finished = true
		if c.flights[k.String()] == f {
			delete(c.flights, k.String())
		}
		c.stats.InFlight--
		c.mu.Unlock()
		close(f.done)
	}()
	switch {
	case c.closed:
		err = ErrClosed
	case err == nil && f.abandoned:
		// A newer flight may be filling the same key; it owns the path.
		err = context.Canceled
	}
	var e *entry
	if err == nil {
		e, err = c.commitLocked(k, tmp)
	}
	if err != nil {
		if tmp != "" {
			os.Remove(tmp)
		}
		c.stats.FillErrors++
		f.err = err
		return
	}
	c.stats.Fills++
	e.pins = f.interested
	f.ent = e
	c.evictLocked()
}

// commitLocked renames tmp into place and indexes it. It runs under c.mu
// so it is ordered with dropLocked's unlink of the same path.
func (c *Cache) commitLocked(k key, tmp string) (*entry, error) {
	fi, err := os.Stat(tmp)
	if err != nil {
		return nil, fmt.Errorf("cache: fill %s: %w", k, err)
	}
	t := c.stampLocked()
	// The mtime is the persisted recency; set it explicitly because file
	// systems stamp with a coarse clock.
	if err := os.Chtimes(tmp, t, t); err != nil {
		return nil, fmt.Errorf("cache: fill %s: %w", k, err)
	}
	dst := filepath.Join(c.dir, k.relPath())
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return nil, fmt.Errorf("cache: fill %s: %w", k, err)
	}
	// Nothing is synced here: Sync makes entries durable in bulk, and an
	// Open after a crash distrusts entries stored since (see recover).
	if err := os.Rename(tmp, dst); err != nil {
		return nil, fmt.Errorf("cache: fill %s: %w", k, err)
	}
	e := &entry{key: k.String(), path: dst, size: fi.Size(), lastTouch: t}
	e.elem = c.lru.PushFront(e)
	c.entries[e.key] = e
	c.bytes += e.size
	return e, nil
}

// Crash bookkeeping files (see Options.NoSync).
const (
	// dirtyFile exists while a process owns the cache, from Open to Close.
	dirtyFile = "dirty"
	// syncedFile holds a stamp: every entry stamped (mtime) no later was
	// durable when it was written.
	syncedFile = "synced"
)

// recover deals with an unclean end of the previous owner: entries newer
// than the last sync may hold anything, so spans among them (which the
// cache cannot check) are dropped and digest entries re-hashed on first
// use. It then marks the directory dirty for this process.
func (c *Cache) recover() error {
	if _, err := os.Stat(filepath.Join(c.dir, dirtyFile)); err == nil {
		var synced time.Time
		if b, err := os.ReadFile(filepath.Join(c.dir, syncedFile)); err == nil {
			synced, _ = time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
		}
		c.mu.Lock()
		for _, e := range c.entries {
			if !e.lastTouch.After(synced) {
				continue
			}
			k, _ := parseKey(e.key)
			if k.kind != kindBlob { // spans and indexes: the cache cannot check them

				c.stats.Unsynced++
				c.dropLocked(e)
			} else {
				e.needVerify = true
			}
		}
		c.mu.Unlock()
	}
	if err := writeSynced(filepath.Join(c.dir, dirtyFile), nil); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return syncDir(c.dir)
}

// Sync makes every entry stored so far durable with one sync of the cache's
// filesystem, so an unclean end later loses only entries stored after it.
// Close calls it; a long-running owner may call it now and then.
func (c *Cache) Sync() error {
	if c.opts.NoSync {
		return nil
	}
	c.mu.Lock()
	stamp := c.stampLocked()
	c.mu.Unlock()
	fd, err := unix.Open(c.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("cache: sync: %w", err)
	}
	err = unix.Syncfs(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("cache: sync: %w", err)
	}
	if err := writeSynced(filepath.Join(c.dir, syncedFile), []byte(stamp.Format(time.RFC3339Nano)+"\n")); err != nil {
		return fmt.Errorf("cache: sync: %w", err)
	}
	return nil
}

// closeClean syncs and removes the dirty marker: the next Open trusts
// every entry.
func (c *Cache) closeClean() error {
	if err := c.Sync(); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(c.dir, dirtyFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache: %w", err)
	}
	if err := syncDir(c.dir); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return nil
}

// writeSynced writes b to path through a synced temporary file and a
// rename, so path holds either the old or the new content.
func writeSynced(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// fillWriter is the io.Writer a fill function gets. It hashes as it goes
// and fails a write that would exceed the announced size, so a runaway
// fill cannot fill the disk.
type fillWriter struct {
	mu    sync.Mutex
	f     *os.File
	v     digest.Verifier
	limit int64
	n     int64
	err   error
	done  bool
}

func (w *fillWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, errors.New("cache: write after fill returned")
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.limit >= 0 && w.n+int64(len(p)) > w.limit {
		w.err = fmt.Errorf("%w: fill wrote more than %d bytes", ErrSizeMismatch, w.limit)
		return 0, w.err
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	if w.v != nil {
		w.v.Write(p[:n])
	}
	if err != nil {
		w.err = err
	}
	return n, err
}
