package cache

import "github.com/prometheus/client_golang/prometheus"

// Stats is a snapshot of the cache's counters (since Open) and gauges.
type Stats struct {
	// Hits counts Get and Fill calls that found the entry stored.
	Hits int64
	// Misses counts Get and Fill calls that did not (a Fill that waits on
	// another's fill is a miss too).
	Misses int64
	// Fills counts fill functions that succeeded and stored an entry.
	Fills int64
	// FillErrors counts fills that failed (fill error, digest or size
	// mismatch, cancellation, I/O), storing nothing.
	FillErrors int64
	// Evictions counts entries evicted to honour MaxBytes, EvictedBytes
	// their total size.
	Evictions    int64
	EvictedBytes int64
	// Corrupt counts entries dropped because VerifyOnLoad found their
	// content did not match their digest.
	Corrupt int64
	// Unsynced counts span entries dropped at Open because the previous
	// owner ended uncleanly after storing them (see Options.NoSync).
	Unsynced int64
	// InFlight is the number of fills running now.
	InFlight int64
	// Entries and Bytes are what the cache holds now, Pinned and
	// PinnedBytes the part of it open by readers (never evicted).
	Entries     int64
	Bytes       int64
	Pinned      int64
	PinnedBytes int64
	// MaxBytes is the configured limit (0 = unlimited).
	MaxBytes int64
}

// Stats returns a snapshot of the counters. It walks the entries to count
// pinned ones, so it is meant for metrics scrapes, not hot paths.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = int64(len(c.entries))
	s.Bytes = c.bytes
	s.MaxBytes = c.opts.MaxBytes
	for _, e := range c.entries {
		if e.pins > 0 {
			s.Pinned++
			s.PinnedBytes += e.size
		}
	}
	return s
}

// Collector returns a Prometheus collector exporting Stats as
// riffle_cache_* metrics, for `riffle serve` (or a node daemon) to register:
//
//	reg.MustRegister(c.Collector())
func (c *Cache) Collector() prometheus.Collector { return collector{c} }

type collector struct{ c *Cache }

type metric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(Stats) int64
}

func newMetric(name, help string, typ prometheus.ValueType, v func(Stats) int64) metric {
	return metric{prometheus.NewDesc("riffle_cache_"+name, help, nil, nil), typ, v}
}

var metrics = []metric{
	newMetric("hits_total", "Lookups that found the entry in the node cache.", prometheus.CounterValue, func(s Stats) int64 { return s.Hits }),
	newMetric("misses_total", "Lookups that did not find the entry in the node cache.", prometheus.CounterValue, func(s Stats) int64 { return s.Misses }),
	newMetric("fills_total", "Entries filled and stored.", prometheus.CounterValue, func(s Stats) int64 { return s.Fills }),
	newMetric("fill_errors_total", "Fills that failed and stored nothing.", prometheus.CounterValue, func(s Stats) int64 { return s.FillErrors }),
	newMetric("evictions_total", "Entries evicted to stay within the size limit.", prometheus.CounterValue, func(s Stats) int64 { return s.Evictions }),
	newMetric("evicted_bytes_total", "Bytes evicted to stay within the size limit.", prometheus.CounterValue, func(s Stats) int64 { return s.EvictedBytes }),
	newMetric("unsynced_dropped_total", "Span entries dropped at open because they were stored after the last sync before an unclean end.", prometheus.CounterValue, func(s Stats) int64 { return s.Unsynced }),
	newMetric("corrupt_total", "Entries dropped because their content did not match their digest.", prometheus.CounterValue, func(s Stats) int64 { return s.Corrupt }),
	newMetric("inflight_fills", "Fills running now.", prometheus.GaugeValue, func(s Stats) int64 { return s.InFlight }),
	newMetric("entries", "Entries stored.", prometheus.GaugeValue, func(s Stats) int64 { return s.Entries }),
	newMetric("bytes", "Bytes stored.", prometheus.GaugeValue, func(s Stats) int64 { return s.Bytes }),
	newMetric("pinned_bytes", "Bytes of entries open by readers, which cannot be evicted.", prometheus.GaugeValue, func(s Stats) int64 { return s.PinnedBytes }),
	newMetric("max_bytes", "Configured size limit in bytes (0 = unlimited).", prometheus.GaugeValue, func(s Stats) int64 { return s.MaxBytes }),
}

// Describe implements prometheus.Collector.
func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range metrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector.
func (col collector) Collect(ch chan<- prometheus.Metric) {
	s := col.c.Stats()
	for _, m := range metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, float64(m.value(s)))
	}
}
