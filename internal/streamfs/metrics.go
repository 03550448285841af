package streamfs

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type metrics struct {
	bytes, spans, hits, misses, errors, corrupt, passthrough prometheus.Counter
	latency                                                  prometheus.Histogram
	all                                                      []prometheus.Collector
}

func newMetrics(dir, image string) *metrics {
	labels := prometheus.Labels{"mount": dir, "image": image}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "riffle", Subsystem: "streamfs", Name: name, Help: help, ConstLabels: labels,
		})
	}
	m := &metrics{
		bytes:       counter("fetched_bytes_total", "Uncompressed bytes of spans fetched from the registry."),
		spans:       counter("fetched_spans_total", "Spans fetched from the registry (and verified)."),
		hits:        counter("cache_hits_total", "Spans and whole files found in the node cache."),
		misses:      counter("cache_misses_total", "Spans not in the node cache when read."),
		errors:      counter("fetch_errors_total", "Failed span fetches, retried ones included."),
		corrupt:     counter("fetch_corrupt_total", "Span fetches whose data failed verification."),
		passthrough: counter("passthrough_opens_total", "Opens served by FUSE passthrough from a whole file in the cache."),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "riffle", Subsystem: "streamfs", Name: "fetch_seconds",
			Help:        "Latency of successful span fetches (request, decompression, verification).",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
	}
	m.all = []prometheus.Collector{m.bytes, m.spans, m.hits, m.misses, m.errors, m.corrupt, m.passthrough, m.latency}
	return m
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.all {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.all {
		c.Collect(ch)
	}
}

// Collector exports the mount's counters as riffle_streamfs_*, labelled
// with the mount point and the image name. Register it when mounting and
// unregister it after Unmount.
func (m *MountPoint) Collector() prometheus.Collector { return m.metrics }

// Stats are a mount's counters since it was mounted.
type Stats struct {
	// FetchedBytes and FetchedSpans count verified spans fetched from the
	// registry (uncompressed bytes).
	FetchedBytes, FetchedSpans int64
	// CacheHits counts spans and whole files found in the cache;
	// CacheMisses spans that were not.
	CacheHits, CacheMisses int64
	// FetchErrors counts failed fetches (each retry counts); Corrupt those
	// whose data failed verification.
	FetchErrors, Corrupt int64
	// PassthroughOpens counts opens of files found whole in the cache,
	// whose reads the kernel serves from the cache file directly.
	PassthroughOpens int64
}

// Stats returns the mount's counters.
func (m *MountPoint) Stats() Stats {
	return Stats{
		FetchedBytes:     int64(value(m.metrics.bytes)),
		FetchedSpans:     int64(value(m.metrics.spans)),
		CacheHits:        int64(value(m.metrics.hits)),
		CacheMisses:      int64(value(m.metrics.misses)),
		FetchErrors:      int64(value(m.metrics.errors)),
		Corrupt:          int64(value(m.metrics.corrupt)),
		PassthroughOpens: int64(value(m.metrics.passthrough)),
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}
