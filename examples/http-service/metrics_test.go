package main

import (
	"fmt"
	"math"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nearcache/nearcache/l2"
	"github.com/nearcache/nearcache/tiered"
)

// scrape fetches /metrics and parses it.
func (e *testEnv) scrape(t *testing.T) (body string, families map[string]*dto.MetricFamily) {
	t.Helper()
	code, ctype, body := e.do(t, http.MethodGet, "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: got status %d, want 200; body: %s", code, body)
	}
	// The text format, version 0.0.4, is what a scraper gets that asks for
	// nothing else.
	if !strings.HasPrefix(ctype, "text/plain") || !strings.Contains(ctype, "version=0.0.4") {
		t.Fatalf("GET /metrics: got Content-Type %q, want the text format (text/plain; version=0.0.4)", ctype)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return body, families
}

// series returns the metric of family name whose labels include want.
func series(t *testing.T, families map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	f, ok := families[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	t.Fatalf("/metrics has no %s%v", name, want)
	return nil
}

// checkHistogram compares an exported histogram with the Stats one.
func checkHistogram(t *testing.T, name string, got *dto.Histogram, want l2.Histogram) {
	t.Helper()
	if got.GetSampleCount() != want.Count {
		t.Errorf("%s_count: got %d, want %d", name, got.GetSampleCount(), want.Count)
	}
	if got.GetSampleSum() != want.Sum.Seconds() {
		t.Errorf("%s_sum: got %v, want %v", name, got.GetSampleSum(), want.Sum.Seconds())
	}
	buckets := got.GetBucket()
	// The text format ends with the +Inf bucket, which is the count.
	if n := len(buckets); n > 0 && math.IsInf(buckets[n-1].GetUpperBound(), 1) {
		if c := buckets[n-1].GetCumulativeCount(); c != want.Count {
			t.Errorf("%s_bucket{le=\"+Inf\"}: got %d, want %d", name, c, want.Count)
		}
		buckets = buckets[:n-1]
	}
	if len(buckets) != len(want.Bounds) {
		t.Fatalf("%s: got %d finite buckets, want %d", name, len(buckets), len(want.Bounds))
	}
	for i, b := range buckets {
		if b.GetUpperBound() != want.Bounds[i].Seconds() || b.GetCumulativeCount() != want.Counts[i] {
			t.Errorf("%s bucket %d: got le=%v count %d, want le=%v count %d", name, i,
				b.GetUpperBound(), b.GetCumulativeCount(), want.Bounds[i].Seconds(), want.Counts[i])
		}
	}
}

// TestMetrics: GET /metrics serves the text format with the cache's series,
// whose values are its Stats at that moment, and the Go and process
// collectors' series.
func TestMetrics(t *testing.T) {
	e := startService(t)
	e.traffic(t)

	var body string
	var families map[string]*dto.MetricFamily
	st := e.settled(t, func() { body, families = e.scrape(t) })

	// The whole scrape, nearcache's families and the Go and process
	// collectors', passes promlint.
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	// Every tier is there.
	for _, prefix := range []string{"nearcache_l1_", "nearcache_l2_", "nearcache_redis_", "nearcache_load", "nearcache_invalidation_", "nearcache_breaker_"} {
		found := false
		for name := range families {
			found = found || strings.HasPrefix(name, prefix)
		}
		if !found {
			t.Errorf("/metrics has no %s* family", prefix)
		}
	}

	// The exposition line itself, as the brief of /metrics promises it.
	if line := fmt.Sprintf("\nnearcache_l1_hits_total{cache=%q} %d\n", testNamespace, st.L1.Hits); !strings.Contains(body, line) {
		t.Errorf("/metrics has no line %q", strings.TrimSpace(line))
	}

	cache := map[string]string{"cache": testNamespace}
	for _, c := range []struct {
		name string
		want uint64
	}{
		{"nearcache_l1_hits_total", st.L1.Hits},
		{"nearcache_l1_misses_total", st.L1.Misses},
		{"nearcache_l2_lookups_total", st.L2.Lookups},
		{"nearcache_l2_hits_total", st.L2.Hits},
		{"nearcache_loader_calls_total", st.Loads.LoaderCalls},
		{"nearcache_negative_cached_total", st.Loads.NegativeCached},
		{"nearcache_redis_sets_total", st.L2.Store.Sets},
	} {
		if got := series(t, families, c.name, cache).GetCounter().GetValue(); got != float64(c.want) {
			t.Errorf("%s: got %v, want %d (Stats)", c.name, got, c.want)
		}
	}
	gauge := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	if got, want := series(t, families, "nearcache_invalidation_healthy", cache).GetGauge().GetValue(), gauge(st.Health.Healthy); got != want {
		t.Errorf("nearcache_invalidation_healthy: got %v, want %v (Stats)", got, want)
	}
	for _, state := range []tiered.BreakerState{tiered.BreakerClosed, tiered.BreakerOpen, tiered.BreakerHalfOpen} {
		labels := map[string]string{"cache": testNamespace, "state": state.String()}
		if got, want := series(t, families, "nearcache_breaker_state", labels).GetGauge().GetValue(), gauge(st.L2.Breaker == state); got != want {
			t.Errorf("nearcache_breaker_state%v: got %v, want %v (Stats: %s)", labels, got, want, st.L2.Breaker)
		}
	}

	for _, h := range []struct {
		name string
		want l2.Histogram
	}{
		{"nearcache_redis_round_trip_seconds", st.L2.Store.LatencyHistogram},
		{"nearcache_load_duration_seconds", st.Loads.LatencyHistogram},
		{"nearcache_invalidation_lag_seconds", st.Invalidation.LagHistogram},
	} {
		checkHistogram(t, h.name, series(t, families, h.name, cache).GetHistogram(), h.want)
	}

	// The Go and process collectors (the latter reads /proc: Linux only).
	want := []string{"go_goroutines", "go_memstats_alloc_bytes"}
	if runtime.GOOS == "linux" {
		want = append(want, "process_cpu_seconds_total", "process_resident_memory_bytes")
	}
	for _, name := range want {
		if _, ok := families[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
}
