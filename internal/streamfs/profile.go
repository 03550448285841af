package streamfs

import (
	"context"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Profile is a startup profile: per layer, the spans readers needed first,
// in order of first use. A mount records one (MountPoint.Profile) and a
// later mount of an image sharing those layers prefetches from it
// (Options.Profile). Layers are matched by blob digest, so a base layer
// shared by many images shares its profile.
type Profile struct {
	Layers []ProfileLayer `json:"layers"`
}

// ProfileLayer is one layer's part of a Profile.
type ProfileLayer struct {
	// Digest is the layer blob's digest.
	Digest digest.Digest `json:"digest"`
	// Spans are span numbers of the layer's index, in order of first use.
	Spans []int `json:"spans"`
}

// Defaults of the profile.
const (
	DefaultProfileTime     = 30 * time.Second
	DefaultProfileBytes    = 512 << 20
	DefaultProfileParallel = 4
)

// Span states in the recorder.
const (
	spanSeen       uint8 = 1 << iota // a reader used it (recorded if in budget)
	spanProfiled                     // fetched because the profile lists it
	spanHitCounted                   // its profile hit has been counted
)

// recorder records which spans readers use first and counts profile hits.
type recorder struct {
	m        *MountPoint
	start    time.Time
	limit    time.Duration
	maxBytes int64

	mu    sync.Mutex
	bytes int64     // span bytes recorded
	state [][]uint8 // per layer, per span
	order [][]int   // per layer, spans in order of first use
}

func newRecorder(m *MountPoint, opts Options) *recorder {
	r := &recorder{m: m, start: time.Now(), limit: opts.ProfileTime, maxBytes: opts.ProfileBytes}
	if r.limit <= 0 {
		r.limit = DefaultProfileTime
	}
	if r.maxBytes <= 0 {
		r.maxBytes = DefaultProfileBytes
	}
	r.state = make([][]uint8, len(m.spans))
	r.order = make([][]int, len(m.spans))
	for i, sp := range m.spans {
		r.state[i] = make([]uint8, len(sp))
	}
	return r
}

// recordSpan notes that a reader used span s of layer l.
func (r *recorder) recordSpan(l, s int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := &r.state[l][s]
	if *st&spanSeen != 0 {
		return
	}
	*st |= spanSeen
	size := r.m.spans[l][s].Size
	if time.Since(r.start) > r.limit || r.bytes+size > r.maxBytes {
		return
	}
	r.bytes += size
	r.order[l] = append(r.order[l], s)
}

// recordRead notes a read of [off, off+size) of file n that did not go
// through the span cache (a file in the layer store).
func (r *recorder) recordRead(n *node, off, size int64) {
	spans := r.m.spans[n.layer]
	end := n.off + min(off+size, n.size)
	for i := spanAt(spans, n.off+off); i < len(spans) && spans[i].Offset < end; i++ {
		r.recordSpan(n.layer, i)
	}
}

// markProfiled notes that span s of layer l was fetched for the profile.
func (r *recorder) markProfiled(l, s int) {
	r.mu.Lock()
	r.state[l][s] |= spanProfiled
	r.mu.Unlock()
}

// hit counts a reader's use of span s of layer l as a profile hit, once,
// if the profile fetched it.
func (r *recorder) hit(l, s int) {
	r.mu.Lock()
	st := &r.state[l][s]
	counted := *st&spanProfiled != 0 && *st&spanHitCounted == 0
	if counted {
		*st |= spanHitCounted
	}
	r.mu.Unlock()
	if counted {
		r.m.metrics.profileHits.Inc()
	}
}

// Profile returns the spans readers of this mount used first, per layer in
// order of first use, within Options.ProfileTime and ProfileBytes. Reads
// the kernel served by passthrough never reach this process: for those
// files the span holding the file's start is recorded at open.
func (m *MountPoint) Profile() Profile {
	r := m.profile
	r.mu.Lock()
	defer r.mu.Unlock()
	var p Profile
	for i, o := range r.order {
		if len(o) > 0 {
			p.Layers = append(p.Layers, ProfileLayer{Digest: m.img.Layers[i].Digest(), Spans: append([]int(nil), o...)})
		}
	}
	return p
}

// profileJob is one span of the profile to fetch: span s of layer l.
type profileJob struct{ l, s int }

// profileList is one layer's profile spans that are not in the cache yet,
// in profile order, and whether to fetch them as the layer's pack.
type profileList struct {
	jobs []profileJob
	pack bool
}

// profileLists returns, per layer of Options.Profile that this image has
// (and whose layer is not complete in the layer store), its spans in
// profile order that the cache lacks. A warm node fetches only those: by
// the pack while they are at least half of the profile's bytes (the pack
// streams all of them, so less than that would waste more of the link than
// it saves in requests), else by range.
func (m *MountPoint) profileLists() []profileList {
	byDigest := map[digest.Digest]int{}
	for i, l := range m.img.Layers {
		byDigest[l.Digest()] = i
	}
	var lists []profileList
	seen := map[int]bool{} // a layer twice in an image is one blob: once
	for _, pl := range m.opts.Profile.Layers {
		i, ok := byDigest[pl.Digest]
		if !ok || seen[i] || m.background != nil && m.background.layers[i].getState() == LayerComplete {
			continue
		}
		seen[i] = true
		var js []profileJob
		var all, missing int64
		for _, s := range pl.Spans {
			if s < 0 || s >= len(m.spans[i]) {
				continue
			}
			size := m.spans[i][s].Size
			all += size
			if m.cached(i, s) {
				continue
			}
			missing += size
			js = append(js, profileJob{i, s})
		}
		if len(js) > 0 {
			lists = append(lists, profileList{jobs: js, pack: 2*missing >= all})
		}
	}
	return lists
}

// Interleave orders the lists' items round-robin (the first of each list,
// then the second of each...), so every list's first items come early: a
// profile orders spans by first use within a layer, not across layers.
func Interleave[T any](lists [][]T) []T {
	var queue []T
	for k := 0; ; k++ {
		added := false
		for _, l := range lists {
			if k < len(l) {
				queue = append(queue, l[k])
				added = true
			}
		}
		if !added {
			return queue
		}
	}
}

// ImageName is the name of the mounted image (Image.Name), usually the
// reference it was opened from.
func (m *MountPoint) ImageName() string { return m.img.Name }

// startProfile fetches the spans of Options.Profile that this image has
// and the cache lacks, ahead of the background streams. With
// Options.Packs, each layer's pack is read in one stream (layers in
// parallel) and only what the packs did not deliver is fetched by range; without, every span is fetched by
// range in profile order (layers interleaved). Range fetches run
// ProfileParallel at a time. Layers complete in the layer store are
// skipped.
func (m *MountPoint) startProfile() {
	var lists []profileList
	if m.opts.Profile != nil {
		lists = m.profileLists()
	}
	prio := prioProfile
	if len(lists) == 0 && (m.opts.Profile == nil || len(m.opts.Profile.Layers) == 0) {
		lists, prio = m.hintLists(), prioHint
	}
	planner, _ := m.opts.Packs.(PackPlanner)
	if len(lists) == 0 {
		if planner != nil {
			planner.PlanPacks(nil)
		}
		close(m.packsDone)
		return
	}
	par := m.opts.ProfileParallel
	if par <= 0 {
		par = DefaultProfileParallel
	}
	// Packs are expected before this returns, so that no read of the
	// mount misses them.
	expected := make([]*packStream, len(lists))
	if m.opts.Packs != nil {
		var planned []digest.Digest
		for i, pl := range lists {
			if pl.pack {
				expected[i] = m.expectPack(pl.jobs[0].l, spansOf(pl.jobs))
			}
			if expected[i] != nil {
				planned = append(planned, m.img.Layers[pl.jobs[0].l].Digest())
			}
		}
		if planner != nil {
			planner.PlanPacks(planned)
		}
	}
	// Spans fetched by range count as coming from now, before any read.
	for i, pl := range lists {
		if expected[i] == nil {
			m.markQueued(pl.jobs)
		}
	}
	jobs := make(chan profileJob)
	for range par {
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			for j := range jobs {
				ctx, cancel := context.WithTimeout(m.ctx, m.opts.ReadTimeout)
				if e, _, err := m.span(ctx, j.l, j.s, prio); err == nil {
					e.Close()
				}
				cancel()
				m.dequeue(j)
			}
		}()
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer close(jobs)
		if m.opts.Packs == nil {
			close(m.packsDone)
			all := make([][]profileJob, len(lists))
			for i, pl := range lists {
				all[i] = pl.jobs
			}
			m.queueJobs(jobs, Interleave(all))
			return
		}
		var wg, packs sync.WaitGroup
		for i, pl := range lists {
			packs.Add(1)
			wg.Go(func() {
				l, want := pl.jobs[0].l, spansOf(pl.jobs)
				if expected[i] != nil {
					want = m.readPack(l, want, expected[i])
				}
				packs.Done()
				m.queueJobs(jobs, jobsOf(l, want))
			})
		}
		packs.Wait()
		close(m.packsDone)
		wg.Wait()
	}()
}

func spansOf(js []profileJob) []int {
	out := make([]int, len(js))
	for k, j := range js {
		out[k] = j.s
	}
	return out
}

func jobsOf(l int, spans []int) []profileJob {
	out := make([]profileJob, len(spans))
	for k, s := range spans {
		out[k] = profileJob{l, s}
	}
	return out
}

// queueJobs hands jobs to the profile's range fetchers, until unmount.
// The spans count as coming (spansComing) from now until fetched.
func (m *MountPoint) queueJobs(jobs chan<- profileJob, queue []profileJob) {
	m.markQueued(queue)
	for _, j := range queue {
		select {
		case jobs <- j:
		case <-m.ctx.Done():
			return
		}
	}
}

// markQueued notes that the spans of js are queued for range fetches.
func (m *MountPoint) markQueued(js []profileJob) {
	m.queuedMu.Lock()
	defer m.queuedMu.Unlock()
	if m.queued == nil {
		m.queued = map[profileJob]bool{}
	}
	for _, j := range js {
		m.queued[j] = true
	}
}

// dequeue notes that the range fetch of job j is over.
func (m *MountPoint) dequeue(j profileJob) {
	m.queuedMu.Lock()
	delete(m.queued, j)
	m.queuedMu.Unlock()
}

// isQueued reports whether span s of layer l is queued for a range fetch
// of the profile or hints.
func (m *MountPoint) isQueued(l, s int) bool {
	m.queuedMu.Lock()
	defer m.queuedMu.Unlock()
	return m.queued[profileJob{l, s}]
}
