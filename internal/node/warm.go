package node

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/remote"
)

// warmParallel is how many files a warm-up asks the kernel to read at
// once. A task walking an image reads one file after another, each a
// synchronous read from the disk; the warm-up keeps the disk's queue full
// instead, ahead of the task. Reading every file of the bench image from a
// cold page cache took 3.5 s alone and 1.6 s beside 16 such workers.
const warmParallel = 16

// warmTimeout bounds one warm-up: past it the pages would come too late
// to help the task that started it.
const warmTimeout = time.Minute

// warm reads, in the background, the data of img's startup profile from
// its extracted layers into the page cache, so that a task started on a
// settled image whose files are no longer cached (after a reboot, or
// memory pressure) finds what it reads first already read, as a streamed
// start finds it prefetched. Nothing goes over the network but the
// profile; the layers' indexes come from the node cache only (a layer
// without one is skipped). Concurrent starts of one image share one
// warm-up. Close cancels it and waits for it.
func (n *Node) warm(img *remote.Image) {
	if n.opts.Profiles == nil {
		return
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.wg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.wg.Done()
		n.sf.Do("warm "+img.Digest.String(), func() (any, error) {
			ctx, cancel := context.WithTimeout(n.ctx, warmTimeout)
			defer cancel()
			st := n.warmImage(ctx, img)
			n.metrics.warmed(st)
			if st.files > 0 {
				n.log.Info("node: read a settled image's startup profile into the page cache", "image", img.Reference, "files", st.files, "bytes", st.bytes, "after", st.took.Round(time.Millisecond))
			}
			return nil, nil
		})
	}()
}

// warmStats is what one warm-up did.
type warmStats struct {
	files int
	bytes int64 // advised to be read, cached or not
	took  time.Duration
}

// warmImage advises the kernel to read the profile's files of each of
// img's layers, the layers' lists interleaved (a profile orders spans by
// first use within a layer, not across layers).
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
		if !ok || i >= len(img.Config.RootFS.DiffIDs) {
			continue
		}
		x := cachedIndex(ctx, cc, img.Manifest.Layers[i])
		if x == nil {
			continue
		}
		root, err := unix.Open(n.layers.Path(img.Config.RootFS.DiffIDs[i]), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		defer unix.Close(root)
		files := profileFiles(x, pl.Spans)
		for j := range files {
			files[j].root = root
		}
		lists = append(lists, files)
	}
	var order []warmFile
	for j := 0; ; j++ {
		more := false
		for _, l := range lists {
			if j < len(l) {
				order = append(order, l[j])
				more = true
			}
		}
		if !more {
			break
		}
	}
	st := warmFiles(ctx, order, warmParallel)
	st.took = time.Since(start)
	return st
}

// warmFile is a byte range of one regular file of a layer, by its name in
// the layer's tree.
type warmFile struct {
	root     int // the layer's tree, an O_PATH descriptor
	name     string
	off, end int64
}

// profileFiles lists the regular files whose content the given spans of x
// hold, in the order of the spans, each once, with the range of it they
// hold (a file some of whose spans came later grows its range).
func profileFiles(x *index.Index, spans []int) []warmFile {
	regs := make([]*index.File, 0, len(x.Files))
	for i := range x.Files {
		if f := &x.Files[i]; f.IsRegular() && f.Size > 0 {
			regs = append(regs, f)
		}
	}
	sort.SliceStable(regs, func(i, j int) bool { return regs[i].Offset < regs[j].Offset })
	var out []warmFile
	seen := map[*index.File]int{}
	for _, s := range spans {
		if s < 0 || s >= len(x.Spans) {
			continue
		}
		lo, hi := x.Spans[s].UOffset, x.Spans[s].UOffset+x.Spans[s].USize
		i := sort.Search(len(regs), func(i int) bool { return regs[i].Offset+regs[i].Size > lo })
		for ; i < len(regs) && regs[i].Offset < hi; i++ {
			f := regs[i]
			a, b := max(lo, f.Offset)-f.Offset, min(hi, f.Offset+f.Size)-f.Offset
			if k, ok := seen[f]; ok {
				out[k].off, out[k].end = min(out[k].off, a), max(out[k].end, b)
				continue
			}
			seen[f] = len(out)
			out = append(out, warmFile{name: f.Name, off: a, end: b})
		}
	}
	return out
}

// warmFiles advises the kernel to read each file's range, parallel at a
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
				if err := adviseRead(f); err == nil {
					mu.Lock()
					st.files++
					st.bytes += f.end - f.off
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

// adviseRead opens f beneath its layer's tree without following any
// symbolic link (a link in the tree points into the container's root, not
// the host's), and without blocking (a FIFO there is no file to read), and
// asks the kernel to read its range into the page cache.
func adviseRead(f warmFile) error {
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOFOLLOW | unix.O_NOATIME | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	fd, err := unix.Openat2(f.root, f.name, &how)
	if errors.Is(err, unix.EPERM) { // O_NOATIME on a file not ours, without CAP_FOWNER
		how.Flags &^= unix.O_NOATIME
		fd, err = unix.Openat2(f.root, f.name, &how)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var s unix.Stat_t
	if err := unix.Fstat(fd, &s); err != nil {
		return err
	}
	if s.Mode&unix.S_IFMT != unix.S_IFREG {
		return errNotRegular
	}
	return unix.Fadvise(fd, f.off, f.end-f.off, unix.FADV_WILLNEED)
}
