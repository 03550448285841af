package scheduler

import (
	"context"
	"strings"
	"testing"
)

func granted(w *waiter) bool {
	select {
	case <-w.ready:
		return true
	default:
		return false
	}
}

// TestPoolFirstComeFirstServed: a waiting task holds back later ones even
// when they would fit, a task larger than the node runs alone, and a
// waiter that gives up lets the ones behind it go.
func TestPoolFirstComeFirstServed(t *testing.T) {
	p := newPool(Capacity{CPUMilli: 1000, MemoryMiB: 1000, Overcommit: 1})
	a, why := p.enter(demand{600, 100})
	if why != "" || !granted(a) {
		t.Fatalf("first task waits: %s", why)
	}
	b, why := p.enter(demand{600, 100})
	if why == "" || granted(b) {
		t.Fatal("a task that does not fit was granted")
	}
	c, why := p.enter(demand{100, 100})
	if why == "" || granted(c) {
		t.Fatal("a small task overtook a waiting one")
	}
	if want := "of which 600 mCPU and 100 MiB are taken by 1 running task(s), and 1 task(s) wait before it"; !strings.Contains(why, want) {
		t.Errorf("why = %q, want it to say %q", why, want)
	}
	p.release(a)
	if !granted(b) || !granted(c) {
		t.Fatal("release did not start the waiters that fit")
	}
	p.release(b)
	p.release(c)

	huge, why := p.enter(demand{5000, 100})
	if why != "" || !granted(huge) || !p.exceeds(huge.d) {
		t.Fatal("a task larger than the node does not run when alone")
	}
	small, _ := p.enter(demand{100, 100})
	behind, _ := p.enter(demand{100, 100})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.wait(ctx, small); err == nil {
		t.Fatal("wait ignored its context")
	}
	p.release(huge)
	if !granted(behind) {
		t.Fatal("the task behind one that gave up was not started")
	}
	p.release(behind)
	if p.running != 0 || p.used != (demand{}) || len(p.queue) != 0 {
		t.Errorf("pool not empty at the end: %d running, %+v used, %d queued", p.running, p.used, len(p.queue))
	}
	if n := p.fit(demand{400, 100}); n != 2 {
		t.Errorf("fit = %d, want 2", n)
	}
}
