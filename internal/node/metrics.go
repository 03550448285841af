package node

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/riffle-dev/riffle/internal/pull"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// metrics are the node's totals over every stream mount it made, live or
// gone (a settled image's mount is dropped, its per-mount collector with
// it), and its image starts by method. They are computed at scrape time:
// the totals of dropped mounts plus the current counters of live ones.
type metrics struct {
	n *Node

	mu      sync.Mutex
	dropped streamfs.Stats     // summed over unmounted mounts
	warm    warmStats          // summed over warm-ups of images started from the layer store
	pulls   pull.Bytes         // summed over pulls
	starts  map[string]float64 // by RootFS.Method
	descs   map[string]*prometheus.Desc
}

func newMetrics(n *Node) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("riffle_node_"+name, help, labels, nil)
	}
	return &metrics{n: n, starts: map[string]float64{}, descs: map[string]*prometheus.Desc{
		"starts":       d("image_starts_total", "Root filesystems handed out, by how the image arrived (streamed, settled, pulled).", "method"),
		"wire":         d("streamed_wire_bytes_total", "Compressed bytes stream mounts fetched (by range and by background layer stream from registries, and prefetch packs)."),
		"uncompressed": d("streamed_uncompressed_bytes_total", "Uncompressed bytes stream mounts made available."),
		"profileBytes": d("profile_prefetched_bytes_total", "Uncompressed bytes prefetched from startup profiles."),
		"profileSpans": d("profile_prefetched_spans_total", "Spans prefetched from startup profiles."),
		"profileHits":  d("profile_hits_total", "First reads that found their span prefetched by a startup profile."),
		"packs":        d("packs_fetched_total", "Prefetch packs stream mounts fetched (one request per layer)."),
		"packSpans":    d("pack_spans_total", "Spans prefetch packs delivered (counted in profile_prefetched_spans_total too)."),
		"packBytes":    d("pack_bytes_total", "Uncompressed bytes prefetch packs delivered."),
		"packWire":     d("pack_wire_bytes_total", "Compressed bytes read from prefetch packs."),
		"spansRead":    d("streamed_spans_fetched_total", "Spans stream mounts fetched (profile prefetches included)."),
		"warmFiles":    d("warmed_files_total", "Files of startup profiles the kernel was asked to read into the page cache from the layer store, for images started from it (settled, or pulled after being streamed on this node)."),
		"pullWire":     d("pulled_wire_bytes_total", "Compressed bytes pulls fetched from registries (whole layers)."),
		"pullBytes":    d("pulled_uncompressed_bytes_total", "Uncompressed bytes (layer tar streams) pulls extracted."),
		"warmBytes":    d("warmed_bytes_total", "Bytes of startup profiles the kernel was asked to read into the page cache from the layer store (cached already or not)."),
	}}
}

// started counts one root filesystem handed out.
func (m *metrics) started(method string) {
	m.mu.Lock()
	m.starts[method]++
	m.mu.Unlock()
}

// warmed adds a warm-up's counts to the totals.
func (m *metrics) warmed(st warmStats) {
	m.mu.Lock()
	m.warm.files += st.files
	m.warm.bytes += st.bytes
	m.mu.Unlock()
}

// pulled adds a pull's byte counts to the totals.
func (m *metrics) pulled(b pull.Bytes) {
	m.mu.Lock()
	m.pulls.Wire += b.Wire
	m.pulls.Uncompressed += b.Uncompressed
	m.mu.Unlock()
}

// unmounted adds a mount's final counters to the totals.
func (m *metrics) unmounted(st streamfs.Stats) {
	m.mu.Lock()
	addStats(&m.dropped, st)
	m.mu.Unlock()
}

func addStats(to *streamfs.Stats, st streamfs.Stats) {
	to.WireBytes += st.WireBytes
	to.UncompressedBytes += st.UncompressedBytes
	to.ProfileBytes += st.ProfileBytes
	to.ProfileSpans += st.ProfileSpans
	to.ProfileHits += st.ProfileHits
	to.FetchedSpans += st.FetchedSpans
	to.Packs += st.Packs
	to.PackSpans += st.PackSpans
	to.PackBytes += st.PackBytes
	to.PackWireBytes += st.PackWireBytes
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.n.mu.Lock()
	live := make([]*mount, 0, len(m.n.mounts))
	for _, mt := range m.n.mounts {
		live = append(live, mt)
	}
	m.n.mu.Unlock()
	m.mu.Lock()
	total, warm, pulls := m.dropped, m.warm, m.pulls
	starts := make(map[string]float64, len(m.starts))
	for k, v := range m.starts {
		starts[k] = v
	}
	m.mu.Unlock()
	for _, mt := range live {
		addStats(&total, mt.mp.Stats())
	}
	for _, method := range []string{MethodStreamed, MethodSettled, MethodPulled} {
		ch <- prometheus.MustNewConstMetric(m.descs["starts"], prometheus.CounterValue, starts[method], method)
	}
	c := func(name string, v int64) {
		ch <- prometheus.MustNewConstMetric(m.descs[name], prometheus.CounterValue, float64(v))
	}
	c("wire", total.WireBytes)
	c("uncompressed", total.UncompressedBytes)
	c("profileBytes", total.ProfileBytes)
	c("profileSpans", total.ProfileSpans)
	c("profileHits", total.ProfileHits)
	c("spansRead", total.FetchedSpans)
	c("packs", total.Packs)
	c("packSpans", total.PackSpans)
	c("packBytes", total.PackBytes)
	c("pullWire", pulls.Wire)
	c("pullBytes", pulls.Uncompressed)
	c("packWire", total.PackWireBytes)
	c("warmFiles", int64(warm.files))
	c("warmBytes", warm.bytes)
}
