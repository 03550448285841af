package node

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// warmParallel is how many files a warm-up has the kernel read at once. A
// task walking an image reads one file after another, each a synchronous
// read from the disk; the warm-up keeps the disk's queue full instead,
// ahead of the task. Reading every file of the bench image's layer trees
// from a cold page cache (find | cat) took 3.5 s alone and 1.6 s beside 16
// such workers.
const warmParallel = 16

// warmChunk is the most one posix_fadvise(POSIX_FADV_WILLNEED) is asked to
// read: the kernel reads at most the device's readahead window or largest
// request per call (mm/readahead.c, force_page_cache_ra) and drops the
// rest, and the default window is 128 KiB.
const warmChunk = 128 << 10

// warmTimeout bounds one warm-up: past it the pages would come too late
// to help the task that started it.
const warmTimeout = time.Minute

// warmAgain is how long after a warm-up a start of the same image does
// not warm it again: its pages are still cached, and every warm-up costs
// a profile request per layer and parsing the layers' indexes.
const warmAgain = 30 * time.Second

// warm has the kernel read, in the background, the data of img's startup
// profile from its extracted layers into the page cache, so that a task
// started on an image in the layer store whose files are no longer cached
// (after a reboot, or memory pressure) finds what it reads first already
// read, as a streamed start finds it prefetched. Nothing goes over the
// network but the profile; the layers' indexes come from the node cache
// only (a layer without one, as in an image this node pulled without ever
// streaming it, is skipped). Starts of one image share one warm-up. Close
// cancels it and waits for it.
func (n *Node) warm(img *remote.Image) {
	if n.opts.Profiles == nil {
		return
	}
	n.mu.Lock()
	last, ok := n.warmed[img.Digest]
	n.mu.Unlock()
	if ok && time.Since(last) < warmAgain {
		return
	}
	if n.begin() != nil {
		return
	}
	go func() {
		defer n.wg.Done()
		n.sf.Do("warm "+img.Digest.String(), func() (any, error) {
			ctx, cancel := context.WithTimeout(n.ctx, warmTimeout)
			defer cancel()
			st := n.warmImage(ctx, img)
			n.mu.Lock()
			for d, t := range n.warmed {
				if time.Since(t) >= warmAgain {
					delete(n.warmed, d)
				}
			}
			n.warmed[img.Digest] = time.Now()
			n.mu.Unlock()
			n.metrics.warmed(st)
			if st.files > 0 {
				n.log.Debug("node: had the kernel read an image's startup profile from the layer store", "image", img.Reference, "files", st.files, "bytes", st.bytes, "after", st.took.Round(time.Millisecond))
			}
			return nil, nil
		})
	}()
}

// warmStats is what one warm-up did.
type warmStats struct {
	files int
	bytes int64 // asked to be read, cached already or not
	took  time.Duration
}

// warmImage asks the kernel to read the profile's files of each of img's
// layers, the layers' lists interleaved (a profile orders spans by first
// use within a layer, not across layers).
func (n *Node) warmImage(ctx context.Context, img *remote.Image) warmStats {
	start := time.Now()
	p := n.profile(ctx, img)
	if p == nil {
		return warmStats{}
	}
	cc, err := n.Cache()
	if err != nil {
		return warmStats{}
	}
	at := make(map[digest.Digest]int, len(img.Manifest.Layers))
	for i, l := range img.Manifest.Layers {
		at[l.Digest] = i
	}
	var lists [][]warmFile
	for _, pl := range p.Layers {
		i, ok := at[pl.Digest]
		if !ok || len(pl.Spans) == 0 || i >= len(img.Config.RootFS.DiffIDs) {
			continue
		}
		delete(at, pl.Digest) // a layer twice in an image is one tree
		x := cachedIndex(ctx, cc, img.Manifest.Layers[i])
		if x == nil {
			continue
		}
		files := profileFiles(ctx, x, pl.Spans)
		if len(files) == 0 {
			continue
		}
		root, err := unix.Open(n.layers.Path(img.Config.RootFS.DiffIDs[i]), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		// Open until the warm-up ends; one per layer.
		defer unix.Close(root)
		for j := range files {
			files[j].root = root
		}
		lists = append(lists, files)
	}
	st := warmFiles(ctx, streamfs.Interleave(lists), warmParallel)
	st.took = time.Since(start)
	return st
}

// warmFile is the byte ranges of one regular file of a layer, by its name
// in the layer's tree.
type warmFile struct {
	root   int // the layer's tree, an O_PATH descriptor
	name   string
	ranges []warmRange
}

type warmRange struct{ off, end int64 }

// profileFiles lists the regular files whose content the given spans of x
// hold, in the order of the spans, each once, with the ranges of it they
// hold. At most indexsvc.MaxProfileSpans distinct spans count (a profile
// from elsewhere may be anything); files whose content overlaps an
// earlier file's (no tar has them) are left out.
func profileFiles(ctx context.Context, x *index.Index, spans []int) []warmFile {
	regs := make([]*index.File, 0, len(x.Files))
	for i := range x.Files {
		if f := &x.Files[i]; f.IsRegular() && f.Size > 0 {
			regs = append(regs, f)
		}
	}
	sort.SliceStable(regs, func(i, j int) bool { return regs[i].Offset < regs[j].Offset })
	kept, end := regs[:0], int64(0)
	for _, f := range regs {
		if f.Offset >= end {
			kept, end = append(kept, f), f.Offset+f.Size
		}
	}
	regs = kept
	var out []warmFile
	at := map[*index.File]int{}
	used := map[int]bool{}
	for _, s := range spans {
		if s < 0 || s >= len(x.Spans) || used[s] {
			continue
		}
		if len(used) == indexsvc.MaxProfileSpans || ctx.Err() != nil {
			break
		}
		used[s] = true
		lo, hi := x.Spans[s].UOffset, x.Spans[s].UOffset+x.Spans[s].USize
		i := sort.Search(len(regs), func(i int) bool { return regs[i].Offset+regs[i].Size > lo })
		for ; i < len(regs) && regs[i].Offset < hi; i++ {
			f := regs[i]
			r := warmRange{max(lo, f.Offset) - f.Offset, min(hi, f.Offset+f.Size) - f.Offset}
			k, ok := at[f]
			if !ok {
				at[f] = len(out)
				out = append(out, warmFile{name: f.Name, ranges: []warmRange{r}})
				continue
			}
			out[k].ranges = addRange(out[k].ranges, r)
		}
	}
	return out
}

// addRange adds r to rs, merging it with a range it touches: a file read
// at its start and its end is not read in between.
func addRange(rs []warmRange, r warmRange) []warmRange {
	out := rs[:0]
	for _, q := range rs {
		if r.off <= q.end && q.off <= r.end {
			r = warmRange{min(q.off, r.off), max(q.end, r.end)}
			continue
		}
		out = append(out, q)
	}
	return append(out, r)
}

// warmFiles has the kernel read each file's ranges, parallel files at a
// time, in order, until ctx ends.
func warmFiles(ctx context.Context, files []warmFile, parallel int) warmStats {
	var (
		mu sync.Mutex
		st warmStats
		wg sync.WaitGroup
	)
	next := make(chan warmFile)
	for range parallel {
		wg.Go(func() {
			for f := range next {
				if n, err := adviseRead(f); err == nil {
					mu.Lock()
					st.files++
					st.bytes += n
					mu.Unlock()
				}
			}
		})
	}
feed:
	for _, f := range files {
		select {
		case next <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return st
}

// errNotRegular is adviseRead's answer for a name that is not a regular
// file in the layer (a layer's tree is the image's data: anything may be
// where the index says a file is).
var errNotRegular = errors.New("node: not a regular file")

// adviseRead asks the kernel to read f's ranges into the page cache and
// returns the bytes it asked for. The name is resolved beneath the
// layer's tree without following any symbolic link (a link in the tree
// points into the container's root, not the host's), and opened for
// reading only once it is known to be a regular file: opening a device
// the layer holds could act on the host's hardware, opening a FIFO could
// block.
func adviseRead(f warmFile) (int64, error) {
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	p, err := unix.Openat2(f.root, f.name, &how)
	if err != nil {
		return 0, err
	}
	defer unix.Close(p)
	var s unix.Stat_t
	if err := unix.Fstat(p, &s); err != nil {
		return 0, err
	}
	if s.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, errNotRegular
	}
	// Reopened through the descriptor: the same file, whatever the name
	// now is.
	self := "/proc/self/fd/" + strconv.Itoa(p)
	flags := unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOATIME | unix.O_CLOEXEC
	fd, err := unix.Open(self, flags, 0)
	if errors.Is(err, unix.EPERM) { // O_NOATIME on a file not ours, without CAP_FOWNER
		fd, err = unix.Open(self, flags&^unix.O_NOATIME, 0)
	}
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var n int64
	for _, r := range f.ranges {
		for off := r.off; off < r.end; off += warmChunk {
			if err := unix.Fadvise(fd, off, min(warmChunk, r.end-off), unix.FADV_WILLNEED); err != nil {
				return n, err
			}
		}
		n += r.end - r.off
	}
	return n, nil
}
