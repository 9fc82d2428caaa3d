package nearcacheprom

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
	"github.com/nearcache/nearcache/tiered"
)

// register registers a Collector over caches on a fresh pedantic registry.
func register(t *testing.T, caches ...tiered.StatsSource) (*Collector, *prometheus.Registry) {
	t.Helper()
	col := NewCollector(caches...)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(col); err != nil {
		t.Fatalf("Register: %v", err)
	}
	return col, reg
}

// shop is two instances of one namespace on one Redis, with activity on a
// that the values test knows by heart.
type shop struct {
	a, b *tiered.Cache[string]
	mr   *miniredis.Miniredis
	// extra is how many reads of k missed L1 (and were answered by Redis)
	// before the one that hit: see readUntilL1Hit.
	extra int
}

// readUntilL1Hit calls read until one call is an L1 hit of c, and returns
// how many missed L1 first. A fill is served at once while staged, but once
// handed over to ristretto it is visible only when ristretto has applied it
// (see the l1 package's NOTE), so the read just after a fill may miss.
func readUntilL1Hit(t *testing.T, c tiered.StatsSource, read func() error) int {
	t.Helper()
	for missed := range 1000 {
		hits := c.Stats().L1.Hits
		if err := read(); err != nil {
			t.Fatal(err)
		}
		if c.Stats().L1.Hits > hits {
			return missed
		}
	}
	t.Fatal("no L1 hit in 1000 reads")
	return 0
}

func newShop(t *testing.T) shop {
	t.Helper()
	ctx := context.Background()
	mr := miniredis.RunT(t)
	s := shop{
		a:  newCache(t, tiered.Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "shop"}),
		b:  newCache(t, tiered.Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "shop"}),
		mr: mr,
	}
	a := s.a
	if err := a.Set(ctx, "k", "v1"); err != nil { // Redis write (1 round trip), own invalidation
		t.Fatal(err)
	}
	getK := func() error {
		if v, err := a.Get(ctx, "k"); err != nil || v != "v1" {
			return fmt.Errorf(`Get("k") = %q, %v; want "v1"`, v, err)
		}
		return nil
	}
	if err := getK(); err != nil { // an L1 miss read from Redis
		t.Fatal(err)
	}
	s.extra = readUntilL1Hit(t, a, getK) // then an L1 hit
	// L1 miss, Redis miss
	if _, err := a.Get(ctx, "absent"); !errors.Is(err, tiered.ErrNotFound) {
		t.Fatalf(`Get("absent"): %v, want ErrNotFound`, err)
	}
	load := func(context.Context, string) (string, error) { return "x", nil }
	if v, err := a.GetOrLoad(ctx, "loaded", load); err != nil || v != "x" { // Redis miss, loader, write-back
		t.Fatalf(`GetOrLoad("loaded") = %q, %v; want "x"`, v, err)
	}
	if err := s.b.Set(ctx, "k", "v2"); err != nil { // invalidates a's copy
		t.Fatal(err)
	}
	eventually(t, "a applied b's invalidation", func() bool { return a.Stats().Invalidation.Applied == 1 })
	if v, err := a.Get(ctx, "k"); err != nil || v != "v2" { // L1 miss after the invalidation, from Redis
		t.Fatalf(`Get("k") after b's Set = %q, %v; want "v2"`, v, err)
	}
	return s
}

// stableGather gathers reg between two Stats snapshots of src that agree
// on the fields the test compares with it (background work such as
// anti-entropy, or the L1 handing staged fills over, moves counters), and returns the families with that
// snapshot.
func stableGather(t *testing.T, reg prometheus.Gatherer, src tiered.StatsSource) (map[string]*dto.MetricFamily, tiered.Stats) {
	t.Helper()
	type fields struct {
		rt, load, lag l2.Histogram
		repairs       any
		health        invalidation.Health
		fills         uint64 // handed to ristretto by the L1's clock
		entries       int64
		received      uint64
	}
	of := func(s tiered.Stats) fields {
		return fields{s.L2.Store.LatencyHistogram, s.Loads.LatencyHistogram, s.Invalidation.LagHistogram,
			s.Invalidation.InvalidateAll, s.Health, s.L1.Fills, s.L1.Entries, s.Invalidation.Received}
	}
	for range 100 {
		before := src.Stats()
		mfs := gather(t, reg)
		after := src.Stats()
		if reflect.DeepEqual(of(before), of(after)) {
			return mfs, before
		}
	}
	t.Fatal("the stats never held still across a Gather")
	return nil, tiered.Stats{}
}

// checkHistogram compares an exported histogram with the Stats it came from.
func checkHistogram(t *testing.T, mfs map[string]*dto.MetricFamily, name, cache string, want l2.Histogram) {
	t.Helper()
	m := find(mfs, name, labelCache, cache)
	if m == nil || m.Histogram == nil {
		t.Fatalf("no histogram %s{cache=%q}", name, cache)
	}
	h := m.GetHistogram()
	if got := h.GetSampleCount(); got != want.Count {
		t.Errorf("%s_count = %d, want %d", name, got, want.Count)
	}
	if got, w := h.GetSampleSum(), want.Sum.Seconds(); got != w {
		t.Errorf("%s_sum = %v, want %v", name, got, w)
	}
	if len(h.GetBucket()) != len(want.Bounds) {
		t.Fatalf("%s has %d buckets, want %d", name, len(h.GetBucket()), len(want.Bounds))
	}
	for i, b := range h.GetBucket() {
		if got, w := b.GetUpperBound(), want.Bounds[i].Seconds(); got != w {
			t.Errorf("%s bucket %d: le=%v, want %v", name, i, got, w)
		}
		if got, w := b.GetCumulativeCount(), want.Counts[i]; got != w {
			t.Errorf("%s{le=%v} = %d, want %d", name, b.GetUpperBound(), got, w)
		}
	}
}

// The exported series carry the exact values of the cache's activity, and
// the histograms are its Stats' buckets, in seconds.
func TestCollectorValues(t *testing.T) {
	s := newShop(t)
	col, reg := register(t, s.a)

	// a: Set; Get k (L1 miss, Redis hit); e more such Gets; Get k (L1
	// hit); Get absent (L1 and Redis miss); GetOrLoad (Redis miss, loader,
	// write-back); b's Set applied; Get k (L1 miss, Redis hit).
	e := s.extra
	err := testutil.CollectAndCompare(col, expo(
		`# HELP nearcache_l1_hits_total Lookups answered by the local tier (L1).`,
		`# TYPE nearcache_l1_hits_total counter`,
		`nearcache_l1_hits_total{cache="shop"} 1`,
		`# HELP nearcache_l1_misses_total L1 lookups that found no usable entry (stale, expired and collision misses included).`,
		`# TYPE nearcache_l1_misses_total counter`,
		fmt.Sprintf(`nearcache_l1_misses_total{cache="shop"} %d`, 4+e),
		`# HELP nearcache_l2_lookups_total Keys looked up in Redis on L1 misses.`,
		`# TYPE nearcache_l2_lookups_total counter`,
		fmt.Sprintf(`nearcache_l2_lookups_total{cache="shop"} %d`, 4+e),
		`# HELP nearcache_l2_hits_total Keys looked up in Redis and found fresh and decodable.`,
		`# TYPE nearcache_l2_hits_total counter`,
		fmt.Sprintf(`nearcache_l2_hits_total{cache="shop"} %d`, 2+e),
		`# HELP nearcache_redis_sets_total Keys written to Redis.`,
		`# TYPE nearcache_redis_sets_total counter`,
		`nearcache_redis_sets_total{cache="shop"} 2`,
		`# HELP nearcache_redis_notifications_total Invalidation notifications published by writes.`,
		`# TYPE nearcache_redis_notifications_total counter`,
		`nearcache_redis_notifications_total{cache="shop"} 1`,
		`# HELP nearcache_load_callers_total Calls that missed L1 and waited for a flight.`,
		`# TYPE nearcache_load_callers_total counter`,
		fmt.Sprintf(`nearcache_load_callers_total{cache="shop"} %d`, 4+e),
		`# HELP nearcache_loader_calls_total Calls of a Loader or BatchLoader.`,
		`# TYPE nearcache_loader_calls_total counter`,
		`nearcache_loader_calls_total{cache="shop"} 1`,
		`# HELP nearcache_loader_errors_total Loader calls that failed (not-found results excluded).`,
		`# TYPE nearcache_loader_errors_total counter`,
		`nearcache_loader_errors_total{cache="shop"} 0`,
		`# HELP nearcache_invalidation_applied_total Invalidation messages from other instances applied to L1.`,
		`# TYPE nearcache_invalidation_applied_total counter`,
		`nearcache_invalidation_applied_total{cache="shop"} 1`,
		`# HELP nearcache_invalidation_own_total This instance's own invalidation messages seen.`,
		`# TYPE nearcache_invalidation_own_total counter`,
		`nearcache_invalidation_own_total{cache="shop"} 1`,
		`# HELP nearcache_breaker_state State of the circuit breaker in front of Redis: 1 for the current state (closed, open, half-open), 0 for the others.`,
		`# TYPE nearcache_breaker_state gauge`,
		`nearcache_breaker_state{cache="shop",state="closed"} 1`,
		`nearcache_breaker_state{cache="shop",state="half-open"} 0`,
		`nearcache_breaker_state{cache="shop",state="open"} 0`,
		`# HELP nearcache_invalidation_healthy 1 while the invalidation stream is healthy, 0 while local copies may miss invalidations.`,
		`# TYPE nearcache_invalidation_healthy gauge`,
		`nearcache_invalidation_healthy{cache="shop"} 1`,
		`# HELP nearcache_invalidation_unhealthy_seconds Seconds since the invalidation stream became unhealthy, 0 while healthy.`,
		`# TYPE nearcache_invalidation_unhealthy_seconds gauge`,
		`nearcache_invalidation_unhealthy_seconds{cache="shop"} 0`,
	), "nearcache_l1_hits_total", "nearcache_l1_misses_total", "nearcache_l2_lookups_total", "nearcache_l2_hits_total",
		"nearcache_redis_sets_total", "nearcache_redis_notifications_total", "nearcache_load_callers_total",
		"nearcache_loader_calls_total", "nearcache_loader_errors_total", "nearcache_invalidation_applied_total",
		"nearcache_invalidation_own_total", "nearcache_breaker_state", "nearcache_invalidation_healthy",
		"nearcache_invalidation_unhealthy_seconds")
	if err != nil {
		t.Error(err)
	}

	mfs, st := stableGather(t, reg, s.a)
	for _, c := range []struct {
		name string
		want float64
	}{
		{"nearcache_redis_hits_total", float64(2 + e)},
		{"nearcache_redis_misses_total", 2},
		{"nearcache_load_flights_total", float64(4 + e)},
		{"nearcache_load_coalesced_total", 0},
		{"nearcache_loader_keys_total", 1},
		{"nearcache_l1_max_cost", float64(tiered.DefaultL1MaxEntries)},
		{"nearcache_invalidation_received_total", float64(st.Invalidation.Received)},
		{"nearcache_l1_fills_total", float64(st.L1.Fills)},
		{"nearcache_l1_entries", float64(st.L1.Entries)},
	} {
		if got := value(t, mfs, c.name, labelCache, "shop"); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	// Round trips: Set, Get k (1+e), Get absent, GetOrLoad's read and
	// write-back, Get k again. One loader call. One message from another instance.
	for _, c := range []struct {
		name  string
		h     l2.Histogram
		count uint64
	}{
		{"nearcache_redis_round_trip_seconds", st.L2.Store.LatencyHistogram, uint64(6 + e)},
		{"nearcache_load_duration_seconds", st.Loads.LatencyHistogram, 1},
		{"nearcache_invalidation_lag_seconds", st.Invalidation.LagHistogram, 1},
	} {
		if c.h.Count != c.count {
			t.Errorf("Stats: %s count %d, want %d", c.name, c.h.Count, c.count)
		}
		checkHistogram(t, mfs, c.name, "shop", c.h)
	}
	for _, cause := range invalidation.Causes() {
		if got := value(t, mfs, "nearcache_invalidation_repairs_total", labelCache, "shop", labelCause, cause.String()); got != 0 {
			t.Errorf("repairs{cause=%q} = %v before any repair, want 0", cause, got)
		}
	}
	for _, r := range invalidation.AllHealthReasons() {
		if got := value(t, mfs, "nearcache_invalidation_unhealthy_reasons", labelCache, "shop", labelReason, r.String()); got != 0 {
			t.Errorf("unhealthy_reasons{reason=%q} = %v while healthy, want 0", r, got)
		}
	}

	// A Clear on b drops a's whole L1: a repair with cause "clear", the
	// others still exported at 0.
	if err := s.b.Clear(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a heard b's Clear", func() bool {
		return scrapeValue(t, reg, "nearcache_invalidation_repairs_total", labelCache, "shop", labelCause, "clear") >= 1
	})
	mfs, st = stableGather(t, reg, s.a)
	if got, want := labelValues(mfs, "nearcache_invalidation_repairs_total", labelCause), causeNames(); !slices.Equal(got, want) {
		t.Errorf("repairs causes %v, want %v", got, want)
	}
	for _, cause := range invalidation.Causes() {
		got := value(t, mfs, "nearcache_invalidation_repairs_total", labelCache, "shop", labelCause, cause.String())
		if want := float64(st.Invalidation.InvalidateAll[cause]); got != want {
			t.Errorf("repairs{cause=%q} = %v, want %v", cause, got, want)
		}
		if cause != invalidation.CauseClear && got != 0 {
			t.Errorf("repairs{cause=%q} = %v after a Clear alone, want 0", cause, got)
		}
	}
	checkHistogram(t, mfs, "nearcache_invalidation_lag_seconds", "shop", st.Invalidation.LagHistogram)
	if st.Invalidation.LagHistogram.Count < 2 {
		t.Errorf("lag count %d after the Clear, want at least 2", st.Invalidation.LagHistogram.Count)
	}
}

func causeNames() []string {
	var out []string
	for _, c := range invalidation.Causes() {
		out = append(out, c.String())
	}
	slices.Sort(out)
	return out
}

// promlint finds nothing to say, for a cache with Redis and activity, and
// for an L1-only one.
func TestCollectorLint(t *testing.T) {
	s := newShop(t)
	local := newCache(t, tiered.Config[string]{Namespace: "local"})
	for _, c := range []struct {
		name string
		src  tiered.StatsSource
	}{{"redis", s.a}, {"l1-only", local}} {
		t.Run(c.name, func(t *testing.T) {
			problems, err := testutil.CollectAndLint(NewCollector(c.src))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}

// Describe and Collect agree: every Desc described is collected, for each
// cache, and nothing else is.
func TestDescribeMatchesCollect(t *testing.T) {
	s := newShop(t)
	col := NewCollector(s.a)
	described := map[string]bool{}
	dch := make(chan *prometheus.Desc)
	go func() { col.Describe(dch); close(dch) }()
	for d := range dch {
		described[d.String()] = true
	}
	collected := map[string]int{}
	mch := make(chan prometheus.Metric)
	go func() { col.Collect(mch); close(mch) }()
	for m := range mch {
		collected[m.Desc().String()]++
	}
	if len(described) == 0 || len(described) != len(collected) {
		t.Errorf("%d Descs described, %d collected", len(described), len(collected))
	}
	for d := range collected {
		if !described[d] {
			t.Errorf("collected but not described: %s", d)
		}
	}
	if n := testutil.CollectAndCount(col); n != 97 {
		t.Errorf("%d series for one cache, want 97 (68 counters, 11 repair causes, 3 gauges, 3 breaker states, healthy, 7 reasons, unhealthy seconds, 3 histograms)", n)
	}
}

// Two namespaces make two cache label values; a namespace already present
// is refused, by Add or at registration; Remove drops a cache's series.
func TestCollectorCaches(t *testing.T) {
	mr := miniredis.RunT(t)
	rc := newClient(t, mr.Addr())
	users := newCache(t, tiered.Config[string]{Redis: rc, Namespace: "users"})
	orders := newCache(t, tiered.Config[string]{Redis: rc, Namespace: "orders"})
	users2 := newCache(t, tiered.Config[string]{Redis: rc, Namespace: "users"})
	local := newCache(t, tiered.Config[string]{Namespace: "local"})

	col, reg := register(t, users, orders)
	caches := func() []string { return labelValues(gather(t, reg), "nearcache_l1_hits_total", labelCache) }
	if got, want := caches(), []string{"orders", "users"}; !slices.Equal(got, want) {
		t.Fatalf("cache labels %v, want %v", got, want)
	}
	if n := testutil.CollectAndCount(col, "nearcache_breaker_state"); n != 6 {
		t.Errorf("%d breaker_state series for two caches, want 6", n)
	}
	// One Collector per registry: a second one, even over other caches,
	// has the same Descs.
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(NewCollector(local)); !errors.As(err, &are) {
		t.Errorf("Register of a second Collector: %v, want an AlreadyRegisteredError", err)
	}

	for _, c := range []struct {
		name string
		add  []tiered.StatsSource
		want error
	}{
		{"present", []tiered.StatsSource{users2}, ErrDuplicateNamespace},
		{"twice in one call", []tiered.StatsSource{local, local}, ErrDuplicateNamespace},
		{"new with present", []tiered.StatsSource{local, users2}, ErrDuplicateNamespace},
		{"nil", []tiered.StatsSource{local, nil}, ErrInvalidCache},
		{"bad label value", []tiered.StatsSource{badNamespace{users}}, ErrInvalidCache},
	} {
		if err := col.Add(c.add...); !errors.Is(err, c.want) {
			t.Errorf("Add %s: %v, want %v", c.name, err, c.want)
		}
		if got, want := caches(), []string{"orders", "users"}; !slices.Equal(got, want) {
			t.Errorf("after the refused Add %s: cache labels %v, want %v (nothing added)", c.name, got, want)
		}
	}

	if err := col.Add(local); err != nil {
		t.Fatalf("Add(local): %v", err)
	}
	if got, want := caches(), []string{"local", "orders", "users"}; !slices.Equal(got, want) {
		t.Errorf("after Add(local): %v, want %v", got, want)
	}
	col.Remove(users2, nil) // by namespace: users goes
	if got, want := caches(), []string{"local", "orders"}; !slices.Equal(got, want) {
		t.Errorf("after Remove(users): %v, want %v", got, want)
	}
	mfs := gather(t, reg)
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labelCache && lp.GetValue() == "users" {
					t.Errorf("%s still has a series for the removed cache", name)
				}
			}
		}
	}
	col.Remove(users) // no longer present: nothing happens
	if err := col.Add(users2); err != nil {
		t.Errorf("Add of a namespace after its Remove: %v", err)
	}
	col.Remove(users, orders, local)
	if mfs := gather(t, reg); len(mfs) != 0 {
		t.Errorf("%d families after removing every cache, want 0", len(mfs))
	}
}

// badNamespace is a StatsSource whose namespace is not a valid label value.
type badNamespace struct{ tiered.StatsSource }

func (badNamespace) Namespace() string { return "bad\xff" }

// A Collector given two caches of one namespace cannot be registered, and
// its Collect yields an error rather than duplicate series.
func TestNewCollectorDuplicate(t *testing.T) {
	mr := miniredis.RunT(t)
	rc := newClient(t, mr.Addr())
	a := newCache(t, tiered.Config[string]{Redis: rc, Namespace: "dup"})
	b := newCache(t, tiered.Config[string]{Redis: rc, Namespace: "dup"})
	col := NewCollector(a, b)
	err := prometheus.NewPedanticRegistry().Register(col)
	if !errors.Is(err, ErrDuplicateNamespace) {
		t.Fatalf("Register: %v, want ErrDuplicateNamespace", err)
	}
	if !strings.Contains(err.Error(), `"dup"`) {
		t.Errorf("Register error %q does not name the namespace", err)
	}

	ch := make(chan prometheus.Metric, 200)
	col.Collect(ch)
	close(ch)
	var n int
	for m := range ch {
		n++
		if err := m.Write(&dto.Metric{}); !errors.Is(err, ErrDuplicateNamespace) {
			t.Errorf("collected metric %s: Write error %v, want ErrDuplicateNamespace", m.Desc(), err)
		}
	}
	if n != 1 {
		t.Errorf("Collect sent %d metrics, want 1 (the error)", n)
	}

	if err := prometheus.NewPedanticRegistry().Register(NewCollector(a, nil)); !errors.Is(err, ErrInvalidCache) {
		t.Errorf("Register of a Collector given a nil cache: %v, want ErrInvalidCache", err)
	}
}

// The breaker_state and health gauges follow Redis going down and coming
// back.
func TestCollectorRedisDown(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c := newCache(t, tiered.Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "down",
		BreakerFailures: 1, BreakerCooldown: 50 * time.Millisecond})
	col, reg := register(t, c)
	breaker := func(mfs map[string]*dto.MetricFamily) map[string]float64 {
		out := map[string]float64{}
		for _, st := range []string{"closed", "open", "half-open"} {
			out[st] = value(t, mfs, "nearcache_breaker_state", labelCache, "down", labelState, st)
		}
		return out
	}
	mfs := gather(t, reg)
	if got, want := breaker(mfs), map[string]float64{"closed": 1, "open": 0, "half-open": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("breaker_state with Redis up: %v, want %v", got, want)
	}
	if got := value(t, mfs, "nearcache_invalidation_healthy", labelCache, "down"); got != 1 {
		t.Errorf("healthy with Redis up: %v, want 1", got)
	}

	mr.Close()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, tiered.ErrUnavailable) {
		t.Fatalf("Get with Redis down: %v, want ErrUnavailable", err)
	}
	// Nothing calls Redis now, so the breaker stays open (no probe turns
	// it half-open).
	mfs = gather(t, reg)
	if got, want := breaker(mfs), map[string]float64{"closed": 0, "open": 1, "half-open": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("breaker_state after the failure: %v, want %v", got, want)
	}
	if got := value(t, mfs, "nearcache_breaker_opens_total", labelCache, "down"); got != 1 {
		t.Errorf("breaker_opens_total = %v, want 1", got)
	}
	if got := value(t, mfs, "nearcache_l2_errors_total", labelCache, "down"); got < 1 {
		t.Errorf("l2_errors_total = %v, want at least 1", got)
	}

	eventually(t, "the stream reported unhealthy", func() bool {
		return scrapeValue(t, reg, "nearcache_invalidation_healthy", labelCache, "down") == 0
	})
	// A fixed clock makes the unhealthy duration exact.
	clock := time.Now().Add(time.Hour)
	col.now = func() time.Time { return clock }
	mfs, st := stableGather(t, reg, c)
	if st.Health.Healthy {
		t.Fatal("Stats says healthy again with Redis down")
	}
	if got := value(t, mfs, "nearcache_invalidation_healthy", labelCache, "down"); got != 0 {
		t.Errorf("healthy = %v, want 0", got)
	}
	var set int
	for _, r := range invalidation.AllHealthReasons() {
		got := value(t, mfs, "nearcache_invalidation_unhealthy_reasons", labelCache, "down", labelReason, r.String())
		want := boolValue(st.Health.Reasons&r != 0)
		if got != want {
			t.Errorf("unhealthy_reasons{reason=%q} = %v, want %v (Reasons %v)", r, got, want, st.Health.Reasons)
		}
		if got == 1 {
			set++
		}
	}
	if set == 0 {
		t.Errorf("no unhealthy reason set while unhealthy (Reasons %v)", st.Health.Reasons)
	}
	if got, want := value(t, mfs, "nearcache_invalidation_unhealthy_seconds", labelCache, "down"), clock.Sub(st.Health.UnhealthySince).Seconds(); got != want || got < 3599 {
		t.Errorf("unhealthy_seconds = %v, want %v", got, want)
	}

	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the breaker closed again", func() bool {
		_, err := c.Get(ctx, "k") // after the cooldown, this is the probe
		return errors.Is(err, tiered.ErrNotFound) && breaker(gather(t, reg))["closed"] == 1
	})
	eventually(t, "the stream reported healthy again", func() bool {
		mfs, st = stableGather(t, reg, c)
		return st.Health.Healthy && value(t, mfs, "nearcache_invalidation_healthy", labelCache, "down") == 1
	})
	if got := value(t, mfs, "nearcache_invalidation_unhealthy_seconds", labelCache, "down"); got != 0 {
		t.Errorf("unhealthy_seconds while healthy = %v, want 0", got)
	}
	for _, r := range invalidation.AllHealthReasons() {
		if got := value(t, mfs, "nearcache_invalidation_unhealthy_reasons", labelCache, "down", labelReason, r.String()); got != 0 {
			t.Errorf("unhealthy_reasons{reason=%q} = %v while healthy, want 0", r, got)
		}
	}
	if got, want := breaker(mfs), map[string]float64{"closed": 1, "open": 0, "half-open": 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("breaker_state after recovery: %v, want %v", got, want)
	}
}

// ioCounter is a go-redis hook that counts commands, and those sent from
// within a Collector's Collect (by their caller's stack).
type ioCounter struct {
	all, inCollect atomic.Int64
}

func (h *ioCounter) count() {
	h.all.Add(1)
	buf := make([]byte, 64<<10)
	if strings.Contains(string(buf[:runtime.Stack(buf, false)]), "/contrib/prometheus.(*Collector).Collect(") {
		h.inCollect.Add(1)
	}
}

func (h *ioCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *ioCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count()
		return next(ctx, cmd)
	}
}

func (h *ioCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.count()
		return next(ctx, cmds)
	}
}

// pinging is a StatsSource that calls Redis in Stats: it shows that the
// hook would see I/O done by Collect.
type pinging struct {
	tiered.StatsSource
	rc *redis.Client
}

func (p pinging) Namespace() string { return "pinging" }

func (p pinging) Stats() tiered.Stats {
	_ = p.rc.Ping(context.Background()).Err()
	return p.StatsSource.Stats()
}

// Collect does no Redis I/O: the Redis client's hook sees no command sent
// from within Collect, over many scrapes, while it does see the cache's own
// commands.
func TestCollectDoesNoRedisIO(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rc := newClient(t, mr.Addr())
	var hook ioCounter
	rc.AddHook(&hook)
	c := newCache(t, tiered.Config[string]{Redis: rc, Namespace: "io"})
	before := hook.all.Load()
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "absent"); !errors.Is(err, tiered.ErrNotFound) {
		t.Fatal(err)
	}
	if hook.all.Load() < before+2 {
		t.Fatalf("the hook saw %d commands for a Set and a Get, want at least 2", hook.all.Load()-before)
	}

	_, reg := register(t, c)
	for range 50 {
		gather(t, reg)
	}
	if n := hook.inCollect.Load(); n != 0 {
		t.Errorf("%d Redis commands sent from within Collect, want 0", n)
	}

	// The control: a source that does call Redis in Stats is seen.
	_, reg = register(t, pinging{c, rc})
	gather(t, reg)
	// (At least one: a PING that needs a new connection brings the
	// connection's handshake through the hook too.)
	if n := hook.inCollect.Load(); n < 1 {
		t.Errorf("the hook saw %d commands from a Stats that pings, want at least 1", n)
	}
}

// A cache without Redis exports every series: zeros for the tiers it does
// not have, the breaker closed, the stream healthy, and histograms with the
// common buckets.
func TestCollectorL1Only(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, tiered.Config[string]{Namespace: "local"})
	load := func() error {
		_, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "v", nil })
		return err
	}
	if err := load(); err != nil {
		t.Fatal(err)
	}
	extra := readUntilL1Hit(t, c, load) // each miss calls the loader again
	_, reg := register(t, c)
	mfs := gather(t, reg)
	st := c.Stats()
	for _, w := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"nearcache_l1_hits_total", nil, 1},
		{"nearcache_loader_calls_total", nil, float64(1 + extra)},
		{"nearcache_l2_lookups_total", nil, 0},
		{"nearcache_redis_sets_total", nil, 0},
		{"nearcache_breaker_state", []string{labelState, "closed"}, 1},
		{"nearcache_invalidation_healthy", nil, 1},
	} {
		if got := value(t, mfs, w.name, append([]string{labelCache, "local"}, w.labels...)...); got != w.want {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.want)
		}
	}
	checkHistogram(t, mfs, "nearcache_load_duration_seconds", "local", st.Loads.LatencyHistogram)
	empty := l2.Histogram{Bounds: st.Loads.LatencyHistogram.Bounds, Counts: make([]uint64, len(st.Loads.LatencyHistogram.Bounds))}
	checkHistogram(t, mfs, "nearcache_redis_round_trip_seconds", "local", empty)
	checkHistogram(t, mfs, "nearcache_invalidation_lag_seconds", "local", empty)
}

// Add, Remove and scrapes run concurrently (for the race detector), and a
// scrape sees each cache whole or not at all.
func TestCollectorConcurrent(t *testing.T) {
	a := newCache(t, tiered.Config[string]{Namespace: "a"})
	b := newCache(t, tiered.Config[string]{Namespace: "b"})
	col, reg := register(t, a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			if err := col.Add(b); err != nil {
				t.Errorf("Add(b): %v", err)
				return
			}
			col.Remove(b)
		}
	}()
	for range 200 {
		mfs := gather(t, reg)
		want := labelValues(mfs, "nearcache_l1_hits_total", labelCache)
		if !slices.Equal(want, []string{"a"}) && !slices.Equal(want, []string{"a", "b"}) {
			t.Fatalf("caches %v, want [a] or [a b]", want)
		}
		for name := range mfs {
			if got := slices.Compact(labelValues(mfs, name, labelCache)); !slices.Equal(got, want) {
				t.Fatalf("%s has caches %v, want %v as in the rest of the scrape", name, got, want)
			}
		}
	}
	<-done
}

// doc.go lists every metric, with its type, and no other.
func TestDocListsEveryMetric(t *testing.T) {
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(src)
	listed := map[string]string{} // name -> section
	section := ""
	for line := range strings.SplitSeq(doc, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(line, "//"))
		switch line {
		case "Every metric has the label cache. Counters:":
			section = "COUNTER"
		case "Gauges:":
			section = "GAUGE"
		case "Histograms, with the same buckets from 100µs to 10s:":
			section = "HISTOGRAM"
		case "# What to alert on":
			section = ""
		}
		if name, _, ok := strings.Cut(line, " "); ok && strings.HasPrefix(name, "nearcache_") && section != "" {
			name, _, _ = strings.Cut(name, "{")
			listed[name] = section
		}
	}
	_, reg := register(t, newCache(t, tiered.Config[string]{Namespace: "doc"}))
	mfs := gather(t, reg)
	for name, mf := range mfs {
		if got, want := listed[name], mf.GetType().String(); got != want {
			t.Errorf("doc.go lists %s as %q, want %q", name, got, want)
		}
	}
	for name := range listed {
		if mfs[name] == nil {
			t.Errorf("doc.go lists %s, which is not exported", name)
		}
	}
}
