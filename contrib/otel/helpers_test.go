package nearcacheotel

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

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

// newMeter returns a MeterProvider read by a ManualReader, shut down at
// the end of the test.
func newMeter(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, reader
}

// newTracer returns a TracerProvider whose ended spans the recorder holds.
func newTracer(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// collected is one collection, indexed by instrument name (this package's
// scope only).
type collected map[string]metricdata.Metrics

func collect(t *testing.T, r *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	out := collected{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// points counts every data point.
func (c collected) points() int {
	n := 0
	for _, m := range c {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			n += len(d.DataPoints)
		case metricdata.Gauge[int64]:
			n += len(d.DataPoints)
		case metricdata.Gauge[float64]:
			n += len(d.DataPoints)
		case metricdata.Histogram[float64]:
			n += len(d.DataPoints)
		}
	}
	return n
}

// attrSet is the attribute set of a data point: the cache's, plus kvs.
func attrSet(ns string, kvs ...attribute.KeyValue) attribute.Set {
	return attribute.NewSet(append([]attribute.KeyValue{CacheKey.String(ns)}, kvs...)...)
}

// int64Point returns the value of the Int64 data point of name with the
// attributes set, and whether there is one.
func (c collected) int64Point(name string, set attribute.Set) (int64, bool) {
	var dps []metricdata.DataPoint[int64]
	switch d := c[name].Data.(type) {
	case metricdata.Sum[int64]:
		dps = d.DataPoints
	case metricdata.Gauge[int64]:
		dps = d.DataPoints
	}
	for _, dp := range dps {
		if dp.Attributes.Equals(&set) {
			return dp.Value, true
		}
	}
	return 0, false
}

func (c collected) float64Point(name string, set attribute.Set) (float64, bool) {
	d, _ := c[name].Data.(metricdata.Gauge[float64])
	for _, dp := range d.DataPoints {
		if dp.Attributes.Equals(&set) {
			return dp.Value, true
		}
	}
	return 0, false
}

// mustInt64 is int64Point; the test fails if the point is missing.
func (c collected) mustInt64(t *testing.T, name string, set attribute.Set) int64 {
	t.Helper()
	v, ok := c.int64Point(name, set)
	if !ok {
		t.Fatalf("no data point %s %v", name, set.ToSlice())
	}
	return v
}

func (c collected) mustFloat64(t *testing.T, name string, set attribute.Set) float64 {
	t.Helper()
	v, ok := c.float64Point(name, set)
	if !ok {
		t.Fatalf("no data point %s %v", name, set.ToSlice())
	}
	return v
}

// attrs indexes a span's attributes by key.
func attrs(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

// spansNamed returns the ended spans called name.
func spansNamed(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}
