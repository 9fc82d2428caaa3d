package nearcacheotel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/nearcache/nearcache/tiered"
)

// checkAttrs asserts that span has exactly the attributes want (and
// error.type when want has it).
func checkAttrs(t *testing.T, span sdktrace.ReadOnlySpan, want map[attribute.Key]attribute.Value) {
	t.Helper()
	got := attrs(span.Attributes())
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: attribute %s = %v (present %v), want %v", span.Name(), k, g.Emit(), ok, v.Emit())
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected attribute %s = %v", span.Name(), k, v.Emit())
		}
	}
}

// One "nearcache.load" span per loader call, whatever the number of callers
// that joined it: the child of the callers' span (the load is detached from
// their cancellation, not from their values), the parent of the loader's
// own spans, with the cache, batch, key count, not-found and coalesced
// attributes and no keys. An L1 hit afterwards adds no span.
func TestLoadSpan(t *testing.T) {
	tp, rec := newTracer(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "spans",
		Observer: NewObserver(WithTracerProvider(tp), WithMeterProvider(metricnoop.NewMeterProvider()))})
	callerCtx, caller := tp.Tracer("test").Start(context.Background(), "caller")
	// Cancelled when the callers return: the load runs detached from it.
	callerCtx, cancel := context.WithCancel(callerCtx)
	defer cancel()

	gate := make(chan struct{})
	var calls atomic.Int32
	var loaderSpan atomic.Value // the SpanContext in the loader's ctx
	loader := func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		loaderSpan.Store(trace.SpanContextFromContext(ctx))
		<-gate
		return "v-" + key, nil
	}
	const joiners = 3
	var wg sync.WaitGroup
	for range joiners + 1 {
		wg.Go(func() {
			if v, err := c.GetOrLoad(callerCtx, "user:1", loader); err != nil || v != "v-user:1" {
				t.Errorf("GetOrLoad: %q %v", v, err)
			}
		})
	}
	eventually(t, "every caller waiting on the flight", func() bool { return c.Stats().Loads.Callers == joiners+1 })
	close(gate)
	wg.Wait()
	caller.End()

	loads := spansNamed(rec, nameLoadSpan)
	if len(loads) != 1 || calls.Load() != 1 {
		t.Fatalf("%d load spans for %d loader calls, want 1 and 1", len(loads), calls.Load())
	}
	s := loads[0]
	if s.Parent().SpanID() != caller.SpanContext().SpanID() || s.SpanContext().TraceID() != caller.SpanContext().TraceID() {
		t.Errorf("load span's parent %v, want the caller's span %v", s.Parent().SpanID(), caller.SpanContext().SpanID())
	}
	if got, _ := loaderSpan.Load().(trace.SpanContext); !got.Equal(s.SpanContext()) {
		t.Errorf("the loader's ctx carries span %v, want the load span %v", got.SpanID(), s.SpanContext().SpanID())
	}
	if s.SpanKind() != trace.SpanKindInternal {
		t.Errorf("span kind %v, want internal", s.SpanKind())
	}
	if s.Status().Code != codes.Unset || len(s.Events()) != 0 {
		t.Errorf("status %+v, events %v, want neither for a successful load", s.Status(), s.Events())
	}
	if s.InstrumentationScope().Name != ScopeName {
		t.Errorf("scope %q, want %q", s.InstrumentationScope().Name, ScopeName)
	}
	checkAttrs(t, s, map[attribute.Key]attribute.Value{
		CacheKey:     attribute.StringValue("spans"),
		BatchKey:     attribute.BoolValue(false),
		KeyCountKey:  attribute.IntValue(1),
		NotFoundKey:  attribute.IntValue(0),
		CoalescedKey: attribute.IntValue(joiners),
	})

	// L1 hits (the fill may take a moment to become one): no span at all.
	started := len(rec.Started())
	before := c.Stats().L1.Hits
	eventually(t, "an L1 hit", func() bool {
		if _, err := c.GetOrLoad(context.Background(), "user:1", loader); err != nil {
			t.Fatal(err)
		}
		return c.Stats().L1.Hits > before
	})
	for range 100 {
		if _, err := c.GetOrLoad(callerCtx, "user:1", loader); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(rec.Started()); got != started {
		t.Errorf("%d spans started by reads after the fill, want none", got-started)
	}
	if calls.Load() != 1 {
		t.Errorf("loader called %d times, want 1", calls.Load())
	}
}

// A batch load reports its keys' count and its not-found keys; a failing
// load has the Error status, an exception event and error.type; a
// not-found result is no error.
func TestLoadSpanBatchAndErrors(t *testing.T) {
	ctx := context.Background()
	tp, rec := newTracer(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "batch",
		Observer: NewObserver(WithTracerProvider(tp), WithMeterProvider(metricnoop.NewMeterProvider()))})

	got, err := c.GetManyOrLoad(ctx, []string{"a", "b", "c"}, func(context.Context, []string) (map[string]string, error) {
		return map[string]string{"a": "1", "c": "3"}, nil
	})
	if err != nil || len(got) != 2 {
		t.Fatalf("GetManyOrLoad: %v %v", got, err)
	}
	boom := errors.New("db down")
	if _, err := c.GetOrLoad(ctx, "x", func(context.Context, string) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("failing load: %v", err)
	}
	if _, err := c.GetOrLoad(ctx, "gone", func(context.Context, string) (string, error) { return "", tiered.ErrNotFound }); !errors.Is(err, tiered.ErrNotFound) {
		t.Fatalf("not-found load: %v", err)
	}

	loads := spansNamed(rec, nameLoadSpan)
	if len(loads) != 3 {
		t.Fatalf("%d load spans, want 3", len(loads))
	}
	batch, failed, notFound := loads[0], loads[1], loads[2]
	if batch.Parent().IsValid() {
		t.Errorf("batch span has parent %v with no span in the caller's ctx", batch.Parent())
	}
	checkAttrs(t, batch, map[attribute.Key]attribute.Value{
		CacheKey:     attribute.StringValue("batch"),
		BatchKey:     attribute.BoolValue(true),
		KeyCountKey:  attribute.IntValue(3),
		NotFoundKey:  attribute.IntValue(1),
		CoalescedKey: attribute.IntValue(0),
	})

	if st := failed.Status(); st.Code != codes.Error || !strings.Contains(st.Description, "db down") {
		t.Errorf("failed load status %+v, want Error with the loader's message", st)
	}
	if ev := failed.Events(); len(ev) != 1 || ev[0].Name != "exception" {
		t.Errorf("failed load events %v, want one exception", ev)
	}
	checkAttrs(t, failed, map[attribute.Key]attribute.Value{
		CacheKey:     attribute.StringValue("batch"),
		BatchKey:     attribute.BoolValue(false),
		KeyCountKey:  attribute.IntValue(1),
		NotFoundKey:  attribute.IntValue(0),
		CoalescedKey: attribute.IntValue(0),
		"error.type": attribute.StringValue("*errors.errorString"),
	})

	if st := notFound.Status(); st.Code != codes.Unset {
		t.Errorf("not-found load status %+v, want unset", st)
	}
	if n := attrs(notFound.Attributes())[NotFoundKey]; n.AsInt64() != 1 {
		t.Errorf("not-found load: %s = %v, want 1", NotFoundKey, n.Emit())
	}
}

// Writes that go to Redis have a span each, the child of the caller's
// span, with the key count (none for clear); a write's error sets the
// Error status.
func TestWriteSpans(t *testing.T) {
	tp, rec := newTracer(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "writes",
		Observer: NewObserver(WithTracerProvider(tp), WithMeterProvider(metricnoop.NewMeterProvider()))})
	ctx, caller := tp.Tracer("test").Start(context.Background(), "caller")

	steps := []struct {
		name  string
		count int // KeyCountKey; -1: none
		write func() error
	}{
		{nameSetSpan, 1, func() error { return c.Set(ctx, "k", "v") }},
		{nameSetSpan, 2, func() error { return c.SetMany(ctx, map[string]string{"x": "1", "y": "2"}) }},
		{nameDeleteSpan, 1, func() error { return c.Delete(ctx, "k") }},
		{nameDeleteSpan, 2, func() error { return c.Delete(ctx, "x", "y") }},
		{nameClearSpan, -1, func() error { return c.Clear(ctx) }},
	}
	for _, s := range steps {
		if err := s.write(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	ended := rec.Ended()
	if len(ended) != len(steps) {
		t.Fatalf("%d spans, want %d", len(ended), len(steps))
	}
	for i, s := range steps {
		span := ended[i]
		if span.Name() != s.name {
			t.Errorf("span %d is %q, want %q", i, span.Name(), s.name)
			continue
		}
		if span.Parent().SpanID() != caller.SpanContext().SpanID() {
			t.Errorf("%s: parent %v, want the caller's span", s.name, span.Parent().SpanID())
		}
		if span.Status().Code != codes.Unset {
			t.Errorf("%s: status %+v, want unset", s.name, span.Status())
		}
		want := map[attribute.Key]attribute.Value{CacheKey: attribute.StringValue("writes")}
		if s.count >= 0 {
			want[KeyCountKey] = attribute.IntValue(s.count)
		}
		checkAttrs(t, span, want)
	}

	if err := c.Set(ctx, "v", "2", tiered.WithVersion(2)); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "v", "1", tiered.WithVersion(1)); !errors.Is(err, tiered.ErrStale) {
		t.Fatalf("older version: %v, want ErrStale", err)
	}
	stale := spansNamed(rec, nameSetSpan)
	last := stale[len(stale)-1]
	if st := last.Status(); st.Code != codes.Error || st.Description == "" {
		t.Errorf("refused Set: status %+v, want Error with its message", st)
	}
	if _, ok := attrs(last.Attributes())["error.type"]; !ok {
		t.Error("refused Set has no error.type")
	}
	caller.End()
}

// WithKeys records the keys: all of a small load or write, the first
// MaxSpanKeys of a large batch.
func TestWithKeys(t *testing.T) {
	ctx := context.Background()
	tp, rec := newTracer(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "keys",
		Observer: NewObserver(WithTracerProvider(tp), WithMeterProvider(metricnoop.NewMeterProvider()), WithKeys())})

	if _, err := c.GetOrLoad(ctx, "user:1", func(context.Context, string) (string, error) { return "v", nil }); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, MaxSpanKeys+4)
	for i := range keys {
		keys[i] = fmt.Sprintf("item:%02d", i)
	}
	if _, err := c.GetManyOrLoad(ctx, keys, func(_ context.Context, ks []string) (map[string]string, error) {
		out := make(map[string]string, len(ks))
		for _, k := range ks {
			out[k] = "v"
		}
		return out, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "user:2", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.Clear(ctx); err != nil {
		t.Fatal(err)
	}

	loads := spansNamed(rec, nameLoadSpan)
	if len(loads) != 2 {
		t.Fatalf("%d load spans, want 2", len(loads))
	}
	if got := attrs(loads[0].Attributes())[KeysKey].AsStringSlice(); !slices.Equal(got, []string{"user:1"}) {
		t.Errorf("single load keys %q, want [user:1]", got)
	}
	a := attrs(loads[1].Attributes())
	got := a[KeysKey].AsStringSlice()
	if len(got) != MaxSpanKeys || a[KeyCountKey].AsInt64() != int64(len(keys)) {
		t.Errorf("batch of %d: %d keys recorded, key count %d; want %d and %d", len(keys), len(got), a[KeyCountKey].AsInt64(), MaxSpanKeys, len(keys))
	}
	for _, k := range got {
		if !slices.Contains(keys, k) {
			t.Errorf("batch span records %q, not one of its keys", k)
		}
	}
	if sets := spansNamed(rec, nameSetSpan); len(sets) != 1 || !slices.Equal(attrs(sets[0].Attributes())[KeysKey].AsStringSlice(), []string{"user:2"}) {
		t.Errorf("Set span keys: %v", sets)
	}
	if clears := spansNamed(rec, nameClearSpan); len(clears) != 1 || attrs(clears[0].Attributes())[KeysKey].Type() != attribute.INVALID {
		t.Errorf("Clear span: %v, want one without keys", clears)
	}
}

// Without WithKeys, no span attribute holds a key.
func TestNoKeysByDefault(t *testing.T) {
	ctx := context.Background()
	tp, rec := newTracer(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "nokeys",
		Observer: NewObserver(WithTracerProvider(tp), WithMeterProvider(metricnoop.NewMeterProvider()))})
	if _, err := c.GetOrLoad(ctx, "secret-key", func(context.Context, string) (string, error) { return "v", nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetManyOrLoad(ctx, []string{"secret-a", "secret-b"}, func(context.Context, []string) (map[string]string, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "secret-set", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "secret-del"); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Ended()); n != 4 {
		t.Fatalf("%d spans, want 4", n)
	}
	for _, s := range rec.Ended() {
		for _, kv := range s.Attributes() {
			if kv.Key == KeysKey || strings.Contains(kv.Value.Emit(), "secret") {
				t.Errorf("%s has %s = %s without WithKeys", s.Name(), kv.Key, kv.Value.Emit())
			}
		}
	}
}

// nearcache.load.duration is a true histogram of the loader calls, with
// the core's buckets: its counts and sum are those of the cache's own
// loader histogram, and failed loads carry error.type.
func TestLoadDurationHistogram(t *testing.T) {
	ctx := context.Background()
	mp, reader := newMeter(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "hist",
		Observer: NewObserver(WithTracerProvider(tracenoop.NewTracerProvider()), WithMeterProvider(mp))})
	ok := func(context.Context, string) (string, error) { return "v", nil }
	for _, k := range []string{"a", "b"} {
		if _, err := c.GetOrLoad(ctx, k, ok); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("db down")
	if _, err := c.GetOrLoad(ctx, "c", func(context.Context, string) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("failing load: %v", err)
	}

	m, found := collect(t, reader)[nameLoadDuration]
	if !found {
		t.Fatalf("no %s", nameLoadDuration)
	}
	if m.Unit != "s" {
		t.Errorf("unit %q, want s", m.Unit)
	}
	h, isHist := m.Data.(metricdata.Histogram[float64])
	if !isHist || len(h.DataPoints) != 2 {
		t.Fatalf("%s: %T with %d points, want a histogram with 2 (success, failure)", nameLoadDuration, m.Data, len(h.DataPoints))
	}
	st := c.Stats().Loads.LatencyHistogram
	wantBounds := make([]float64, len(st.Bounds))
	for i, b := range st.Bounds {
		wantBounds[i] = b.Seconds()
	}
	var count uint64
	var sum float64
	buckets := make([]uint64, len(wantBounds)+1)
	for _, dp := range h.DataPoints {
		if !slices.Equal(dp.Bounds, wantBounds) {
			t.Errorf("bounds %v, want the core's %v", dp.Bounds, wantBounds)
		}
		want := attrSet("hist")
		if dp.Count == 1 {
			want = attrSet("hist", attribute.String("error.type", "*errors.errorString"))
		}
		if !dp.Attributes.Equals(&want) {
			t.Errorf("point of count %d has attributes %v, want %v", dp.Count, dp.Attributes.ToSlice(), want.ToSlice())
		}
		count += dp.Count
		sum += dp.Sum
		for i, n := range dp.BucketCounts {
			buckets[i] += n
		}
	}
	if count != 3 || count != st.Count {
		t.Errorf("%d loads recorded, want 3 (Stats: %d)", count, st.Count)
	}
	if math.Abs(sum-st.Sum.Seconds()) > 1e-6 {
		t.Errorf("sum %vs, want the Stats' %vs", sum, st.Sum.Seconds())
	}
	var cum uint64
	for i := range st.Counts {
		cum += buckets[i]
		if cum != st.Counts[i] {
			t.Errorf("at most %v: %d loads, want the Stats' %d", st.Bounds[i], cum, st.Counts[i])
		}
	}
}

// A loader that panics or exits through runtime.Goexit still ends its
// load span, with the Error status (the *tiered.PanicError its callers
// get, for a panic), and records its duration: no span is left open.
func TestLoadSpanEndedOnPanicAndGoexit(t *testing.T) {
	for _, ctxCase := range []struct {
		name string
		ctx  func(*testing.T) context.Context
	}{
		{"inline", func(*testing.T) context.Context { return context.Background() }},
		{"detached", func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			return ctx
		}},
	} {
		for _, how := range []string{"panic", "goexit"} {
			t.Run(ctxCase.name+"/"+how, func(t *testing.T) {
				ctx := ctxCase.ctx(t)
				tp, rec := newTracer(t)
				mp, reader := newMeter(t)
				c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "dying",
					Observer: NewObserver(WithTracerProvider(tp), WithMeterProvider(mp))})
				die := func() {
					if how == "panic" {
						panic("loader bug")
					}
					runtime.Goexit()
				}
				if _, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { die(); return "", nil }); err == nil {
					t.Fatal("GetOrLoad of a dying loader: no error")
				}
				if _, err := c.GetManyOrLoad(ctx, []string{"a", "b"}, func(context.Context, []string) (map[string]string, error) {
					die()
					return nil, nil
				}); err == nil {
					t.Fatal("GetManyOrLoad of a dying loader: no error")
				}
				if started, ended := len(rec.Started()), len(rec.Ended()); started != 2 || ended != 2 {
					t.Fatalf("%d load spans started, %d ended; want 2 and 2", started, ended)
				}
				for _, s := range spansNamed(rec, nameLoadSpan) {
					if s.Status().Code != codes.Error {
						t.Errorf("span %v: status %+v, want Error", attrs(s.Attributes())[BatchKey].Emit(), s.Status())
					}
					if how == "panic" && !strings.Contains(s.Status().Description, "loader bug") {
						t.Errorf("status description %q, want the panic value", s.Status().Description)
					}
				}
				h := collect(t, reader)[nameLoadDuration].Data.(metricdata.Histogram[float64])
				var count uint64
				for _, dp := range h.DataPoints {
					count += dp.Count
				}
				if count != 2 {
					t.Errorf("%d load durations recorded, want 2", count)
				}
			})
		}
	}
}

// Two Observers joined: each ends its own span, even though the second's
// is the one in the ctx that LoadDone and WriteDone get; the second's
// span is the child of the first's.
func TestJoinedObservers(t *testing.T) {
	ctx := context.Background()
	tp1, rec1 := newTracer(t)
	tp2, rec2 := newTracer(t)
	noMeter := WithMeterProvider(metricnoop.NewMeterProvider())
	obs := tiered.JoinObservers(NewObserver(WithTracerProvider(tp1), noMeter), NewObserver(WithTracerProvider(tp2), noMeter))
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "joined", Observer: obs})
	if _, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "v", nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "k", "w"); err != nil {
		t.Fatal(err)
	}
	for i, rec := range []interface {
		Started() []sdktrace.ReadWriteSpan
		Ended() []sdktrace.ReadOnlySpan
	}{rec1, rec2} {
		if s, e := len(rec.Started()), len(rec.Ended()); s != 2 || e != 2 {
			t.Errorf("observer %d: %d spans started, %d ended; want 2 and 2", i+1, s, e)
		}
	}
	first, second := spansNamed(rec1, nameLoadSpan), spansNamed(rec2, nameLoadSpan)
	if len(first) == 1 && len(second) == 1 && second[0].Parent().SpanID() != first[0].SpanContext().SpanID() {
		t.Errorf("second observer's load span has parent %v, want the first's %v", second[0].Parent().SpanID(), first[0].SpanContext().SpanID())
	}
}

// With no-op providers (the global ones until an SDK is installed), a
// load's LoadStart and LoadDone allocate only the two ctx layers that carry
// the span (the tracer's and the observer's own key): the cache attribute's
// options are built once per namespace and the other attributes only for a
// recording span.
func TestObserverAllocs(t *testing.T) {
	obs := NewObserver(WithTracerProvider(tracenoop.NewTracerProvider()), WithMeterProvider(metricnoop.NewMeterProvider()))
	ctx := context.Background()
	keys := []string{"k"}
	load := func() {
		obs.LoadDone(obs.LoadStart(ctx, tiered.LoadStartEvent{Namespace: "allocs", Keys: keys}),
			tiered.LoadDoneEvent{Namespace: "allocs", Keys: keys})
	}
	write := func() {
		obs.WriteDone(obs.WriteStart(ctx, tiered.WriteStartEvent{Namespace: "allocs", Op: "set", Keys: keys}),
			tiered.WriteDoneEvent{Namespace: "allocs", Op: "set", Keys: keys})
	}
	for name, f := range map[string]func(){"load": load, "write": write} {
		if allocs := testing.AllocsPerRun(1000, f); allocs > 2 {
			t.Errorf("a %s's hooks allocate %v times with no-op providers, want at most 2", name, allocs)
		}
	}
}

// BenchmarkObserverLoad is the cost of a load's hooks (LoadStart and
// LoadDone) on the miss path, with no-op providers and with the SDK's
// (spans sampled and dropped, the histogram aggregated).
func BenchmarkObserverLoad(b *testing.B) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	for _, bc := range []struct {
		name string
		obs  *tiered.Observer
	}{
		{"noop", NewObserver(WithTracerProvider(tracenoop.NewTracerProvider()), WithMeterProvider(metricnoop.NewMeterProvider()))},
		{"sdk", NewObserver(WithTracerProvider(tp), WithMeterProvider(mp))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			keys := []string{"k"}
			b.ReportAllocs()
			for b.Loop() {
				bc.obs.LoadDone(bc.obs.LoadStart(ctx, tiered.LoadStartEvent{Namespace: "bench", Keys: keys}),
					tiered.LoadDoneEvent{Namespace: "bench", Keys: keys})
			}
		})
	}
}
