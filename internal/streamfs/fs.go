package streamfs

import (
	"cmp"
	"context"
	"errors"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/cache"
)

// fsNode is the FUSE side of one inode of the merged tree. Hard links are
// one fsNode (one *fs.Inode) added under several names.
type fsNode struct {
	fs.Inode
	n *node
	m *MountPoint

	// Open state of a regular file, which decides passthrough: the kernel
	// refuses to mix passthrough and cached opens of one inode, so a file
	// is opened by passthrough only while no cached open is live, and
	// cached only while no passthrough open is live.
	mu     sync.Mutex
	back   backing // the whole file while pt > 0
	pt     int
	cached int
}

var (
	_ = (fs.NodeLookuper)((*fsNode)(nil))
	_ = (fs.NodeReaddirer)((*fsNode)(nil))
	_ = (fs.NodeGetattrer)((*fsNode)(nil))
	_ = (fs.NodeReadlinker)((*fsNode)(nil))
	_ = (fs.NodeGetxattrer)((*fsNode)(nil))
	_ = (fs.NodeListxattrer)((*fsNode)(nil))
	_ = (fs.NodeOpener)((*fsNode)(nil))
	_ = (fs.NodeStatfser)((*fsNode)(nil))
	_ = (fs.NodeAccesser)((*fsNode)(nil))
)

// Lookup gives the kernel the child called name, its inode made on first
// use: building all of them at mount took a cold start 80 ms of CPU for
// the bench image's 34k entries. go-fuse keeps an inode while the kernel
// holds it and finds it again by inode number, so a hard link's names
// share one fsNode. The tree is immutable and in memory: a lookup never
// blocks.
func (f *fsNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch := f.n.children[name]
	if ch == nil {
		return nil, syscall.ENOENT
	}
	ch.fill(&out.Attr)
	return f.NewInode(ctx, &fsNode{n: ch, m: f.m}, fs.StableAttr{Mode: ch.typ, Ino: ch.ino}), 0
}

// Readdir lists a directory's entries in the order their data lies in the
// layer streams (MountPoint.order): a task walking the tree (find, cp -r,
// a scan) then reads the layers in order, just behind the streams and
// their read-ahead, instead of jumping about.
func (f *fsNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	kids := make([]dirent, 0, len(f.n.children))
	for name, ch := range f.n.children {
		kids = append(kids, dirent{dir: ch, name: name})
	}
	keys := f.m.order
	slices.SortFunc(kids, func(a, b dirent) int {
		if c := cmp.Compare(keys[a.dir.ino-1], keys[b.dir.ino-1]); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	ents := make([]fuse.DirEntry, len(kids))
	for i, k := range kids {
		ents[i] = fuse.DirEntry{Mode: k.dir.typ, Name: k.name, Ino: k.dir.ino}
	}
	return fs.NewListDirStream(ents), 0
}

// streamOrder returns, by inode number - 1, where each node's data lies in
// the layers' streams (layer, then offset): a regular file's own data, a
// directory's first file's. Nodes without data sort last.
func streamOrder(nodes []*node) []uint64 {
	keys := make([]uint64, len(nodes))
	done := make([]bool, len(nodes))
	var key func(n *node) uint64
	key = func(n *node) uint64 {
		i := n.ino - 1
		if done[i] {
			return keys[i]
		}
		k := uint64(math.MaxUint64)
		switch n.typ {
		case unix.S_IFREG:
			if n.size > 0 {
				k = uint64(n.layer)<<48 | uint64(n.off)
			}
		case unix.S_IFDIR:
			for _, ch := range n.children {
				k = min(k, key(ch))
			}
		}
		keys[i], done[i] = k, true
		return k
	}
	for _, n := range nodes {
		key(n)
	}
	return keys
}

func (n *node) fill(a *fuse.Attr) {
	a.Ino = n.ino
	a.Mode = n.typ | n.perm
	a.Nlink = n.nlink
	a.Owner = fuse.Owner{Uid: n.uid, Gid: n.gid}
	a.Size = uint64(n.size)
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 4096
	a.Rdev = n.rdev
	t := n.mtime
	a.SetTimes(&t, &t, &t)
}

func (f *fsNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.n.fill(&out.Attr)
	return 0
}

func (f *fsNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if f.n.typ != unix.S_IFLNK {
		return nil, syscall.EINVAL
	}
	return []byte(f.n.link), 0
}

// Getxattr gives an entry's extended attribute. In an image with none,
// it answers ENOSYS: the kernel then stops asking for the mount's
// lifetime and fails getxattr(2) with EOPNOTSUPP itself. Overlayfs asks
// for its own attributes at every lookup in a lower layer and exec asks
// for security.capability: a cold python import sent 1,651 GETXATTRs,
// each a round trip to this process.
func (f *fsNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if f.m.noXattrs {
		return 0, syscall.ENOSYS
	}
	v, ok := f.n.xattrs[attr]
	if !ok {
		return 0, fs.ENOATTR
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (f *fsNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var size int
	for k := range f.n.xattrs {
		size += len(k) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	var b []byte
	for _, k := range sortedKeys(f.n.xattrs) {
		b = append(append(b, k...), 0)
	}
	return uint32(copy(dest, b)), 0
}

// Access answers for W_OK with EROFS; the kernel checks the rest with
// default_permissions.
func (f *fsNode) Access(ctx context.Context, mask uint32) syscall.Errno {
	if mask&unix.W_OK != 0 {
		return syscall.EROFS
	}
	return 0
}

func (f *fsNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = uint64((f.m.totalBytes + bsize - 1) / bsize)
	out.Files = uint64(len(f.m.nodes))
	out.NameLen = 255
	return 0
}

func (f *fsNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND|syscall.O_CREAT) != 0 {
		return nil, 0, syscall.EROFS
	}
	if f.n.typ != unix.S_IFREG {
		return nil, 0, syscall.EINVAL
	}
	f.m.active()
	f.m.opened()
	// The mount is read-only: flush has nothing to do, so the kernel need
	// not send one at every close.
	const cachedFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH
	h := &handle{f: f}
	if f.n.size == 0 {
		return h, cachedFlags, 0
	}
	if f.m.opts.NoPassthrough {
		f.m.fetchOpenTail(f.n)
		return h, cachedFlags, 0
	}
	// Find the whole file outside f.mu: finding it may wait for the
	// background stream to reach it.
	f.mu.Lock()
	want := f.back == nil && f.cached == 0
	f.mu.Unlock()
	var found backing
	if want {
		found = f.m.wholeFile(ctx, f.n)
	}
	f.mu.Lock()
	if found != nil {
		if f.back == nil && f.cached == 0 {
			f.back = found
		} else {
			found.Close()
		}
	}
	if f.back != nil && f.cached == 0 {
		f.pt++
		f.m.metrics.passthrough.Inc()
		// Its reads will not reach this process: record its start.
		f.m.profile.recordRead(f.n, 0, 1)
		h.back = f.back
		f.mu.Unlock()
		return h, fuse.FOPEN_NOFLUSH, 0
	}
	f.cached++
	f.mu.Unlock()
	// Served from its spans: a loader will want its end soon (a file
	// served whole needs nothing fetched).
	f.m.fetchOpenTail(f.n)
	return h, cachedFlags, 0
}

// backing is a whole file passthrough reads from: a file extracted into
// the layer store, or a whole-file cache entry (*cache.Entry).
type backing interface {
	File() *os.File
	Close() error
}

// localFile is a file of the layer store, opened for passthrough.
type localFile struct{ f *os.File }

func (l localFile) File() *os.File { return l.f }
func (l localFile) Close() error   { return l.f.Close() }

// wholeFile returns file n whole: from the layer store (waiting a little
// when its layer's stream is about to reach it), else from the cache.
func (m *MountPoint) wholeFile(ctx context.Context, n *node) backing {
	if lf := m.openLocal(n); lf != nil {
		m.localOpened()
		return localFile{lf}
	}
	if m.waitStream(ctx, n) {
		if lf := m.openLocal(n); lf != nil {
			m.localOpened()
			return localFile{lf}
		}
	}
	if e, err := m.cache.Get(ctx, n.digest.String()); err == nil {
		m.metrics.hits.Inc()
		return e
	}
	return nil
}

// waitStream waits, briefly, for the background stream to store file n
// when its layer's stream is about to reach it and the file's spans are
// not all in the cache; it reports whether n may now be local. A file
// whose spans are cached is read from them at once: on a warm node that
// has not settled, waiting for the stream would only delay it.
func (m *MountPoint) waitStream(ctx context.Context, n *node) bool {
	b := m.background
	if b == nil || n.size == 0 || !m.streamNear(b.layers[n.layer], n.off) || m.spansComing(n) {
		return false
	}
	return m.waitLocal(ctx, n)
}

// spansComing reports whether every span holding file n's data is in the
// cache or about to be: brought by the prefetch pack being read for n's
// layer, held by it while it is stored, or queued for a range fetch of
// the profile or hints. Such a file is read from there: waiting for the
// layer's stream instead would start the stream beside the pack, which has
// the link first (a python import's first open, of a file across two
// spans of which the pack had delivered one, did, and 4-6 MB of layer
// stream shared a 100 Mbit/s link with the pack), or wait for the stream
// to reach a program whose hinted spans are on their way.
func (m *MountPoint) spansComing(n *node) bool {
	ps := m.packs[n.layer].Load()
	spans, d := m.spans[n.layer], m.img.Layers[n.layer].Digest()
	for i := spanAt(spans, n.off); i < len(spans) && spans[i].Offset < n.off+n.size; i++ {
		if !m.cache.Has(cache.SpanKey(d, i)) && (ps == nil || !ps.brings(i)) && !m.isQueued(n.layer, i) {
			return false
		}
	}
	return true
}

// handle is an open regular file.
type handle struct {
	f    *fsNode
	back backing // set for a passthrough open

	mu       sync.Mutex
	read     intervals // byte ranges read through this handle
	promoted bool
	local    *os.File // the file in the layer store, once it is there
}

// intervals is a sorted list of disjoint [start, end) ranges. Kernel
// readahead delivers a sequential read slightly out of order, so coverage
// is tracked as ranges rather than a single high-water mark.
type intervals [][2]int64

func (iv *intervals) add(lo, hi int64) {
	out := (*iv)[:0:0]
	for _, r := range *iv {
		switch {
		case r[1] < lo || r[0] > hi: // disjoint, not touching
			out = append(out, r)
		default:
			lo, hi = min(lo, r[0]), max(hi, r[1])
		}
	}
	out = append(out, [2]int64{lo, hi})
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	*iv = out
}

// streak returns how many bytes right before off have been read.
func (iv intervals) streak(off int64) int64 {
	for _, r := range iv {
		if r[0] <= off && off <= r[1] {
			return off - r[0]
		}
	}
	return 0
}

// covers reports whether [0, size) has been read.
func (iv intervals) covers(size int64) bool {
	return len(iv) == 1 && iv[0][0] == 0 && iv[0][1] >= size
}

var (
	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
	_ = (fs.FilePassthroughFder)((*handle)(nil))
)

// PassthroughFd hands the kernel the cached whole file, so reads of a warm
// file never reach this process.
func (h *handle) PassthroughFd() (int, bool) {
	if h.back == nil {
		return 0, false
	}
	return int(h.back.File().Fd()), true
}

// preadResult reads f at off into dest, as a reply. Not fuse.ReadResultFd:
// go-fuse splices that with one splice(2) call and takes a short count as
// the end of the file (see readResult).
func preadResult(f *os.File, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, syscall.EIO
	}
	return fuse.ReadResultVector([][]byte{dest[:n]}), 0
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.back != nil {
		// Passthrough was refused by the kernel; serve the whole file.
		h.f.m.fallbackReads.Add(1)
		return preadResult(h.back.File(), dest, off)
	}
	m, n := h.f.m, h.f.n
	if lf := h.localFile(ctx); lf != nil {
		m.metrics.localReads.Inc()
		m.profile.recordRead(n, off, int64(len(dest)))
		return preadResult(lf, dest, off)
	}
	m.active()
	h.mu.Lock()
	streak := h.read.streak(off)
	h.mu.Unlock()
	res, got, err := m.readResult(ctx, n, dest, off, streak)
	if err != nil {
		m.log.Warn("streamfs: read failed", "ino", n.ino, "offset", off, "err", err)
		return nil, syscall.EIO
	}
	if m.promotes(n) {
		h.notePromote(off, got)
	}
	return res, 0
}

// localFile returns the file from the layer store when the background
// stream has stored it (or is about to), opened once per handle.
func (h *handle) localFile(ctx context.Context) *os.File {
	h.mu.Lock()
	lf := h.local
	h.mu.Unlock()
	if lf != nil || h.f.m.background == nil {
		return lf
	}
	lf = h.f.m.openLocal(h.f.n)
	if lf == nil && h.f.m.waitStream(ctx, h.f.n) {
		lf = h.f.m.openLocal(h.f.n)
	}
	if lf == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.local != nil {
		lf.Close()
		return h.local
	}
	h.local = lf
	return lf
}

// notePromote records that [off, off+got) was read, and promotes the file
// into the cache once all of it has been.
func (h *handle) notePromote(off int64, got int) {
	h.mu.Lock()
	promote := false
	if !h.promoted && got > 0 {
		h.read.add(off, off+int64(got))
		promote = h.read.covers(h.f.n.size)
	}
	if promote {
		h.promoted = true
	}
	h.mu.Unlock()
	if promote {
		h.f.m.promote(h.f.n)
	}
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	f := h.f
	h.mu.Lock()
	if h.local != nil {
		h.local.Close()
		h.local = nil
	}
	h.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.n.size == 0:
	case h.back != nil:
		if f.pt--; f.pt == 0 {
			f.back.Close()
			f.back = nil
		}
	default:
		f.cached--
	}
	return 0
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	return keys
}
