package cache

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestCollector(t *testing.T) {
	c := open(t, t.TempDir(), Options{MaxBytes: 1 << 20})
	b := content(123, 1)
	put(t, c, dkey(b), b)
	has(c, dkey(b))
	has(c, dkey(content(1, 1)))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			got[mf.GetName()] = m.GetCounter().GetValue()
		} else {
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	if len(got) != len(metrics) {
		t.Fatalf("%d metrics gathered, want %d", len(got), len(metrics))
	}
	for name, want := range map[string]float64{
		"riffle_cache_bytes":        123,
		"riffle_cache_entries":      1,
		"riffle_cache_hits_total":   1,
		"riffle_cache_misses_total": 2,
		"riffle_cache_fills_total":  1,
		"riffle_cache_max_bytes":    1 << 20,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}
