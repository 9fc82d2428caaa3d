package nearcacheotel_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	nearcacheotel "github.com/nearcache/nearcache/contrib/otel"
	"github.com/nearcache/nearcache/tiered"
)

// A cache traced and measured: NewObserver goes into the Config, and
// RegisterMetrics reads the cache's Stats at each collection. Here the SDK
// keeps spans in memory and metrics in a manual reader; a service would
// install exporters (OTLP, Prometheus) instead.
func Example() {
	mr, err := miniredis.Run() // a real Redis in production
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	users, err := tiered.New(tiered.Config[string]{
		Redis:     rdb,
		Namespace: "users",
		Observer:  nearcacheotel.NewObserver(nearcacheotel.WithTracerProvider(tp), nearcacheotel.WithMeterProvider(mp)),
	})
	if err != nil {
		panic(err)
	}
	defer users.Close()
	reg, err := nearcacheotel.RegisterMetrics(mp, users)
	if err != nil {
		panic(err)
	}
	defer reg.Unregister()

	ctx, req := tp.Tracer("app").Start(context.Background(), "GET /users/42")
	name, err := users.GetOrLoad(ctx, "42", func(ctx context.Context, id string) (string, error) {
		return "Ada", nil // a database query, traced under nearcache.load with ctx
	})
	req.End()
	fmt.Println(name, err)

	for _, s := range spans.Ended() {
		if s.InstrumentationScope().Name == nearcacheotel.ScopeName {
			fmt.Printf("span %q, child of the request: %v\n", s.Name(), s.Parent().SpanID() == req.SpanContext().SpanID())
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		panic(err)
	}
	byName := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			byName[m.Name] = m
		}
	}
	calls := byName["nearcache.load.calls"]
	fmt.Printf("nearcache.load.calls = %d %s\n", calls.Data.(metricdata.Sum[int64]).DataPoints[0].Value, calls.Unit)
	hist := byName["nearcache.load.duration"].Data.(metricdata.Histogram[float64])
	fmt.Printf("nearcache.load.duration: %d load in its histogram\n", hist.DataPoints[0].Count)
	// Output:
	// Ada <nil>
	// span "nearcache.load", child of the request: true
	// nearcache.load.calls = 1 {call}
	// nearcache.load.duration: 1 load in its histogram
}
