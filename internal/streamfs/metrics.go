package streamfs

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type metrics struct {
	bytes, spans, hits, misses, errors, corrupt, passthrough prometheus.Counter
	spanWire, bgWire, bgBytes, bgCached, bgFiles, bgErrors   prometheus.Counter
	pauses, streamWaits, localOpens, localReads, bgChunks    prometheus.Counter
	bgRuns, missRuns                                         prometheus.Counter
	profileSpans, profileBytes, profileHits                  prometheus.Counter
	hintSpans                                                prometheus.Counter
	packs, packSpans, packBytes, packWire, packWaits         prometheus.Counter
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
		bytes:        counter("fetched_bytes_total", "Uncompressed bytes of spans fetched from the registry."),
		spanWire:     counter("span_wire_bytes_total", "Compressed bytes fetched from the registry by range requests for spans."),
		bgWire:       counter("background_wire_bytes_total", "Compressed bytes fetched from the registry by the background layer streams."),
		bgBytes:      counter("background_bytes_total", "Uncompressed bytes of layer streams extracted into the layer store."),
		bgCached:     counter("background_cached_bytes_total", "Uncompressed bytes of layer streams read from spans in the node cache instead of the registry (part of background_bytes_total)."),
		bgFiles:      counter("background_files_total", "Files the background streams made local (extracted and checked)."),
		bgErrors:     counter("background_errors_total", "Layer streams that failed (their files stay on demand)."),
		bgChunks:     counter("background_chunks_total", "Chunks (runs of spans) the background layer streams fetched, by a ranged GET each or from a run's (layers streamed in chunks)."),
		bgRuns:       counter("background_runs_total", "Ranged GETs the background layer streams read many chunks from."),
		missRuns:     counter("miss_runs_total", "Range requests that fetched the span a blocked read missed together with the spans after it the read was likely to want next."),
		pauses:       counter("background_pauses_total", "Times a background stream stopped reading to leave the link to blocked reads."),
		streamWaits:  counter("stream_waits_total", "Reads that waited for a background stream about to reach their file."),
		localOpens:   counter("local_opens_total", "Opens of files served from the layer store."),
		localReads:   counter("local_reads_total", "Reads this process served from the layer store (files not opened by passthrough)."),
		profileSpans: counter("profile_spans_total", "Spans prefetched because the startup profile lists them."),
		hintSpans:    counter("hint_spans_total", "Spans prefetched as the mount started because they hold a file the task was about to execute (Options.Hints)."),
		profileBytes: counter("profile_bytes_total", "Uncompressed bytes prefetched because the startup profile lists them."),
		profileHits:  counter("profile_hits_total", "First reads of a span that found it prefetched by the profile."),
		packs:        counter("packs_total", "Prefetch packs fetched (one request per layer)."),
		packSpans:    counter("pack_spans_total", "Spans a prefetch pack delivered into the cache (verified); profile_spans_total counts them too."),
		packBytes:    counter("pack_bytes_total", "Uncompressed bytes prefetch packs delivered into the cache."),
		packWire:     counter("pack_wire_bytes_total", "Compressed bytes read from prefetch packs."),
		packWaits:    counter("pack_waits_total", "Reads that waited for a prefetch pack about to deliver their span."),
		spans:        counter("fetched_spans_total", "Spans fetched from the registry (and verified)."),
		hits:         counter("cache_hits_total", "Spans and whole files found in the node cache."),
		misses:       counter("cache_misses_total", "Spans not in the node cache when read."),
		errors:       counter("fetch_errors_total", "Failed span fetches, retried ones included."),
		corrupt:      counter("fetch_corrupt_total", "Span fetches whose data failed verification."),
		passthrough:  counter("passthrough_opens_total", "Opens served by FUSE passthrough from a whole file in the cache."),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "riffle", Subsystem: "streamfs", Name: "fetch_seconds",
			Help:        "Latency of successful span fetches (request, decompression, verification).",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
	}
	m.all = []prometheus.Collector{
		m.bytes, m.spans, m.hits, m.misses, m.errors, m.corrupt, m.passthrough,
		m.spanWire, m.bgWire, m.bgBytes, m.bgCached, m.bgFiles, m.bgErrors,
		m.pauses, m.streamWaits, m.localOpens, m.localReads, m.bgChunks, m.bgRuns, m.missRuns,
		m.profileSpans, m.profileBytes, m.profileHits, m.hintSpans,
		m.packs, m.packSpans, m.packBytes, m.packWire, m.packWaits, m.latency,
	}
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
	// PassthroughOpens counts opens of whole files (in the layer store or
	// the cache) whose reads the kernel serves from that file directly.
	PassthroughOpens int64

	// WireBytes is every compressed byte this mount fetched: SpanWireBytes
	// by range requests for spans, BackgroundWireBytes by the layer streams
	// and PackWireBytes from prefetch packs.
	WireBytes, SpanWireBytes, BackgroundWireBytes, PackWireBytes int64
	// UncompressedBytes is every uncompressed byte made available:
	// FetchedBytes of spans, BackgroundBytes of layer streams and PackBytes
	// of prefetch packs.
	UncompressedBytes, BackgroundBytes int64
	// BackgroundCachedBytes is the part of BackgroundBytes that layer
	// streams read from spans already in the node cache (a warm node)
	// rather than from the registry.
	BackgroundCachedBytes int64
	// BackgroundFiles counts files the layer streams made local;
	// BackgroundErrors layer streams that failed.
	BackgroundFiles, BackgroundErrors int64
	// BackgroundChunks counts the chunks (runs of spans) fetched for
	// layers streamed in chunks (the rest stream with one GET each);
	// BackgroundRuns the ranged GETs many chunks were read from. Chunks
	// not read from a run were fetched with a GET each.
	BackgroundChunks, BackgroundRuns int64
	// MissRuns counts range requests that fetched a span a read was
	// blocked on together with the spans after it (see missAhead).
	MissRuns int64
	// BackgroundPauses counts times a stream stopped reading for blocked
	// reads; StreamWaits reads that waited for a stream instead of
	// fetching spans.
	BackgroundPauses, StreamWaits int64
	// LocalOpens counts opens of files in the layer store; LocalReads
	// reads of such files served by this process (not by passthrough).
	LocalOpens, LocalReads int64
	// ProfileSpans and ProfileBytes (uncompressed) count spans prefetched
	// from Options.Profile; ProfileHits first reads that found their span
	// so prefetched.
	ProfileSpans, ProfileBytes, ProfileHits int64
	// HintSpans counts spans prefetched for Options.Hints.
	HintSpans int64
	// Packs counts prefetch packs fetched; PackSpans and PackBytes
	// (uncompressed) what they delivered into the cache, a part of
	// ProfileSpans and ProfileBytes.
	Packs, PackSpans, PackBytes int64
	// PackWaits counts reads that waited for a pack about to deliver their
	// span instead of fetching it by range.
	PackWaits int64
	// FallbackReads counts reads of whole files that reached this process
	// because the kernel refused passthrough.
	FallbackReads int64
	// Layers is each layer's background stream (nil without a layer store).
	Layers []LayerProgress
}

// Stats returns the mount's counters.
func (m *MountPoint) Stats() Stats {
	v := func(c prometheus.Counter) int64 { return int64(value(c)) }
	mt := m.metrics
	st := Stats{
		FetchedBytes:          v(mt.bytes),
		FetchedSpans:          v(mt.spans),
		CacheHits:             v(mt.hits),
		CacheMisses:           v(mt.misses),
		FetchErrors:           v(mt.errors),
		Corrupt:               v(mt.corrupt),
		PassthroughOpens:      v(mt.passthrough),
		SpanWireBytes:         v(mt.spanWire),
		BackgroundWireBytes:   v(mt.bgWire),
		BackgroundBytes:       v(mt.bgBytes),
		BackgroundCachedBytes: v(mt.bgCached),
		BackgroundFiles:       v(mt.bgFiles),
		BackgroundErrors:      v(mt.bgErrors),
		BackgroundChunks:      v(mt.bgChunks),
		BackgroundRuns:        v(mt.bgRuns),
		MissRuns:              v(mt.missRuns),
		BackgroundPauses:      v(mt.pauses),
		StreamWaits:           v(mt.streamWaits),
		LocalOpens:            v(mt.localOpens),
		LocalReads:            v(mt.localReads),
		ProfileSpans:          v(mt.profileSpans),
		HintSpans:             v(mt.hintSpans),
		ProfileBytes:          v(mt.profileBytes),
		ProfileHits:           v(mt.profileHits),
		Packs:                 v(mt.packs),
		PackSpans:             v(mt.packSpans),
		PackBytes:             v(mt.packBytes),
		PackWireBytes:         v(mt.packWire),
		PackWaits:             v(mt.packWaits),
		FallbackReads:         m.fallbackReads.Load(),
		Layers:                m.layerProgress(),
	}
	st.WireBytes = st.SpanWireBytes + st.BackgroundWireBytes + st.PackWireBytes
	st.UncompressedBytes = st.FetchedBytes + st.BackgroundBytes + st.PackBytes
	return st
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}
