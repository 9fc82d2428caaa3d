package nearcacheprom

import (
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nearcache/nearcache/tiered"
)

// BenchmarkCollect is one scrape's Collect of one cache with Redis: one
// Stats and 85 constant metrics.
func BenchmarkCollect(b *testing.B) {
	s := newBenchCache(b)
	col := NewCollector(s)
	ch := make(chan prometheus.Metric, 128)
	b.ReportAllocs()
	for b.Loop() {
		col.Collect(ch)
		for len(ch) > 0 {
			<-ch
		}
	}
}

func newBenchCache(b *testing.B) *tiered.Cache[string] {
	b.Helper()
	mr := miniredis.RunT(b)
	return newCache(b, tiered.Config[string]{Redis: newClient(b, mr.Addr()), Namespace: "bench"})
}
