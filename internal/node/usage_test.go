package node_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// oneLayerSpec is an image of one layer whose content depends on seed, so
// images of different seeds share no layer.
func oneLayerSpec(seed uint64) imagegen.Spec {
	return imagegen.Spec{Layers: []imagegen.Layer{{Compression: imagegen.Gzip, Entries: []imagegen.Entry{
		{Type: imagegen.File, Name: "f", Size: 64 << 10, Seed: seed},
	}}}}
}

// layerState maps each layer of u to whether it is in use.
func layerState(u node.Usage) map[digest.Digest]bool {
	m := map[digest.Digest]bool{}
	for _, e := range u.Entries {
		if e.Kind == "layer" {
			m[e.Digest] = e.InUse
		}
	}
	return m
}

func usage(t *testing.T, n *node.Node) node.Usage {
	t.Helper()
	u, err := n.Usage()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestPruneKeepsWhatRootFSesHold: Prune removes the layers of released
// images, least recently used first, and never those of a root filesystem
// still held; Usage names the images that used a layer.
func TestPruneKeepsWhatRootFSesHold(t *testing.T) {
	tr := newRegistry(t)
	refA := tr.push(t, "p/r/a", oneLayerSpec(1))
	refB := tr.push(t, "p/r/b", oneLayerSpec(2))
	refC := tr.push(t, "p/r/c", oneLayerSpec(3))
	n := newNode(t, t.TempDir(), nil)
	defer n.Close()
	ctx := context.Background()

	var rfs []*node.RootFS
	for _, ref := range []string{refA, refB, refC} {
		r, err := n.Pull(ctx, ref, node.Auth{})
		if err != nil {
			t.Fatal(err)
		}
		rfs = append(rfs, r)
	}
	u := usage(t, n)
	if len(u.Entries) != 3 || u.LayerBytes <= 0 {
		t.Fatalf("usage after 3 pulls: %+v", u)
	}
	for _, e := range u.Entries {
		if !e.InUse || len(e.Images) != 1 {
			t.Errorf("held layer %s: inUse %v, images %v", e.Digest, e.InUse, e.Images)
		}
	}
	if r, err := n.Prune(ctx, 0); err != nil || len(r.Removed) != 0 {
		t.Fatalf("prune with every image held removed %v (err %v)", r.Removed, err)
	}

	// A is released first, then C: A is the least recently used.
	rfs[0].Release()
	rfs[2].Release()
	layerA := rfs[0].Lower[0]
	layerC := rfs[2].Lower[0]
	// Keep room for everything but one unused layer: A goes, C stays.
	total := usage(t, n).LayerBytes
	r, err := n.Prune(ctx, total-1)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Removed) != 1 {
		t.Fatalf("prune to total-1 removed %d layers, want 1: %+v", len(r.Removed), r)
	}
	if _, err := os.Stat(layerA); !os.IsNotExist(err) {
		t.Errorf("the least recently used layer (A) is still there: %v", err)
	}
	if _, err := os.Stat(layerC); err != nil {
		t.Errorf("the more recently used layer (C) went: %v", err)
	}
	// Prune to 0: C goes, B (held) stays and is still readable.
	if r, err = n.Prune(ctx, 0); err != nil || len(r.Removed) != 1 {
		t.Fatalf("prune to 0: %+v, %v", r, err)
	}
	if _, err := os.ReadFile(rfs[1].Lower[0] + "/f"); err != nil {
		t.Errorf("the held image's layer: %v", err)
	}
	rfs[1].Release()
	rfs[1].Release() // a second release changes nothing
	if r, err = n.Prune(ctx, 0); err != nil || len(r.Removed) != 1 || r.Kept != 0 {
		t.Fatalf("prune after the last release: %+v, %v", r, err)
	}
	// A pruned image pulls again.
	again, err := n.Pull(ctx, refA, node.Auth{})
	if err != nil || again.Reused {
		t.Fatalf("pull after prune: reused %v, %v", again != nil && again.Reused, err)
	}
	again.Release()
}

// TestPruneKeepsStreamMountLayers: the layers of a stream-mounted image
// that has settled are in use while the mount is, and go once its last
// user released it.
func TestPruneKeepsStreamMountLayers(t *testing.T) {
	testutil.RequiresRoot(t)
	tr := newRegistry(t)
	ref := tr.push(t, "p/r/s", smallSpec())
	n := newNode(t, t.TempDir(), nil)
	defer n.Close()
	ctx := context.Background()
	rfs, err := n.Stream(ctx, ref, node.Auth{})
	if err != nil {
		t.Fatal(err)
	}
	if rfs.Method != node.MethodStreamed {
		t.Fatalf("method %q", rfs.Method)
	}
	// The layers settle into the store in the background.
	for i := 0; len(usage(t, n).Entries) < 2; i++ {
		if i == 600 {
			t.Fatal("the layers did not settle within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	u := usage(t, n)
	if len(u.Mounts) != 1 {
		t.Fatalf("mounts: %+v", u.Mounts)
	}
	for d, inUse := range layerState(u) {
		if !inUse {
			t.Errorf("layer %s of the mounted image is not in use", d)
		}
	}
	if r, err := n.Prune(ctx, 0); err != nil || len(r.Removed) != 0 {
		t.Fatalf("prune under a mount removed %+v (err %v)", r.Removed, err)
	}
	if _, err := os.ReadFile(rfs.Lower[0] + "/data/a.bin"); err != nil {
		t.Fatalf("reading through the mount: %v", err)
	}
	rfs.Release()
	// The settled mount goes with its last user.
	for i := 0; len(usage(t, n).Mounts) > 0; i++ {
		if i == 200 {
			t.Fatal("the settled mount stayed after its release")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r, err := n.Prune(ctx, 0); err != nil || len(r.Removed) != 2 {
		t.Fatalf("prune after release: %+v, %v", r, err)
	}
}

// TestPruneWhilePulling runs prunes against pulls and releases of several
// images at once: every root filesystem's directories exist for as long
// as it is held.
func TestPruneWhilePulling(t *testing.T) {
	tr := newRegistry(t)
	refs := []string{tr.push(t, "p/r/a", oneLayerSpec(1)), tr.push(t, "p/r/b", oneLayerSpec(2))}
	n := newNode(t, t.TempDir(), nil)
	defer n.Close()
	ctx := context.Background()
	stop := make(chan struct{})
	pruned := make(chan int)
	go func() {
		count := 0
		defer func() { pruned <- count }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := n.Prune(ctx, 0); err != nil {
				t.Error(err)
				return
			}
			count++
		}
	}()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				r, err := n.Pull(ctx, refs[(w+i)%2], node.Auth{})
				if err != nil {
					t.Error(err)
					return
				}
				for _, d := range r.Lower {
					if _, err := os.ReadFile(d + "/f"); err != nil {
						t.Errorf("held layer gone: %v", err)
					}
				}
				r.Release()
			}
		}()
	}
	wg.Wait()
	close(stop)
	if c := <-pruned; c == 0 {
		t.Error("no prune ran")
	}
}
