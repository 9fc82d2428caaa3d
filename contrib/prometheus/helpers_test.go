package nearcacheprom

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: 1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newCache(t testing.TB, cfg tiered.Config[string]) *tiered.Cache[string] {
	t.Helper()
	c, err := tiered.New(cfg)
	if err != nil {
		t.Fatalf("tiered.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// eventually polls cond, for at most 10 s, for effects that cross a
// connection (a pub/sub delivery, a server going away) and that no gate in
// the test can order.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, what, cond)
}

// gather gathers reg and indexes the families by name.
func gather(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// find returns the series of family name whose labels are exactly labels
// (name, value pairs), or nil.
func find(mfs map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		ok := true
		for i, lp := range m.GetLabel() {
			if lp.GetName() != labels[2*i] || lp.GetValue() != labels[2*i+1] {
				ok = false
				break
			}
		}
		if ok {
			return m
		}
	}
	return nil
}

// value is the value of a counter or gauge series; the test fails if the
// series is missing.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m := find(mfs, name, labels...)
	if m == nil {
		t.Fatalf("no series %s%v", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
	return 0
}

// labelValues lists the values of label in family name, sorted.
func labelValues(mfs map[string]*dto.MetricFamily, name, label string) []string {
	var out []string
	for _, m := range mfs[name].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out = append(out, lp.GetValue())
			}
		}
	}
	slices.Sort(out)
	return out
}

// scrapeValue gathers reg once and returns one series' value, for polling.
func scrapeValue(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	return value(t, gather(t, reg), name, labels...)
}

// expo renders lines of the text exposition format, for CollectAndCompare.
func expo(lines ...string) *strings.Reader {
	return strings.NewReader(strings.Join(lines, "\n") + "\n")
}
