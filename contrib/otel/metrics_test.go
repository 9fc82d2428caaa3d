package nearcacheotel

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/tiered"
)

// collectStable collects until the caches' Stats are the same just before
// and just after the collection, and returns the collection with those
// Stats (in the order of caches): every counter only grows, so the
// collection read exactly them.
func collectStable(t *testing.T, r *sdkmetric.ManualReader, caches ...tiered.StatsSource) (collected, []tiered.Stats) {
	t.Helper()
	read := func() []tiered.Stats {
		out := make([]tiered.Stats, len(caches))
		for i, c := range caches {
			out[i] = c.Stats()
		}
		return out
	}
	for range 200 {
		before := read()
		got := collect(t, r)
		after := read()
		if reflect.DeepEqual(before, after) {
			return got, after
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the Stats never stood still during a collection")
	return nil, nil
}

// checkAgainstStats asserts that every instrument of c holds what st says
// for namespace ns.
func checkAgainstStats(t *testing.T, c collected, ns string, st *tiered.Stats) {
	t.Helper()
	set := attrSet(ns)
	for _, d := range counterDefs {
		if got, want := c.mustInt64(t, d.name, set), clamp(d.value(st)); got != want {
			t.Errorf("%s = %d, want %d (Stats)", d.name, got, want)
		}
		if m := c[d.name]; m.Unit != d.unit {
			t.Errorf("%s unit %q, want %q", d.name, m.Unit, d.unit)
		}
		if sum, ok := c[d.name].Data.(metricdata.Sum[int64]); !ok || !sum.IsMonotonic || sum.Temporality != metricdata.CumulativeTemporality {
			t.Errorf("%s is %T (monotonic %v), want a cumulative monotonic Sum[int64]", d.name, c[d.name].Data, sum.IsMonotonic)
		}
	}
	for _, d := range upDownDefs {
		if got, want := c.mustInt64(t, d.name, set), d.value(st); got != want {
			t.Errorf("%s = %d, want %d (Stats)", d.name, got, want)
		}
		if sum, ok := c[d.name].Data.(metricdata.Sum[int64]); !ok || sum.IsMonotonic {
			t.Errorf("%s is %T (monotonic %v), want a non-monotonic Sum[int64]", d.name, c[d.name].Data, sum.IsMonotonic)
		}
	}
	for _, cause := range invalidation.Causes() {
		got := c.mustInt64(t, nameRepairs, attrSet(ns, CauseKey.String(cause.String())))
		if want := clamp(st.Invalidation.InvalidateAll[cause]); got != want {
			t.Errorf("%s{cause=%s} = %d, want %d", nameRepairs, cause, got, want)
		}
	}
	for _, b := range breakerStates {
		got := c.mustInt64(t, nameBreakerState, attrSet(ns, StateKey.String(b.String())))
		if want := oneIf(st.L2.Breaker == b); got != want {
			t.Errorf("%s{state=%s} = %d, want %d (breaker %s)", nameBreakerState, b, got, want, st.L2.Breaker)
		}
	}
	if got, want := c.mustInt64(t, nameHealthy, set), oneIf(st.Health.Healthy); got != want {
		t.Errorf("%s = %d, want %d", nameHealthy, got, want)
	}
	for _, r := range invalidation.AllHealthReasons() {
		got := c.mustInt64(t, nameUnhealthyReason, attrSet(ns, ReasonKey.String(r.String())))
		if want := oneIf(st.Health.Reasons&r != 0); got != want {
			t.Errorf("%s{reason=%s} = %d, want %d (reasons %q)", nameUnhealthyReason, r, got, want, st.Health.Reasons)
		}
	}
	for _, q := range []struct {
		name string
		get  func(*tiered.Stats) [5]time.Duration
		n    func(*tiered.Stats) uint64
	}{
		{nameRoundTripQ, func(s *tiered.Stats) [5]time.Duration {
			l := s.L2.Store.Latency
			return [5]time.Duration{l.P50, l.P90, l.P99, l.P999, l.Max}
		}, func(s *tiered.Stats) uint64 { return s.L2.Store.Latency.Count }},
		{nameLoadDurationQ, func(s *tiered.Stats) [5]time.Duration {
			l := s.Loads.Latency
			return [5]time.Duration{l.P50, l.P90, l.P99, l.P999, l.Max}
		}, func(s *tiered.Stats) uint64 { return s.Loads.Latency.Count }},
		{nameLagQ, func(s *tiered.Stats) [5]time.Duration {
			l := s.Invalidation.Lag
			return [5]time.Duration{l.P50, l.P90, l.P99, l.P999, l.Max}
		}, func(s *tiered.Stats) uint64 { return s.Invalidation.Lag.Count }},
	} {
		want := q.get(st)
		for i, qv := range quantiles {
			got, ok := c.float64Point(q.name, attrSet(ns, QuantileKey.String(qv)))
			switch {
			case q.n(st) == 0 && ok:
				t.Errorf("%s{quantile=%s} = %v with no observation, want no data point", q.name, qv, got)
			case q.n(st) > 0 && !ok:
				t.Errorf("%s{quantile=%s} missing after %d observations", q.name, qv, q.n(st))
			case ok && got != want[i].Seconds():
				t.Errorf("%s{quantile=%s} = %v, want %v", q.name, qv, got, want[i].Seconds())
			}
		}
	}
}

// Real caches on miniredis: after writes, reads, a load, and another
// instance's writes and clear, every instrument holds what Stats says, and
// the counts the test can predict are exact.
func TestMetricsMatchStats(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	const ns = "users"
	// No anti-entropy rounds: nothing counts in the background.
	cfg := tiered.Config[string]{Namespace: ns, AntiEntropyInterval: time.Hour}
	cfg.Redis = newClient(t, mr.Addr())
	a := newCache(t, cfg)
	cfg.Redis = newClient(t, mr.Addr())
	b := newCache(t, cfg)
	mp, reader := newMeter(t)
	reg, err := RegisterMetrics(mp, a)
	if err != nil {
		t.Fatalf("RegisterMetrics: %v", err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	eventually(t, "both invalidation streams healthy", func() bool {
		return a.Stats().Health.Healthy && b.Stats().Health.Healthy
	})

	if err := a.Set(ctx, "k1", "v1"); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k1"); err != nil || v != "v1" {
		t.Fatalf("Get k1: %q %v", v, err)
	}
	loads := 0
	loader := func(ctx context.Context, key string) (string, error) { loads++; return "loaded-" + key, nil }
	for range 3 { // a load, then L1 hits (or, for a moment after the fill, an L2 hit)
		if v, err := a.GetOrLoad(ctx, "k2", loader); err != nil || v != "loaded-k2" {
			t.Fatalf("GetOrLoad k2: %q %v", v, err)
		}
	}
	if err := b.Set(ctx, "k1", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b's two writes applied by a", func() bool { return a.Stats().Invalidation.Applied == 2 })
	if err := b.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b's clear applied by a", func() bool {
		st := a.Stats().Invalidation
		return st.InvalidateAll[invalidation.CauseClear] >= 1 && st.Own == 1
	})

	c, sts := collectStable(t, reader, a)
	st := sts[0]
	checkAgainstStats(t, c, ns, &st)

	set := attrSet(ns)
	for _, want := range []struct {
		name string
		v    int64
	}{
		{"nearcache.load.calls", 1},
		{"nearcache.load.keys", 1},
		{"nearcache.load.errors", 0},
		{"nearcache.redis.sets", 2}, // a's Set and the loaded value's write-back
		{"nearcache.redis.notifications", 1},
		{"nearcache.invalidation.own", 1},
		{"nearcache.l2.errors", 0},
		{"nearcache.breaker.opens", 0},
	} {
		if got := c.mustInt64(t, want.name, set); got != want.v {
			t.Errorf("%s = %d, want %d", want.name, got, want.v)
		}
	}
	if loads != 1 {
		t.Fatalf("loader called %d times, want 1", loads)
	}
	// Three GetOrLoad and one Get: one lookup each.
	hits, misses := c.mustInt64(t, "nearcache.l1.hits", set), c.mustInt64(t, "nearcache.l1.misses", set)
	if hits+misses != 4 || hits < 1 {
		t.Errorf("L1 hits %d + misses %d, want 4 lookups with at least one hit", hits, misses)
	}
	if got := c.mustInt64(t, "nearcache.load.callers", set); got != misses {
		t.Errorf("nearcache.load.callers = %d, want one per L1 miss (%d)", got, misses)
	}
	if got := c.mustInt64(t, nameRepairs, attrSet(ns, CauseKey.String("clear"))); got < 1 {
		t.Errorf("%s{cause=clear} = %d after another instance's Clear, want at least 1", nameRepairs, got)
	}
	if got := c.mustInt64(t, "nearcache.invalidation.applied", set); got < 3 {
		t.Errorf("nearcache.invalidation.applied = %d after another instance's set, delete and clear, want at least 3", got)
	}
	if got := c.mustInt64(t, nameBreakerState, attrSet(ns, StateKey.String("closed"))); got != 1 {
		t.Errorf("%s{state=closed} = %d, want 1", nameBreakerState, got)
	}
	if got := c.mustInt64(t, nameHealthy, set); got != 1 {
		t.Errorf("%s = %d, want 1", nameHealthy, got)
	}
	if got := c.mustFloat64(t, nameUnhealthyTime, set); got != 0 {
		t.Errorf("%s = %v while healthy, want 0", nameUnhealthyTime, got)
	}
	for _, name := range []string{nameRoundTripQ, nameLoadDurationQ, nameLagQ} {
		if got := c.mustFloat64(t, name, attrSet(ns, QuantileKey.String("1"))); got <= 0 {
			t.Errorf("%s{quantile=1} = %v, want the positive maximum", name, got)
		}
	}
	checkNoKeys(t, c, "k1", "k2")
}

// checkNoKeys asserts that no data point has an attribute other than the
// documented ones, nor a value that is one of keys.
func checkNoKeys(t *testing.T, c collected, keys ...string) {
	t.Helper()
	allowed := map[attribute.Key]bool{CacheKey: true, StateKey: true, CauseKey: true, ReasonKey: true, QuantileKey: true, "error.type": true}
	check := func(name string, set attribute.Set) {
		for _, kv := range set.ToSlice() {
			if !allowed[kv.Key] {
				t.Errorf("%s has attribute %s", name, kv.Key)
			}
			for _, k := range keys {
				if kv.Value.Emit() == k {
					t.Errorf("%s has the key %q as attribute %s", name, k, kv.Key)
				}
			}
		}
	}
	for name, m := range c {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				check(name, dp.Attributes)
			}
		case metricdata.Gauge[int64]:
			for _, dp := range d.DataPoints {
				check(name, dp.Attributes)
			}
		case metricdata.Gauge[float64]:
			for _, dp := range d.DataPoints {
				check(name, dp.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				check(name, dp.Attributes)
			}
		}
	}
}

// Redis going away: the breaker opens and the stream turns unhealthy, and
// the gauges say so, with the reasons and the time since.
func TestMetricsBreakerAndHealth(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	const ns = "outage"
	a := newCache(t, tiered.Config[string]{Redis: newClient(t, mr.Addr()), Namespace: ns,
		BreakerFailures: 1, BreakerCooldown: time.Hour, AntiEntropyInterval: time.Hour})
	mp, reader := newMeter(t)
	reg, err := RegisterMetrics(mp, a)
	if err != nil {
		t.Fatalf("RegisterMetrics: %v", err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	eventually(t, "stream healthy", func() bool { return a.Stats().Health.Healthy })

	mr.Close()
	eventually(t, "breaker open and stream unhealthy", func() bool {
		_, _ = a.Get(ctx, "x")
		st := a.Stats()
		return st.L2.Breaker == tiered.BreakerOpen && !st.Health.Healthy
	})

	// The bus keeps retrying, so its counters move: compare the gauges
	// with a Stats whose breaker and health were the same before and after
	// the collection.
	var c collected
	var st tiered.Stats
	for i := 0; ; i++ {
		before := a.Stats()
		since := before.Health.UnhealthySince
		reg.now = func() time.Time { return since.Add(1500 * time.Millisecond) }
		c = collect(t, reader)
		st = a.Stats()
		if before.Health == st.Health && before.L2.Breaker == st.L2.Breaker && before.L2.BreakerOpened == st.L2.BreakerOpened {
			break
		}
		if i == 200 {
			t.Fatal("the breaker or the health never stood still during a collection")
		}
		time.Sleep(5 * time.Millisecond)
	}
	set := attrSet(ns)
	for state, want := range map[string]int64{"closed": 0, "open": 1, "half-open": 0} {
		if got := c.mustInt64(t, nameBreakerState, attrSet(ns, StateKey.String(state))); got != want {
			t.Errorf("%s{state=%s} = %d, want %d", nameBreakerState, state, got, want)
		}
	}
	if got := c.mustInt64(t, "nearcache.breaker.opens", set); got != 1 {
		t.Errorf("nearcache.breaker.opens = %d, want 1", got)
	}
	if got := c.mustInt64(t, nameHealthy, set); got != 0 {
		t.Errorf("%s = %d while unhealthy, want 0", nameHealthy, got)
	}
	if st.Health.Reasons == 0 {
		t.Fatalf("unhealthy without a reason: %+v", st.Health)
	}
	ones := 0
	for _, r := range invalidation.AllHealthReasons() {
		got := c.mustInt64(t, nameUnhealthyReason, attrSet(ns, ReasonKey.String(r.String())))
		if want := oneIf(st.Health.Reasons&r != 0); got != want {
			t.Errorf("%s{reason=%s} = %d, want %d (reasons %q)", nameUnhealthyReason, r, got, want, st.Health.Reasons)
		}
		ones += int(got)
	}
	if ones == 0 {
		t.Errorf("no %s is 1 while unhealthy (reasons %q)", nameUnhealthyReason, st.Health.Reasons)
	}
	if got := c.mustFloat64(t, nameUnhealthyTime, set); got != 1.5 {
		t.Errorf("%s = %v, want 1.5 (the clock 1.5s after UnhealthySince)", nameUnhealthyTime, got)
	}
	if got := c.mustInt64(t, "nearcache.l2.errors", set); got < 1 {
		t.Errorf("nearcache.l2.errors = %d after a failed read, want at least 1", got)
	}
}

// fakeSource is a StatsSource with given Stats.
type fakeSource struct {
	ns string
	st tiered.Stats
}

func (f *fakeSource) Namespace() string   { return f.ns }
func (f *fakeSource) Stats() tiered.Stats { return f.st }

// distinctStats sets every integer of a Stats to a different value: then no
// two instruments reading different fields can agree.
func distinctStats() tiered.Stats {
	var st tiered.Stats
	next := uint64(1000)
	var fill func(v reflect.Value)
	fill = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			if v.Type() == reflect.TypeFor[time.Time]() {
				return
			}
			for i := range v.NumField() {
				fill(v.Field(i))
			}
		case reflect.Array:
			for i := range v.Len() {
				fill(v.Index(i))
			}
		case reflect.Uint64:
			next++
			v.SetUint(next)
		case reflect.Int64:
			if v.Type() == reflect.TypeFor[time.Duration]() {
				next++
				v.SetInt(int64(next) * int64(time.Microsecond))
				return
			}
			next++
			v.SetInt(int64(next))
		}
	}
	fill(reflect.ValueOf(&st).Elem())
	return st
}

// Each instrument reads its own field: with every field of Stats
// different, every counter differs from the others, and the attributed
// instruments map causes, states, reasons and quantiles one to one.
func TestMetricsMapping(t *testing.T) {
	src := &fakeSource{ns: "fake", st: distinctStats()}
	src.st.L2.Breaker = tiered.BreakerHalfOpen
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	src.st.Health = invalidation.Health{UnhealthySince: since, Reasons: invalidation.Disconnected | invalidation.Rerouting}
	mp, reader := newMeter(t)
	reg, err := RegisterMetrics(mp, src)
	if err != nil {
		t.Fatalf("RegisterMetrics: %v", err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	reg.now = func() time.Time { return since.Add(2 * time.Second) }
	c := collect(t, reader)
	st := &src.st
	checkAgainstStats(t, c, "fake", st)

	seen := map[int64]string{}
	for _, d := range counterDefs {
		v := c.mustInt64(t, d.name, attrSet("fake"))
		if other, dup := seen[v]; dup {
			t.Errorf("%s and %s both read %d: the same field", d.name, other, v)
		}
		seen[v] = d.name
	}
	for i, cause := range invalidation.Causes() {
		if got := c.mustInt64(t, nameRepairs, attrSet("fake", CauseKey.String(cause.String()))); got != int64(st.Invalidation.InvalidateAll[i]) {
			t.Errorf("repairs{cause=%s} = %d, want InvalidateAll[%d] = %d", cause, got, i, st.Invalidation.InvalidateAll[i])
		}
	}
	if got := c.mustInt64(t, nameBreakerState, attrSet("fake", StateKey.String("half-open"))); got != 1 {
		t.Errorf("breaker state half-open = %d, want 1", got)
	}
	for reason, want := range map[string]int64{"disconnected": 1, "rerouting": 1, "not_subscribed": 0, "stalled": 0, "overflowed": 0, "anti_entropy_failing": 0, "repair_pending": 0} {
		if got := c.mustInt64(t, nameUnhealthyReason, attrSet("fake", ReasonKey.String(reason))); got != want {
			t.Errorf("%s{reason=%s} = %d, want %d", nameUnhealthyReason, reason, got, want)
		}
	}
	if got := c.mustFloat64(t, nameUnhealthyTime, attrSet("fake")); got != 2 {
		t.Errorf("%s = %v, want 2", nameUnhealthyTime, got)
	}
	lat := st.L2.Store.Latency
	for q, want := range map[string]time.Duration{"0.5": lat.P50, "0.9": lat.P90, "0.99": lat.P99, "0.999": lat.P999, "1": lat.Max} {
		if got := c.mustFloat64(t, nameRoundTripQ, attrSet("fake", QuantileKey.String(q))); got != want.Seconds() {
			t.Errorf("%s{quantile=%s} = %v, want %v", nameRoundTripQ, q, got, want.Seconds())
		}
	}
}

// Add, Remove and their errors; caches without Redis (L1-only) export
// zeros for the other tiers and no quantiles before any observation.
func TestRegistrationAddRemove(t *testing.T) {
	ctx := context.Background()
	a := newCache(t, tiered.Config[string]{Namespace: "a"})
	b := newCache(t, tiered.Config[string]{Namespace: "b"})
	mp, reader := newMeter(t)

	if reg, err := RegisterMetrics(mp, a, b, newCache(t, tiered.Config[string]{Namespace: "a"})); !errors.Is(err, ErrDuplicateNamespace) || reg != nil {
		t.Fatalf("RegisterMetrics with two caches named a: %v, %v; want ErrDuplicateNamespace and no Registration", reg, err)
	}
	if n := collect(t, reader).points(); n != 0 {
		t.Fatalf("a failed RegisterMetrics left %d data points, want none", n)
	}

	reg, err := RegisterMetrics(mp, a, b)
	if err != nil {
		t.Fatalf("RegisterMetrics: %v", err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	if _, err := a.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "v", nil }); err != nil {
		t.Fatal(err)
	}
	c, sts := collectStable(t, reader, a, b)
	for i, ns := range []string{"a", "b"} {
		checkAgainstStats(t, c, ns, &sts[i])
		if got := c.mustInt64(t, nameHealthy, attrSet(ns)); got != 1 {
			t.Errorf("L1-only %s: %s = %d, want 1", ns, nameHealthy, got)
		}
		if _, ok := c.float64Point(nameRoundTripQ, attrSet(ns, QuantileKey.String("0.5"))); ok {
			t.Errorf("L1-only %s has Redis round-trip quantiles", ns)
		}
	}
	if _, ok := c.float64Point(nameLoadDurationQ, attrSet("a", QuantileKey.String("1"))); !ok {
		t.Errorf("a loaded once and has no %s", nameLoadDurationQ)
	}
	if _, ok := c.float64Point(nameLoadDurationQ, attrSet("b", QuantileKey.String("1"))); ok {
		t.Errorf("b never loaded and has %s", nameLoadDurationQ)
	}

	if err := reg.Add(newCache(t, tiered.Config[string]{Namespace: "b"})); !errors.Is(err, ErrDuplicateNamespace) {
		t.Errorf("Add of a second b: %v, want ErrDuplicateNamespace", err)
	}
	if err := reg.Add(nil); !errors.Is(err, ErrInvalidCache) {
		t.Errorf("Add(nil): %v, want ErrInvalidCache", err)
	}
	if err := reg.Add(&fakeSource{ns: "bad\xff"}); !errors.Is(err, ErrInvalidCache) {
		t.Errorf("Add of a namespace that is not UTF-8: %v, want ErrInvalidCache", err)
	}
	if err := reg.Add(&fakeSource{ns: "ok"}, nil); !errors.Is(err, ErrInvalidCache) {
		t.Errorf("Add(ok, nil): %v, want ErrInvalidCache", err)
	}
	if _, ok := collect(t, reader).int64Point("nearcache.l1.hits", attrSet("ok")); ok {
		t.Error("a failed Add added some of its caches")
	}

	reg.Remove(b)
	c = collect(t, reader)
	if _, ok := c.int64Point("nearcache.l1.hits", attrSet("b")); ok {
		t.Error("b still observed after Remove")
	}
	if _, ok := c.int64Point("nearcache.l1.hits", attrSet("a")); !ok {
		t.Error("a no longer observed after Remove(b)")
	}
	if err := reg.Add(b); err != nil {
		t.Fatalf("Add(b) after Remove: %v", err)
	}
	if _, ok := collect(t, reader).int64Point("nearcache.l1.hits", attrSet("b")); !ok {
		t.Error("b not observed after Add")
	}
}

// Unregister stops the callback: a later collection has no nearcache data.
func TestUnregister(t *testing.T) {
	a := newCache(t, tiered.Config[string]{Namespace: "gone"})
	mp, reader := newMeter(t)
	reg, err := RegisterMetrics(mp, a)
	if err != nil {
		t.Fatalf("RegisterMetrics: %v", err)
	}
	callbacks := 0 // the callback reads the clock once per collection
	reg.now = func() time.Time { callbacks++; return time.Now() }
	if n := collect(t, reader).points(); n == 0 || callbacks != 1 {
		t.Fatalf("%d data points from %d callbacks before Unregister, want some from 1", n, callbacks)
	}
	if err := reg.Unregister(); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	if n := collect(t, reader).points(); n != 0 {
		t.Errorf("%d data points after Unregister, want none", n)
	}
	if callbacks != 1 {
		t.Errorf("the callback ran %d more times after Unregister, want 0", callbacks-1)
	}
	if err := reg.Unregister(); err != nil {
		t.Errorf("second Unregister: %v, want nil", err)
	}
	if err := reg.Add(newCache(t, tiered.Config[string]{Namespace: "late"})); !errors.Is(err, ErrUnregistered) {
		t.Errorf("Add after Unregister: %v, want ErrUnregistered", err)
	}
}

// doc.go lists every instrument with its kind and unit, and nothing else.
func TestDocListsEveryInstrument(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	src := string(doc)
	// The list: code-block lines "name unit description", under a line
	// that ends with "KIND:".
	kindNames := []string{"Int64ObservableCounter", "Int64ObservableUpDownCounter", "Int64ObservableGauge", "Float64ObservableGauge", "Float64Histogram"}
	type entry struct{ kind, unit string }
	documented := map[string]entry{}
	kind := ""
	for line := range strings.Lines(src) {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "// "); ok && strings.HasSuffix(rest, ":") {
			for _, k := range kindNames {
				if strings.HasSuffix(rest, k+":") {
					kind = k
				}
			}
			continue
		}
		f := strings.Fields(strings.TrimPrefix(line, "//\t"))
		if strings.HasPrefix(line, "//\t") && len(f) >= 3 && strings.HasPrefix(f[0], "nearcache.") {
			if _, dup := documented[f[0]]; dup {
				t.Errorf("doc.go lists %s twice", f[0])
			}
			documented[f[0]] = entry{kind, f[1]}
		}
	}

	// Every instrument, with at least one data point: a fake cache with
	// observations of every kind, and a load through NewObserver.
	mp, reader := newMeter(t)
	reg, err := RegisterMetrics(mp, &fakeSource{ns: "doc", st: distinctStats()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	obs := NewObserver(WithMeterProvider(mp))
	obs.LoadDone(obs.LoadStart(context.Background(), tiered.LoadStartEvent{Namespace: "doc"}), tiered.LoadDoneEvent{Namespace: "doc"})
	c := collect(t, reader)

	kinds := map[string]string{}
	for name, m := range c {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			kinds[name] = "Int64ObservableCounter"
			if !d.IsMonotonic {
				kinds[name] = "Int64ObservableUpDownCounter"
			}
		case metricdata.Gauge[int64]:
			kinds[name] = "Int64ObservableGauge"
		case metricdata.Gauge[float64]:
			kinds[name] = "Float64ObservableGauge"
		case metricdata.Histogram[float64]:
			kinds[name] = "Float64Histogram"
		default:
			t.Errorf("%s: unexpected data %T", name, d)
		}
	}
	for name, kind := range kinds {
		f, ok := documented[name]
		if !ok {
			t.Errorf("%s (%s, %s) is not listed in doc.go", name, kind, c[name].Unit)
			continue
		}
		if f.kind != kind || f.unit != c[name].Unit {
			t.Errorf("doc.go lists %s as %s %s, want %s %s", name, f.kind, f.unit, kind, c[name].Unit)
		}
	}
	for name := range documented {
		if _, ok := kinds[name]; !ok {
			t.Errorf("doc.go lists %s, which has no data", name)
		}
	}
}
