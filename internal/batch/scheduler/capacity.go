package scheduler

import (
	"bufio"
	"context"
	"fmt"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"

	"cloud.google.com/go/batch/apiv1/batchpb"
)

// Capacity is what this node offers tasks. Tasks run at once while the
// sum of their taskSpec.computeResource fits in it, as Batch fits tasks
// onto a VM.
type Capacity struct {
	// CPUMilli is the node's CPU in milliCPU (1000 per CPU). Default: the
	// CPUs this process may use, times 1000.
	CPUMilli int64
	// MemoryMiB is the node's memory in MiB. Default: the machine's
	// memory (MemTotal).
	MemoryMiB int64
	// Overcommit multiplies CPUMilli and MemoryMiB: 2 lets the tasks
	// running at once ask for twice what the node has. Default 1.
	Overcommit float64
}

// withDefaults fills the unset fields from the machine.
func (c Capacity) withDefaults() Capacity {
	if c.CPUMilli <= 0 {
		c.CPUMilli = int64(goruntime.NumCPU()) * 1000
	}
	if c.MemoryMiB <= 0 {
		c.MemoryMiB = machineMemoryMiB()
	}
	if c.Overcommit <= 0 {
		c.Overcommit = 1
	}
	return c
}

// machineMemoryMiB reads MemTotal; 4 GiB when it cannot be read.
func machineMemoryMiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 4096
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil && kb > 0 {
				return kb / 1024
			}
		}
	}
	return 4096
}

// demand is what one task of a group asks for.
type demand struct{ cpu, mem int64 }

func demandOf(spec *batchpb.TaskSpec) demand {
	cr := spec.GetComputeResource()
	return demand{cpu: max(cr.GetCpuMilli(), 0), mem: max(cr.GetMemoryMib(), 0)}
}

// pool hands out the node's capacity to tasks, first come first served:
// a task that does not fit holds back the tasks after it, so a large
// task is never starved by a stream of small ones. A task larger than
// the whole node runs when it is alone.
type pool struct {
	cpu, mem int64 // capacity after overcommit
	cfg      Capacity

	mu      sync.Mutex
	used    demand    // guarded by mu
	running int       // guarded by mu
	queue   []*waiter // guarded by mu; granted waiters leave it
}

// waiter is a task waiting in the pool; ready is closed once granted.
type waiter struct {
	d       demand
	ready   chan struct{}
	granted bool // guarded by pool.mu
}

func newPool(c Capacity) *pool {
	return &pool{cfg: c, cpu: int64(float64(c.CPUMilli) * c.Overcommit), mem: int64(float64(c.MemoryMiB) * c.Overcommit)}
}

func (p *pool) fitsLocked(d demand) bool {
	return p.running == 0 || (p.used.cpu+d.cpu <= p.cpu && p.used.mem+d.mem <= p.mem)
}

func (p *pool) grantLocked(w *waiter) {
	p.used.cpu += w.d.cpu
	p.used.mem += w.d.mem
	p.running++
	w.granted = true
	close(w.ready)
}

// exceeds reports whether d is more than the whole node offers.
func (p *pool) exceeds(d demand) bool { return d.cpu > p.cpu || d.mem > p.mem }

// fit is how many tasks of demand d fit in the node at once (at least 1).
func (p *pool) fit(d demand) int64 {
	n := int64(1 << 62)
	if d.cpu > 0 {
		n = min(n, p.cpu/d.cpu)
	}
	if d.mem > 0 {
		n = min(n, p.mem/d.mem)
	}
	return max(n, 1)
}

// enter asks for d. It returns a granted waiter when d fits now and
// nobody waits before it; otherwise the waiter is queued, with a snapshot
// of the pool for the event saying why it waits.
func (p *pool) enter(d demand) (w *waiter, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w = &waiter{d: d, ready: make(chan struct{})}
	if len(p.queue) == 0 && p.fitsLocked(d) {
		p.grantLocked(w)
		return w, ""
	}
	p.queue = append(p.queue, w)
	return w, p.describeLocked(d, len(p.queue)-1)
}

// wait waits until w is granted or ctx ends; on an error w holds nothing.
func (p *pool) wait(ctx context.Context, w *waiter) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	if w.granted {
		p.mu.Unlock()
		p.release(w)
		return ctx.Err()
	}
	for i, q := range p.queue {
		if q == w {
			p.queue = append(p.queue[:i], p.queue[i+1:]...)
			break
		}
	}
	p.grantQueuedLocked() // it may have held back the ones after it
	p.mu.Unlock()
	return ctx.Err()
}

// release gives back what w held and starts the waiters that now fit.
func (p *pool) release(w *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.used.cpu -= w.d.cpu
	p.used.mem -= w.d.mem
	p.running--
	p.grantQueuedLocked()
}

func (p *pool) grantQueuedLocked() {
	for len(p.queue) > 0 && p.fitsLocked(p.queue[0].d) {
		w := p.queue[0]
		p.queue = p.queue[1:]
		p.grantLocked(w)
	}
}

func (p *pool) describeLocked(d demand, ahead int) string {
	s := fmt.Sprintf("it needs %d mCPU and %d MiB (taskSpec.computeResource, 2000 and 2000 when unset, as on Batch); this node offers %d mCPU and %d MiB (capacity %d mCPU, %d MiB, overcommit %g), of which %d mCPU and %d MiB are taken by %d running task(s)",
		d.cpu, d.mem, p.cpu, p.mem, p.cfg.CPUMilli, p.cfg.MemoryMiB, p.cfg.Overcommit, p.used.cpu, p.used.mem, p.running)
	if ahead > 0 {
		s += fmt.Sprintf(", and %d task(s) wait before it", ahead)
	}
	return s
}
