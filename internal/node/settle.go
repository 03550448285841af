package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/cache"
	"github.com/riffle-dev/riffle/internal/indexsvc"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// profileTimeout bounds asking for an image's startup profile before
// mounting it: a slow profile source must not delay a start.
const profileTimeout = 2 * time.Second

// profile returns the startup profile of img's layers, or nil when no
// layer has one (or there is no profile source). A layer whose profile the
// node has a fresh copy of (profileFresh) costs no request.
func (n *Node) profile(ctx context.Context, img *remote.Image) *streamfs.Profile {
	if n.opts.Profiles == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, profileTimeout)
	defer cancel()
	// One request per layer, all at once: asked one after another, they
	// cost a round trip each before the mount (5 layers at 60 ms RTT kept
	// a warm start waiting 0.15 s after its indexes were in).
	layers := img.Manifest.Layers
	found := make([][]int, len(layers))
	var wg sync.WaitGroup
	for i, l := range layers {
		if spans, ok := n.localProfile(l.Digest); ok {
			found[i] = spans
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lp, err := n.opts.Profiles.Profile(ctx, l.Digest)
			switch {
			case errors.Is(err, indexsvc.ErrNoProfile):
				n.keepProfile(l.Digest, nil)
			case err != nil:
				n.log.Warn("node: startup profile unavailable", "layer", l.Digest, "err", err)
			default:
				n.keepProfile(l.Digest, lp.Spans)
				found[i] = lp.Spans
			}
		}()
	}
	wg.Wait()
	var p streamfs.Profile
	for i, spans := range found {
		if len(spans) > 0 {
			p.Layers = append(p.Layers, streamfs.ProfileLayer{Digest: layers[i].Digest, Spans: spans})
		}
	}
	if len(p.Layers) == 0 {
		return nil
	}
	return &p
}

// reportProfile sends what m's readers read first to the profile source,
// once per mount: when its first task releases it, or at Close.
func (n *Node) reportProfile(m *mount) {
	if n.opts.Profiles == nil {
		return
	}
	m.reported.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		repo := repository(m)
		// One request per layer, all at once: one after another they
		// cost a round trip each, and riffle run waits for them before
		// it exits (3 layers at 60 ms RTT took 0.22 s).
		var wg sync.WaitGroup
		recorded := m.mp.Profile().Layers
		n.keepRecorded(m, recorded)
		for _, l := range recorded {
			if len(l.Spans) == 0 {
				continue
			}
			wg.Go(func() {
				if err := n.opts.Profiles.AddProfile(ctx, repo, l.Digest, l.Spans); err != nil {
					n.log.Warn("node: reporting a startup profile failed", "layer", l.Digest, "err", err)
				}
			})
		}
		wg.Wait()
	})
}

// keepRecorded keeps what m's readers read first as the node's copy of
// the profile of each layer that has no fresh copy with spans (one the
// node fetched holds other runs too), and of the image's other layers as
// having none, so the image's next start here asks for no profile.
func (n *Node) keepRecorded(m *mount, recorded []streamfs.ProfileLayer) {
	seen := map[digest.Digest]bool{}
	for _, l := range recorded {
		seen[l.Digest] = true
		if spans, ok := n.localProfile(l.Digest); !ok || len(spans) == 0 {
			n.keepProfile(l.Digest, l.Spans)
		}
	}
	if m.img == nil {
		return
	}
	for _, l := range m.img.Manifest.Layers {
		if _, ok := n.localProfile(l.Digest); !ok && !seen[l.Digest] {
			n.keepProfile(l.Digest, nil)
		}
	}
}

// ReportProfile reports the startup profile of a mount made by MountAt.
func (n *Node) ReportProfile(mp *streamfs.MountPoint) {
	n.reportProfile(&mount{mp: mp})
}

// repository is the repository ("HOST/NAME") m's image was read from,
// which the profile store reads the layers from to build their packs;
// "" when unknown (no pack is built then).
func repository(m *mount) string {
	if m.img != nil {
		return m.img.Repository.Name()
	}
	ref, err := name.ParseReference(m.mp.ImageName(), name.WeakValidation)
	if err != nil {
		return ""
	}
	return ref.Context().Name()
}

// release ends one use of m's root filesystem. The first release reports
// the startup profile, in the background; Close waits for the report (a
// `riffle run` that exits right after its task would lose it, or hand it
// to the index service after the caller thought it was in). The last
// release of a settled image unmounts it.
func (n *Node) release(m *mount) {
	n.mu.Lock()
	later := !n.closed
	if later {
		n.reports.Add(1)
	}
	n.mu.Unlock()
	if later {
		go func() {
			defer n.reports.Done()
			n.reportProfile(m)
		}()
	} else {
		n.reportProfile(m)
	}
	n.mu.Lock()
	m.users--
	drop := m.users == 0 && m.settled && n.mounts[m.img.Digest] == m
	if drop {
		n.forgetLocked(m)
	}
	n.mu.Unlock()
	if drop {
		n.unmount(m)
	}
}

// settle waits until every layer of m's image is in the layer store, then
// drops the layers' spans from the cache (their data is in the store now,
// and is not kept twice) and marks the mount settled: later Streams get
// overlayfs over the layers, and the FUSE mount goes when its last user
// releases it.
func (n *Node) settle(m *mount) {
	defer n.wg.Done()
	select {
	case <-m.mp.Complete(): // nil (never) without a layer stream
	case <-m.gone:
		return
	case <-n.ctx.Done():
		return
	}
	if !n.complete(m.img) {
		return
	}
	if c, err := n.Cache(); err == nil {
		var keys []string
		for i, l := range m.img.Manifest.Layers {
			for s := range m.spans[i] {
				keys = append(keys, cache.SpanKey(l.Digest, s))
			}
		}
		freed := c.Delete(keys...)
		n.log.Info("node: image settled into the layer store", "image", m.img.Reference, "spans freed", freed)
	}
	n.mu.Lock()
	m.settled = true
	close(m.settledCh)
	drop := m.users == 0 && n.mounts[m.img.Digest] == m
	if drop {
		n.forgetLocked(m)
	}
	n.mu.Unlock()
	if drop {
		n.reportProfile(m)
		n.unmount(m)
	}
}

// waitSettled waits until m has settled (see RootFS.WaitSettled).
func (n *Node) waitSettled(ctx context.Context, m *mount) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if !settling(m.mp) {
			select {
			case <-m.settledCh: // settled just now
				return nil
			default:
				return ErrNotSettling
			}
		}
		select {
		case <-m.settledCh:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-n.ctx.Done():
			return fmt.Errorf("node: closed before the image settled: %w", n.ctx.Err())
		case <-tick.C: // a layer stream may have failed meanwhile
		}
	}
}

// settling reports whether mp's layer streams may still complete the
// image: there are streams, and none is off or failed.
func settling(mp *streamfs.MountPoint) bool {
	if mp.Complete() == nil {
		return false
	}
	for _, l := range mp.Stats().Layers {
		if l.State == streamfs.LayerFailed || l.State == streamfs.LayerOff {
			return false
		}
	}
	return true
}
