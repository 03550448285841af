package streamfs

import "time"

// FallbackReads reports reads of whole cached files that passthrough
// should have served.
func (m *MountPoint) FallbackReads() int64 { return m.fallbackReads.Load() }

// SetMaxPackWait sets how long a read waits for a pack at most, for the
// length of a test.
func SetMaxPackWait(t interface{ Cleanup(func()) }, d time.Duration) {
	old := maxPackWait
	maxPackWait = d
	t.Cleanup(func() { maxPackWait = old })
}

// SetMaxRunBytes sets how many compressed bytes one run asks for at most,
// for the length of a test.
func SetMaxRunBytes(t interface{ Cleanup(func()) }, n int64) {
	old := maxRunBytes
	maxRunBytes = n
	t.Cleanup(func() { maxRunBytes = old })
}

// PacksDone is closed once the mount's packs are read and their spans
// counted.
func (m *MountPoint) PacksDone() <-chan struct{} { return m.packsDone }

// MissAheadAfter is how many blocked misses a mount has before each miss
// also fetches the spans after it.
const MissAheadAfter = missAheadAfter

// StreamPlanned is how far (uncompressed) layer l's stream has planned its
// fetches.
func (m *MountPoint) StreamPlanned(l int) int64 {
	return m.background.layers[l].lead.planned.Load()
}

// TurnGap is turnGap; BusyGap and BusyShare its constants.
var TurnGap = turnGap

const (
	BusyGap   = busyGap
	BusyShare = busyShare
)

// DecodePackSpan is decodePackSpan.
var DecodePackSpan = decodePackSpan

// Cached reports whether span s of layer l is in the mount's cache.
func (m *MountPoint) Cached(l, s int) bool { return m.cached(l, s) }

// MissRunsBusy reports whether a miss run is fetching or storing spans
// (a run counts its spans once they are stored).
func (m *MountPoint) MissRunsBusy() bool {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	return len(m.missRuns) > 0
}
