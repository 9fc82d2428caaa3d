package tiered

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/nearcache/nearcache/invalidation"
)

// eventLog records every Observer event.
type eventLog struct {
	mu        sync.Mutex
	starts    []LoadStartEvent
	dones     []LoadDoneEvent
	doneCtx   []any // the value of obsCtxKey in LoadDone's ctx
	wstarts   []WriteStartEvent
	wdones    []WriteDoneEvent
	wdoneCtx  []any
	invals    []InvalidationEvent
	repairs   []RepairEvent
	breakers  []BreakerEvent
	stales    []StaleEvent
	loaderCtx atomic.Value
}

type obsCtxKey struct{}

func (l *eventLog) observer() *Observer {
	return &Observer{
		LoadStart: func(ctx context.Context, ev LoadStartEvent) context.Context {
			l.mu.Lock()
			defer l.mu.Unlock()
			ev.Keys = slices.Clone(ev.Keys)
			l.starts = append(l.starts, ev)
			return context.WithValue(ctx, obsCtxKey{}, "load-span")
		},
		LoadDone: func(ctx context.Context, ev LoadDoneEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			ev.Keys = slices.Clone(ev.Keys)
			l.dones = append(l.dones, ev)
			l.doneCtx = append(l.doneCtx, ctx.Value(obsCtxKey{}))
		},
		WriteStart: func(ctx context.Context, ev WriteStartEvent) context.Context {
			l.mu.Lock()
			defer l.mu.Unlock()
			ev.Keys = slices.Clone(ev.Keys)
			l.wstarts = append(l.wstarts, ev)
			return context.WithValue(ctx, obsCtxKey{}, "write-span")
		},
		WriteDone: func(ctx context.Context, ev WriteDoneEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			ev.Keys = slices.Clone(ev.Keys)
			l.wdones = append(l.wdones, ev)
			l.wdoneCtx = append(l.wdoneCtx, ctx.Value(obsCtxKey{}))
		},
		Invalidated: func(ev InvalidationEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			ev.Keys = slices.Clone(ev.Keys)
			l.invals = append(l.invals, ev)
		},
		Repaired: func(ev RepairEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.repairs = append(l.repairs, ev)
		},
		BreakerChanged: func(ev BreakerEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.breakers = append(l.breakers, ev)
		},
		StaleServed: func(ev StaleEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.stales = append(l.stales, ev)
		},
	}
}

func (l *eventLog) lock() func() { l.mu.Lock(); return l.mu.Unlock }

// A single-key load: LoadStart's ctx reaches the loader and LoadDone, which
// reports the keys, the duration, and the callers that joined the flight.
func TestObserverLoad(t *testing.T) {
	ctx := context.Background()
	var log eventLog
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "obs", Observer: log.observer()})
	gate := make(chan struct{})
	loader := func(ctx context.Context, key string) (string, error) {
		log.loaderCtx.Store(ctx.Value(obsCtxKey{}))
		<-gate
		time.Sleep(2 * time.Millisecond)
		return "v-" + key, nil
	}
	const joiners = 4
	var wg sync.WaitGroup
	for range joiners + 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v, err := c.GetOrLoad(ctx, "k", loader); err != nil || v != "v-k" {
				t.Errorf("GetOrLoad: %q %v", v, err)
			}
		}()
	}
	eventually(t, "every caller waiting on the flight", func() bool { return c.Stats().Loads.Callers == joiners+1 })
	close(gate)
	wg.Wait()

	unlock := log.lock()
	defer unlock()
	if len(log.starts) != 1 || len(log.dones) != 1 {
		t.Fatalf("%d LoadStart, %d LoadDone events for one load, want 1 and 1", len(log.starts), len(log.dones))
	}
	if s := log.starts[0]; s.Namespace != "obs" || !slices.Equal(s.Keys, []string{"k"}) || s.Batch {
		t.Errorf("LoadStart %+v", s)
	}
	d := log.dones[0]
	if d.Namespace != "obs" || !slices.Equal(d.Keys, []string{"k"}) || d.Err != nil || d.NotFound != 0 {
		t.Errorf("LoadDone %+v", d)
	}
	if d.Duration < 2*time.Millisecond {
		t.Errorf("LoadDone.Duration %v, want at least the loader's 2ms", d.Duration)
	}
	if d.Coalesced != joiners {
		t.Errorf("LoadDone.Coalesced %d, want %d", d.Coalesced, joiners)
	}
	if got := log.loaderCtx.Load(); got != "load-span" {
		t.Errorf("loader's ctx value %v, want LoadStart's ctx", got)
	}
	if log.doneCtx[0] != "load-span" {
		t.Errorf("LoadDone's ctx value %v, want LoadStart's ctx", log.doneCtx[0])
	}
	st := c.Stats().Loads
	if st.Latency.Count != 1 || st.LatencyHistogram.Count != 1 || st.LatencyHistogram.Sum < 2*time.Millisecond {
		t.Errorf("loader latency: %+v, histogram count %d sum %v; want one call of at least 2ms", st.Latency, st.LatencyHistogram.Count, st.LatencyHistogram.Sum)
	}
}

// A batch load reports its keys, its not-found keys and its error.
func TestObserverBatchLoad(t *testing.T) {
	ctx := context.Background()
	var log eventLog
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "obsb", Observer: log.observer()})
	got, err := c.GetManyOrLoad(ctx, []string{"a", "b", "c"}, func(ctx context.Context, keys []string) (map[string]string, error) {
		return map[string]string{"a": "1", "c": "3"}, nil
	})
	if err != nil || len(got) != 2 {
		t.Fatalf("GetManyOrLoad: %v %v", got, err)
	}
	boom := errors.New("db down")
	if _, err := c.GetManyOrLoad(ctx, []string{"x", "y"}, func(context.Context, []string) (map[string]string, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("failing batch: %v", err)
	}
	unlock := log.lock()
	defer unlock()
	if len(log.dones) != 2 {
		t.Fatalf("%d LoadDone events, want 2", len(log.dones))
	}
	first, second := log.dones[0], log.dones[1]
	slices.Sort(first.Keys)
	if !first.Batch || !slices.Equal(first.Keys, []string{"a", "b", "c"}) || first.NotFound != 1 || first.Err != nil {
		t.Errorf("first batch LoadDone %+v, want keys a b c, 1 not found, no error", first)
	}
	if !second.Batch || !errors.Is(second.Err, boom) {
		t.Errorf("failing batch LoadDone %+v, want its error", second)
	}
	if st := c.Stats().Loads; st.Latency.Count != 2 {
		t.Errorf("loader latency count %d, want 2", st.Latency.Count)
	}
}

// Writes to Redis are observed with their op, keys, outcome and ctx; an
// invalidation from another instance and a repair are observed too.
func TestObserverWritesAndInvalidations(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	var log eventLog
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "obsw", Observer: log.observer()})
	other := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "obsw"})
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "k", "j"); err != nil {
		t.Fatal(err)
	}
	if err := c.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "big", "v", WithVersion(2)); err != nil {
		t.Fatal(err)
	}
	staleErr := c.Set(ctx, "big", "older", WithVersion(1))
	if !errors.Is(staleErr, ErrStale) {
		t.Fatalf("older version: %v, want ErrStale", staleErr)
	}
	if err := other.Set(ctx, "from-other", "x"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the other instance's invalidation observed", func() bool {
		defer log.lock()()
		return slices.ContainsFunc(log.invals, func(ev InvalidationEvent) bool { return slices.Contains(ev.Keys, "from-other") })
	})
	handler[string]{c}.InvalidateAll(invalidation.CauseGap)

	unlock := log.lock()
	defer unlock()
	wantOps := []string{"set", "delete", "clear", "set", "set"}
	if len(log.wdones) != len(wantOps) || len(log.wstarts) != len(wantOps) {
		t.Fatalf("%d WriteStart, %d WriteDone, want %d each", len(log.wstarts), len(log.wdones), len(wantOps))
	}
	for i, op := range wantOps {
		if log.wstarts[i].Op != op || log.wdones[i].Op != op || log.wdones[i].Namespace != "obsw" {
			t.Errorf("write %d: start %+v done %+v, want op %s", i, log.wstarts[i], log.wdones[i], op)
		}
		if log.wdoneCtx[i] != "write-span" {
			t.Errorf("write %d: WriteDone ctx value %v, want WriteStart's", i, log.wdoneCtx[i])
		}
	}
	if k := log.wdones[1].Keys; !slices.Equal(k, []string{"k", "j"}) {
		t.Errorf("delete keys %v", k)
	}
	if log.wdones[2].Keys != nil {
		t.Errorf("clear keys %v, want nil", log.wdones[2].Keys)
	}
	if !errors.Is(log.wdones[4].Err, ErrStale) || log.wdones[3].Err != nil {
		t.Errorf("write errors: %v, %v; want nil, ErrStale", log.wdones[3].Err, log.wdones[4].Err)
	}
	if len(log.repairs) == 0 || log.repairs[len(log.repairs)-1].Cause != invalidation.CauseGap {
		t.Errorf("repairs %+v, want the last with CauseGap", log.repairs)
	}
}

// Every change of the breaker's state is observed, and so is a stale value
// served by fail-safe.
func TestObserverBreakerAndStale(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	var down atomic.Bool
	rc := newClient(t, mr.Addr())
	rc.AddHook(downHook{&down})
	var log eventLog
	const cooldown = 50 * time.Millisecond
	c := newCache(t, Config[string]{Redis: rc, Namespace: "obsk", Observer: log.observer(),
		BreakerFailures: 1, BreakerCooldown: cooldown, FailSafeMaxStale: time.Hour})
	if err := c.Set(ctx, "k", "old", WithTTL(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Millisecond) // let the 1 ms freshness pass
	boom := errors.New("db down")
	if v, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "", boom }); err != nil || v != "old" {
		t.Fatalf("fail-safe: %q %v, want the stale value", v, err)
	}
	down.Store(true)
	if _, err := c.Get(ctx, "other"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with Redis down: %v", err)
	}
	down.Store(false)
	eventually(t, "the breaker closed again", func() bool {
		_, err := c.Get(ctx, "other")
		return errors.Is(err, ErrNotFound)
	})

	unlock := log.lock()
	defer unlock()
	if len(log.stales) != 1 || log.stales[0].Key != "k" || !errors.Is(log.stales[0].Err, boom) {
		t.Errorf("stale events %+v, want one for k with the loader's error", log.stales)
	}
	want := []BreakerEvent{
		{Namespace: "obsk", From: BreakerClosed, To: BreakerOpen},
		{Namespace: "obsk", From: BreakerOpen, To: BreakerHalfOpen},
		{Namespace: "obsk", From: BreakerHalfOpen, To: BreakerClosed},
	}
	if !slices.Equal(log.breakers, want) {
		t.Errorf("breaker events %+v, want %+v", log.breakers, want)
	}
	if st := c.Stats().L2; st.Breaker != BreakerClosed || st.Breaker.String() != "closed" {
		t.Errorf("Stats.L2.Breaker %v", st.Breaker)
	}
}

// An L1 hit with every callback set still allocates nothing, and calls none.
func TestObserverL1HitFree(t *testing.T) {
	ctx := context.Background()
	var calls atomic.Int64
	count := func() { calls.Add(1) }
	obs := &Observer{
		LoadStart:      func(ctx context.Context, _ LoadStartEvent) context.Context { count(); return ctx },
		LoadDone:       func(context.Context, LoadDoneEvent) { count() },
		Invalidated:    func(InvalidationEvent) { count() },
		Repaired:       func(RepairEvent) { count() },
		BreakerChanged: func(BreakerEvent) { count() },
		StaleServed:    func(StaleEvent) { count() },
	}
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "obsh", Observer: obs})
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "k in L1", func() bool {
		_, _ = c.Get(ctx, "k")
		_, ok := c.hot.Get("k")
		return ok
	})
	calls.Store(0)
	allocs := testing.AllocsPerRun(1000, func() {
		if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
			t.Fatalf("Get: %q %v", v, err)
		}
	})
	if allocs != 0 || calls.Load() != 0 {
		t.Errorf("L1 hit with an Observer: %v allocs, %d callbacks; want 0, 0", allocs, calls.Load())
	}
}

// JoinObservers calls each in turn and threads the ctx through.
func TestJoinObservers(t *testing.T) {
	if JoinObservers(nil, nil) != nil {
		t.Error("JoinObservers of nils is not nil")
	}
	one := &Observer{}
	if JoinObservers(nil, one) != one {
		t.Error("JoinObservers of one is not that one")
	}
	var order []string
	mk := func(name string) *Observer {
		return &Observer{LoadStart: func(ctx context.Context, _ LoadStartEvent) context.Context {
			order = append(order, name+":"+fmtAny(ctx.Value(obsCtxKey{})))
			return context.WithValue(ctx, obsCtxKey{}, name)
		}}
	}
	j := JoinObservers(mk("a"), &Observer{}, mk("b"))
	ctx := j.LoadStart(context.Background(), LoadStartEvent{})
	if !slices.Equal(order, []string{"a:<nil>", "b:a"}) || ctx.Value(obsCtxKey{}) != "b" {
		t.Errorf("order %v, final ctx value %v", order, ctx.Value(obsCtxKey{}))
	}
	j.StaleServed(StaleEvent{}) // callbacks a member lacks are skipped
}

func fmtAny(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return "<nil>"
}

// Stats carries the stream's health, the round-trip histogram beside its
// percentiles, and the namespace through StatsSource.
func TestStatsExportable(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "exp"})
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	var src StatsSource = c
	st := src.Stats()
	if src.Namespace() != "exp" {
		t.Errorf("Namespace %q", src.Namespace())
	}
	if !st.Health.Healthy || st.Health.Reasons != 0 {
		t.Errorf("Health %+v, want healthy", st.Health)
	}
	lat, h := st.L2.Store.Latency, st.L2.Store.LatencyHistogram
	if lat.Count == 0 || h.Count != lat.Count || len(h.Counts) != len(h.Bounds) || h.Sum <= 0 {
		t.Errorf("round trips: percentiles count %d, histogram %+v", lat.Count, h)
	}
	local := newCache(t, Config[string]{Namespace: "local"})
	if st := local.Stats(); !st.Health.Healthy {
		t.Errorf("L1-only Health %+v, want healthy", st.Health)
	}
}
