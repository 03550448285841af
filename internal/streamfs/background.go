package streamfs

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/layerstore"
)

// LayerStore is where whole layers are extracted: *layerstore.Store, the
// store the full pull uses. streamfs names the three methods it needs.
type LayerStore interface {
	// Path is the directory the layer's tree is (being) extracted into;
	// stable during and after extraction.
	Path(diffID digest.Digest) string
	// Has reports whether the layer is extracted completely and verified.
	Has(diffID digest.Digest) bool
	// Extract writes the layer's uncompressed tar stream r into the store,
	// verifying it against diffID, and calls onFile for each regular file
	// after it is written and closed, in stream order. When another
	// extraction of the layer is running it waits for that one instead.
	Extract(ctx context.Context, diffID digest.Digest, r io.Reader, onFile func(layerstore.File)) error
}

var _ LayerStore = (*layerstore.Store)(nil)

// LayerStreamer is a Layer that can also be read whole, in order, with one
// request: the background stream uses it. Layers without it (eStargz,
// zstd:chunked, tests) are served from spans only.
type LayerStreamer interface {
	// OpenStream returns the layer's uncompressed stream from its start.
	// wire wraps the compressed body before decompression: the background
	// stream counts and pauses there, where TCP flow control can act. The
	// stream is not verified by OpenStream; the store checks the diffID.
	OpenStream(ctx context.Context, wire func(io.Reader) io.Reader) (io.ReadCloser, error)
}

// Defaults of the background stream.
const (
	// DefaultBackgroundLayers is how many layers stream at once; each costs
	// one connection and one decompressor.
	DefaultBackgroundLayers = 3
	// DefaultStreamWait is how far ahead of a layer's stream a file may
	// start for a read to wait for the stream rather than fetch spans: a
	// few MB, what the stream passes in about the time of one span fetch.
	DefaultStreamWait = 8 << 20
	// maxStreamWait bounds one wait for the stream.
	maxStreamWait = 3 * time.Second
	// maxPause bounds one pause of a stream for blocked reads, so its
	// connection never stalls long enough to time out.
	maxPause = 500 * time.Millisecond
	// pauseStep is how often a paused stream looks whether it may go on.
	pauseStep = 2 * time.Millisecond
	// streamWindow is the receive buffer of a layer stream's connection.
	// A paused stream stops taking the link once this much has arrived
	// unread, so a blocked read waits behind at most this per stream
	// (about 20 ms at 400 Mbit/s for three streams), where the kernel's
	// autotuned buffer would let several MB through. One stream still
	// reaches about 1 MiB per round trip: 50 MB/s at 20 ms.
	streamWindow = 1 << 20
)

// Layer states of the background stream, as Stats reports them.
const (
	LayerPending   = "pending"   // waiting for a stream slot
	LayerStreaming = "streaming" // being fetched and extracted
	LayerComplete  = "complete"  // complete in the store: every file local
	LayerFailed    = "failed"    // the stream failed; files stay on demand
	LayerOff       = "off"       // no background stream for this layer
)

// bgLayer is the background stream's state for one layer.
type bgLayer struct {
	idx    int
	diffID digest.Digest
	files  []*node // regular non-empty files of the tree from this layer, by offset
	// followers are later layers with the same diffID: one stream serves
	// them all (an image may hold one layer twice).
	followers []*bgLayer
	leader    bool
	lead      *bgLayer // the layer whose stream serves this one (itself for a leader)
	// waiters counts reads waiting for this layer's stream (on the
	// leader): its chunks then neither pause nor take turns.
	waiters atomic.Int64
	// planned is the uncompressed offset (on the leader) up to which the
	// stream has planned its fetches: a read ahead of it is fetched by
	// range, not waited for (see waitLocal).
	planned atomic.Int64

	state atomic.Pointer[string]
	// pos is how many uncompressed bytes the store has consumed.
	pos  atomic.Int64
	wire atomic.Int64 // compressed bytes read

	mu      sync.Mutex
	advance chan struct{} // closed and replaced whenever a file is stored or the state changes
	dirfd   int           // O_PATH descriptor of the layer's tree once complete, else -1
}

func (b *bgLayer) setState(s string) {
	b.state.Store(&s)
	b.notify()
}

// setStates sets the state of b and its followers.
func (b *bgLayer) setStates(s string) {
	b.setState(s)
	for _, f := range b.followers {
		f.setState(s)
	}
}

func (b *bgLayer) getState() string { return *b.state.Load() }

func (b *bgLayer) notify() {
	b.mu.Lock()
	close(b.advance)
	b.advance = make(chan struct{})
	b.mu.Unlock()
}

func (b *bgLayer) waitCh() chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.advance
}

// background is a mount's set of layer streams.
type background struct {
	store    LayerStore
	layers   []*bgLayer
	complete chan struct{} // closed when every layer is complete
	left     atomic.Int32  // layers not complete yet
	// waiters counts reads waiting for a stream: streams do not pause
	// while someone waits on them.
	waiters atomic.Int64
	// waited is closed (and replaced) when a read starts waiting for a
	// stream, or the task starts walking the image, waking chunk fetches
	// that wait for their turn: they may now go.
	waitedMu sync.Mutex
	waited   chan struct{}
}

// waitedCh is closed at the next wake.
func (b *background) waitedCh() <-chan struct{} {
	b.waitedMu.Lock()
	defer b.waitedMu.Unlock()
	return b.waited
}

// wake wakes the chunk fetches waiting for their turn, to look again.
func (b *background) wake() {
	b.waitedMu.Lock()
	close(b.waited)
	b.waited = make(chan struct{})
	b.waitedMu.Unlock()
}

// addWaiter counts a read waiting for layer l's stream and wakes the
// chunk fetches waiting for their turn; the returned func uncounts it.
func (b *background) addWaiter(l *bgLayer) (done func()) {
	b.waiters.Add(1)
	l.lead.waiters.Add(1)
	b.wake()
	return func() {
		l.lead.waiters.Add(-1)
		b.waiters.Add(-1)
	}
}

// setupBackground plans the streams. Layers already complete in the store
// are not fetched at all: their files are local from the start.
func (m *MountPoint) setupBackground() error {
	if len(m.img.DiffIDs) != len(m.img.Layers) {
		return fmt.Errorf("streamfs: Options.Layers needs Image.DiffIDs for every layer (%d for %d layers)", len(m.img.DiffIDs), len(m.img.Layers))
	}
	b := &background{store: m.opts.Layers, complete: make(chan struct{}), waited: make(chan struct{})}
	b.layers = make([]*bgLayer, len(m.img.Layers))
	for i := range b.layers {
		b.layers[i] = &bgLayer{idx: i, diffID: m.img.DiffIDs[i], advance: make(chan struct{}), dirfd: -1}
		b.layers[i].setState(LayerPending)
	}
	for _, n := range m.nodes {
		if n.typ == unix.S_IFREG && n.size > 0 {
			b.layers[n.layer].files = append(b.layers[n.layer].files, n)
		}
	}
	var total int64
	for _, l := range b.layers {
		sort.Slice(l.files, func(i, j int) bool { return l.files[i].off < l.files[j].off })
	}
	for _, sp := range m.spans {
		if len(sp) > 0 {
			total += sp[len(sp)-1].Offset + sp[len(sp)-1].Size
		}
	}
	tooBig := m.opts.MaxBackgroundBytes > 0 && total > m.opts.MaxBackgroundBytes
	first := map[digest.Digest]*bgLayer{}
	for i, l := range b.layers {
		_, streamable := m.img.Layers[i].(LayerStreamer)
		if f := first[l.diffID]; f != nil {
			l.lead = f
			f.followers = append(f.followers, l)
			if f.getState() == LayerComplete {
				m.layerComplete(l, b.store)
			} else {
				l.setState(f.getState())
			}
			if l.getState() != LayerComplete {
				b.left.Add(1)
			}
			continue
		}
		first[l.diffID] = l
		l.leader, l.lead = true, l
		switch {
		case b.store.Has(l.diffID):
			m.layerComplete(l, b.store)
			continue
		case m.opts.NoBackground || tooBig || !streamable:
			l.setState(LayerOff)
		}
		b.left.Add(1)
	}
	if b.left.Load() == 0 {
		close(b.complete)
	}
	m.background = b
	return nil
}

// startBackground starts the planned streams, biggest layers first (they
// decide when the image is local), BackgroundLayers at a time.
func (m *MountPoint) startBackground() {
	b := m.background
	var todo []*bgLayer
	for _, l := range b.layers {
		if l.leader && l.getState() == LayerPending {
			todo = append(todo, l)
		}
	}
	sort.SliceStable(todo, func(i, j int) bool { return m.layerSize(todo[i].idx) > m.layerSize(todo[j].idx) })
	par := m.opts.BackgroundLayers
	if par <= 0 {
		par = DefaultBackgroundLayers
	}
	sem := make(chan struct{}, par)
	for _, l := range todo {
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			select {
			case sem <- struct{}{}:
			case <-m.ctx.Done():
				l.setStates(LayerFailed)
				return
			}
			defer func() { <-sem }()
			t := lowerThreadPriority()
			l.setStates(LayerStreaming)
			if err := m.streamLayer(m.ctx, l, t); err != nil {
				l.setStates(LayerFailed)
				m.metrics.bgErrors.Inc()
				if m.ctx.Err() == nil {
					m.log.Warn("streamfs: background stream of layer failed; its files stay on demand", "layer", m.img.Layers[l.idx].Digest(), "err", err)
				}
				return
			}
			for _, x := range append([]*bgLayer{l}, l.followers...) {
				m.layerComplete(x, b.store)
				if x.getState() == LayerComplete && b.left.Add(-1) == 0 {
					close(b.complete)
				}
			}
		}()
	}
}

// backgroundNice is the CPU nice value of a layer stream's threads. The
// stream's decompression and extraction are a core's worth of work on a
// node of two; at nice 10 the scheduler gives them about a tenth of a CPU
// while the task and the FUSE daemon want it, and all of it when idle.
// While a reader waits for a stream (waitLocal), the stream is what the
// task waits on, and its threads run at nice 0: at nice 10 a task reading
// every file of the bench image took 31 s instead of 23 s.
const backgroundNice = 10

// bgThread is the OS thread of a background goroutine, whose nice value
// follows the mount's needs (see backgroundNice).
type bgThread struct {
	nice int // current nice value; -1 before the first set
}

// lowerThreadPriority locks the calling goroutine, for the rest of its
// life, to an OS thread of its own at backgroundNice. The thread is never
// unlocked: it exits with the goroutine, so no other goroutine ever runs
// at its priority. Best effort: without it the stream only runs faster.
func lowerThreadPriority() *bgThread {
	runtime.LockOSThread()
	t := &bgThread{nice: -1}
	t.set(backgroundNice)
	return t
}

// set gives the thread nice value n, if it has another. Raising the
// priority back needs CAP_SYS_NICE; without it the thread stays lower.
func (t *bgThread) set(n int) {
	if t == nil || t.nice == n {
		return
	}
	if unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), n) == nil {
		t.nice = n
	}
}

// follow sets the nice value the mount's background threads should have
// now: 0 while a reader waits for a layer stream, else backgroundNice.
func (t *bgThread) follow(m *MountPoint) {
	if m.background != nil && m.background.waiters.Load() > 0 {
		t.set(0)
	} else {
		t.set(backgroundNice)
	}
}

func (m *MountPoint) layerSize(i int) int64 {
	sp := m.spans[i]
	if len(sp) == 0 {
		return 0
	}
	return sp[len(sp)-1].Offset + sp[len(sp)-1].Size
}

// streamLayer fetches layer l with one request and extracts it into the
// store; each file the store reports, checked against the tree, becomes
// local at once.
func (m *MountPoint) streamLayer(ctx context.Context, l *bgLayer, t *bgThread) error {
	rc, err := m.openLayerStream(ctx, l) // background_warm.go
	if err != nil {
		return err
	}
	defer rc.Close()
	var src io.Reader = &posReader{r: rc, l: l, m: m, t: t}
	switch rc.(type) {
	case *chunkedLayer, *cachedLayer:
		// Every span is checked against its digest as it is read: the
		// files need no digest of their own (fileStoredIn).
		src = layerstore.Verified(src)
	}
	// The store checks the stream against the diffID; if another process
	// extracts the layer meanwhile, the store waits for that one and the
	// rest of this stream is not read.
	if err := m.background.store.Extract(ctx, l.diffID, src, func(f layerstore.File) { m.fileStored(l, f) }); err != nil {
		return fmt.Errorf("streamfs: layer %s: %w", m.img.Layers[l.idx].Digest(), err)
	}
	return nil
}

// fileStored makes the tree's node for f local if f is exactly its content,
// in layer l and the layers that follow its stream.
func (m *MountPoint) fileStored(l *bgLayer, f layerstore.File) {
	m.fileStoredIn(l, f)
	for _, x := range l.followers {
		m.fileStoredIn(x, f)
	}
}

func (m *MountPoint) fileStoredIn(l *bgLayer, f layerstore.File) {
	i := sort.Search(len(l.files), func(i int) bool { return l.files[i].off >= f.Offset })
	if i < len(l.files) && l.files[i].off == f.Offset {
		n := l.files[i]
		// A file of a verified stream (streamLayer) has no digest: its
		// spans matched theirs.
		if n.size == f.Size && (f.Digest == "" || n.digest == f.Digest) {
			p := f.Path
			n.local.Store(&p)
			m.metrics.bgFiles.Inc()
		}
	}
	l.notify()
}

// layerComplete records that layer l is complete in the store: every file
// of it can be opened there.
func (m *MountPoint) layerComplete(l *bgLayer, store LayerStore) {
	fd, err := unix.Open(store.Path(l.diffID), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.log.Warn("streamfs: open extracted layer", "layer", l.diffID, "err", err)
		l.setState(LayerFailed)
		return
	}
	l.mu.Lock()
	l.dirfd = fd
	l.mu.Unlock()
	l.setState(LayerComplete)
}

// closeBackground releases the layers' directory descriptors.
func (m *MountPoint) closeBackground() {
	if m.background == nil {
		return
	}
	for _, l := range m.background.layers {
		l.mu.Lock()
		if l.dirfd >= 0 {
			unix.Close(l.dirfd)
			l.dirfd = -1
		}
		l.mu.Unlock()
	}
}

// openLocal opens file n from the layer store, or returns nil when it is
// not there (yet). The file is checked to be a regular file of n's size.
func (m *MountPoint) openLocal(n *node) *os.File {
	b := m.background
	if b == nil || n.size == 0 {
		return nil
	}
	var fd int
	var err error
	if p := n.local.Load(); p != nil {
		fd, err = unix.Open(*p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	} else {
		l := b.layers[n.layer]
		l.mu.Lock()
		dirfd := l.dirfd
		if dirfd < 0 {
			l.mu.Unlock()
			return nil
		}
		// The name was cleaned when the tree was built; openat2 still
		// keeps the open inside the layer's tree whatever is there.
		fd, err = unix.Openat2(dirfd, n.name, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		l.mu.Unlock()
	}
	if err != nil {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != n.size {
		unix.Close(fd)
		return nil
	}
	return os.NewFile(uintptr(fd), n.name)
}

// waitLocal waits, briefly, for the background stream to store file n,
// when its layer's stream is about to reach it. It reports whether n may
// now be local.
func (m *MountPoint) waitLocal(ctx context.Context, n *node) bool {
	b := m.background
	if b == nil || n.size == 0 {
		return false
	}
	l := b.layers[n.layer]
	// Only data the stream has planned to fetch is worth waiting for:
	// a range fetch of a span past that is quicker than the stream's
	// chunks up to it, and the stream then skips the span.
	if !m.streamNear(l, n.off) || n.off >= l.lead.planned.Load() {
		return false
	}
	defer b.addWaiter(l)()
	m.metrics.streamWaits.Inc()
	t := time.NewTimer(maxStreamWait)
	defer t.Stop()
	for {
		ch := l.waitCh()
		if n.local.Load() != nil || l.getState() == LayerComplete {
			return true
		}
		// Passed without becoming local: its data did not match.
		if l.getState() != LayerStreaming || l.pos.Load() > n.off+n.size+m.streamWait() {
			return false
		}
		select {
		case <-ch:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

func (m *MountPoint) streamWait() int64 {
	if m.opts.StreamWait > 0 {
		return m.opts.StreamWait
	}
	return DefaultStreamWait
}

// streamNear reports whether layer l's stream is running and will reach
// uncompressed offset off within Options.StreamWait.
func (m *MountPoint) streamNear(l *bgLayer, off int64) bool {
	if l.getState() != LayerStreaming {
		return false
	}
	pos := l.pos.Load()
	return off+m.streamWait() >= pos && off-pos <= m.streamWait()
}

// streamCovers reports whether the background will provide layer l's
// range at off without a span fetch: the layer is complete, or its
// stream is about to pass there.
func (m *MountPoint) streamCovers(layer int, off int64) bool {
	if m.background == nil {
		return false
	}
	l := m.background.layers[layer]
	if l.getState() == LayerComplete {
		return true
	}
	return m.streamNear(l, off) && off >= l.pos.Load()
}

// posReader counts the uncompressed bytes the store has consumed.
type posReader struct {
	r io.Reader
	l *bgLayer
	m *MountPoint
	t *bgThread // the extracting thread
}

func (p *posReader) Read(b []byte) (int, error) {
	p.t.follow(p.m)
	n, err := p.r.Read(b)
	p.l.pos.Add(int64(n))
	for _, f := range p.l.followers {
		f.pos.Add(int64(n))
	}
	p.m.metrics.bgBytes.Add(float64(n))
	return n, err
}

// gatedReader reads a layer's compressed body, yielding the link to
// blocked reads: while any span fetch a reader waits for is in flight (and
// nobody waits for a stream), it stops reading for up to maxPause, so the
// TCP window closes and the registry's bytes go to those reads.
type gatedReader struct {
	r   io.Reader
	m   *MountPoint
	l   *bgLayer
	ctx context.Context
}

// gateChunk bounds one read of the body, so the gate is checked often.
const gateChunk = 256 << 10

func (g *gatedReader) Read(p []byte) (int, error) {
	if len(p) > gateChunk {
		p = p[:gateChunk]
	}
	if err := g.m.pauseForReads(g.ctx, g.l); err != nil {
		return 0, err
	}
	n, err := g.r.Read(p)
	g.l.wire.Add(int64(n))
	g.m.metrics.bgWire.Add(float64(n))
	return n, err
}

// pauseForReads waits while urgent fetches are in flight, at most
// maxPause, unless a read waits for the stream of layer l.
func (m *MountPoint) pauseForReads(ctx context.Context, l *bgLayer) error {
	if m.urgent.Load() == 0 || l.waiters.Load() > 0 || m.walking() {
		return nil
	}
	m.metrics.pauses.Inc()
	deadline := time.Now().Add(maxPause)
	for m.urgent.Load() > 0 && l.waiters.Load() == 0 && !m.walking() && time.Now().Before(deadline) {
		t := time.NewTimer(pauseStep)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Complete returns a channel closed once every layer of the image is
// complete in the layer store (Options.Layers), so that every file is read
// from there. It is never closed without a layer store, with the
// background stream off, or after a layer's stream failed.
func (m *MountPoint) Complete() <-chan struct{} {
	if m.background == nil {
		return nil
	}
	return m.background.complete
}

// LayerProgress is one layer's background stream, as Stats reports it.
type LayerProgress struct {
	// Digest is the layer blob's digest, DiffID its uncompressed digest.
	Digest, DiffID digest.Digest
	// State is LayerPending, LayerStreaming, LayerComplete, LayerFailed or
	// LayerOff.
	State string
	// Bytes is how much of the uncompressed stream (of Size) has been
	// extracted; WireBytes the compressed bytes this mount streamed.
	Bytes, Size, WireBytes int64
}

func (m *MountPoint) layerProgress() []LayerProgress {
	if m.background == nil {
		return nil
	}
	out := make([]LayerProgress, len(m.background.layers))
	for i, l := range m.background.layers {
		out[i] = LayerProgress{
			Digest: m.img.Layers[i].Digest(), DiffID: l.diffID, State: l.getState(),
			Bytes: l.pos.Load(), Size: m.layerSize(i), WireBytes: l.wire.Load(),
		}
		if out[i].State == LayerComplete {
			out[i].Bytes = out[i].Size
		}
	}
	return out
}
