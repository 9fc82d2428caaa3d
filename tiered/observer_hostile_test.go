package tiered

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/invalidation"
)

// catchPanic runs fn and returns what it panicked with (nil if it did not).
func catchPanic(fn func()) (r any) {
	defer func() { r = recover() }()
	fn()
	return nil
}

// noFlights fails t if c still has a flight registered.
func noFlights(t *testing.T, c *Cache[string]) {
	t.Helper()
	c.flightMu.Lock()
	n, g := len(c.flights), len(c.gets)
	c.flightMu.Unlock()
	if n != 0 || g != 0 {
		t.Errorf("%d load flights and %d get flights left registered, want none", n, g)
	}
}

// A panic in any Observer callback is the Observer's bug, not the Cache's:
// it is recovered and logged (once per episode, as a Warn that names the
// callback and carries the stack), the event is dropped, and the operation
// goes on as if no Observer were set: the loaded value, the written key,
// the stale value, the breaker's ErrUnavailable. Nothing is counted as a
// loader panic, no flight is left behind, and the next operation works and
// calls the Observer again.
func TestObserverPanicContained(t *testing.T) {
	ctx := context.Background()
	type env struct {
		c     *Cache[string]
		other *Cache[string] // another instance on the same Redis and namespace
		down  *atomic.Bool
	}
	load := func(_ context.Context, k string) (string, error) { return "v-" + k, nil }
	loadMany := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v-" + k
		}
		return m, nil
	}
	getOrLoad := func(lctx context.Context) func(*testing.T, env, int) {
		return func(t *testing.T, e env, i int) {
			k := fmt.Sprintf("k%d", i)
			if v, err := e.c.GetOrLoad(lctx, k, load); err != nil || v != "v-"+k {
				t.Errorf("GetOrLoad(%s) = %q, %v; want %q", k, v, err, "v-"+k)
			}
		}
	}
	getManyOrLoad := func(lctx context.Context) func(*testing.T, env, int) {
		return func(t *testing.T, e env, i int) {
			a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
			got, err := e.c.GetManyOrLoad(lctx, []string{a, b}, loadMany)
			if err != nil || got[a] != "v-"+a || got[b] != "v-"+b {
				t.Errorf("GetManyOrLoad = %v, %v; want both values", got, err)
			}
		}
	}
	set := func(t *testing.T, e env, i int) {
		k := fmt.Sprintf("w%d", i)
		if err := e.c.Set(ctx, k, "x"); err != nil {
			t.Errorf("Set: %v", err)
		}
		if v, err := e.other.Get(ctx, k); err != nil || v != "x" {
			t.Errorf("the written value read back: %q, %v", v, err)
		}
	}
	cases := []struct {
		name string
		hook func(*Observer, func())
		op   func(*testing.T, env, int)
	}{
		{"LoadStart/inline", func(o *Observer, p func()) {
			o.LoadStart = func(context.Context, LoadStartEvent) context.Context { p(); return nil }
		}, getOrLoad(ctx)},
		{"LoadStart/detached", func(o *Observer, p func()) {
			o.LoadStart = func(context.Context, LoadStartEvent) context.Context { p(); return nil }
		}, getOrLoad(canceledLater(t))},
		{"LoadStart/batch", func(o *Observer, p func()) {
			o.LoadStart = func(context.Context, LoadStartEvent) context.Context { p(); return nil }
		}, getManyOrLoad(ctx)},
		{"LoadDone/inline", func(o *Observer, p func()) { o.LoadDone = func(context.Context, LoadDoneEvent) { p() } }, getOrLoad(ctx)},
		{"LoadDone/detached", func(o *Observer, p func()) { o.LoadDone = func(context.Context, LoadDoneEvent) { p() } }, getOrLoad(canceledLater(t))},
		{"LoadDone/batch", func(o *Observer, p func()) { o.LoadDone = func(context.Context, LoadDoneEvent) { p() } }, getManyOrLoad(canceledLater(t))},
		{"WriteStart/set", func(o *Observer, p func()) {
			o.WriteStart = func(context.Context, WriteStartEvent) context.Context { p(); return nil }
		}, set},
		{"WriteDone/set", func(o *Observer, p func()) { o.WriteDone = func(context.Context, WriteDoneEvent) { p() } }, set},
		{"WriteDone/delete", func(o *Observer, p func()) { o.WriteDone = func(context.Context, WriteDoneEvent) { p() } },
			func(t *testing.T, e env, i int) {
				k := fmt.Sprintf("d%d", i)
				if err := e.other.Set(ctx, k, "x"); err != nil {
					t.Fatal(err)
				}
				if err := e.c.Delete(ctx, k); err != nil {
					t.Errorf("Delete: %v", err)
				}
				if _, err := e.other.Get(ctx, k); !errors.Is(err, ErrNotFound) {
					t.Errorf("the deleted key read back: %v, want ErrNotFound", err)
				}
			}},
		{"WriteStart/clear", func(o *Observer, p func()) {
			o.WriteStart = func(context.Context, WriteStartEvent) context.Context { p(); return nil }
		}, func(t *testing.T, e env, _ int) {
			if err := e.c.Clear(ctx); err != nil {
				t.Errorf("Clear: %v", err)
			}
		}},
		{"StaleServed", func(o *Observer, p func()) { o.StaleServed = func(StaleEvent) { p() } },
			func(t *testing.T, e env, i int) {
				k := fmt.Sprintf("s%d", i)
				if err := e.c.Set(ctx, k, "old", WithTTL(time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(3 * time.Millisecond) // let the 1 ms freshness pass
				boom := errors.New("db down")
				v, err := e.c.GetOrLoad(ctx, k, func(context.Context, string) (string, error) { return "", boom })
				if err != nil || v != "old" {
					t.Errorf("fail-safe: %q, %v; want the stale value", v, err)
				}
			}},
		{"BreakerChanged", func(o *Observer, p func()) { o.BreakerChanged = func(BreakerEvent) { p() } },
			func(t *testing.T, e env, i int) {
				e.down.Store(true)
				_, err := e.c.Get(ctx, fmt.Sprintf("b%d", i)) // opens the breaker
				e.down.Store(false)
				var pe *PanicError
				if !errors.Is(err, ErrUnavailable) || errors.As(err, &pe) {
					t.Errorf("Get with Redis down: %v, want ErrUnavailable", err)
				}
				eventually(t, "the breaker closed again", func() bool {
					_, err := e.c.Get(ctx, "absent")
					return errors.Is(err, ErrNotFound)
				})
				if st := e.c.Stats().L2.Breaker; st != BreakerClosed {
					t.Errorf("breaker %v, want closed", st)
				}
			}},
		{"Invalidated", func(o *Observer, p func()) { o.Invalidated = func(InvalidationEvent) { p() } },
			func(t *testing.T, e env, i int) {
				// Delivered by the bus's worker: a panic there must not end
				// the process, nor stop the stream.
				k := fmt.Sprintf("i%d", i)
				if _, err := e.c.GetOrLoad(ctx, k, load); err != nil {
					t.Fatal(err)
				}
				eventually(t, "the value in L1", func() bool { _, ok := e.c.hot.Get(k); return ok })
				if err := e.other.Set(ctx, k, "new"); err != nil {
					t.Fatal(err)
				}
				eventually(t, "the other instance's write seen", func() bool {
					v, _ := e.c.Get(ctx, k)
					return v == "new"
				})
			}},
		{"Repaired", func(o *Observer, p func()) { o.Repaired = func(RepairEvent) { p() } },
			func(t *testing.T, e env, _ int) {
				if r := catchPanic(func() { handler[string]{e.c}.InvalidateAll(invalidation.CauseGap) }); r != nil {
					t.Errorf("InvalidateAll panicked: %v", r)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			var down atomic.Bool
			rc := newClient(t, mr.Addr())
			rc.AddHook(downHook{&down})
			core, logs := observer.New(zapcore.DebugLevel)
			var calls atomic.Int64
			obs := &Observer{}
			tc.hook(obs, func() {
				calls.Add(1)
				panic("observer bug")
			})
			c := newCache(t, Config[string]{Redis: rc, Namespace: "opanic", Observer: obs, Logger: zap.New(core),
				BreakerFailures: 1, BreakerCooldown: 20 * time.Millisecond, FailSafeMaxStale: time.Hour})
			other := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "opanic"})
			e := env{c: c, other: other, down: &down}
			for i := range 2 {
				if r := catchPanic(func() { tc.op(t, e, i) }); r != nil {
					t.Fatalf("the Observer's panic reached the caller: %v", r)
				}
			}
			if calls.Load() < 2 {
				t.Errorf("the panicking callback was called %d times over two operations, want it called each time", calls.Load())
			}
			if p := c.Stats().Loads.Panics; p != 0 {
				t.Errorf("Stats.Loads.Panics %d, want 0: no loader panicked", p)
			}
			noFlights(t, c)
			warns := logs.FilterMessage(msgObserverPanics).All()
			if len(warns) != 1 {
				t.Fatalf("%d %q log lines, want 1 (one episode)", len(warns), msgObserverPanics)
			}
			f := warns[0].ContextMap()
			if msg, _ := f["error"].(string); !strings.Contains(msg, "Observer."+strings.Split(tc.name, "/")[0]) || !strings.Contains(msg, "observer bug") {
				t.Errorf("logged error %q, want the callback's name and the panic value", msg)
			}
			if st, _ := f["errorVerbose"].(string); !strings.Contains(st, "observer_hostile_test.go") {
				t.Errorf("logged errorVerbose %q, want the panicking stack", st)
			}
		})
	}
}

// canceledLater returns a context that is cancelled at the end of the test:
// a caller with it does not lead inline (see canLeadInline).
func canceledLater(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// LoadDone follows every LoadStart, also when the loader panics or exits
// through runtime.Goexit, so that a span started in LoadStart is always
// ended: a panic is reported as the *PanicError the callers get.
func TestObserverLoadDoneAfterPanic(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		for _, how := range []string{"panic", "goexit"} {
			t.Run(lc.name+"/"+how, func(t *testing.T) {
				var log eventLog
				c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "opd", Observer: log.observer()})
				die := func() {
					if how == "panic" {
						panic("loader bug")
					}
					runtime.Goexit()
				}
				_, err := c.GetOrLoad(lc.ctx, "k", func(context.Context, string) (string, error) { die(); return "", nil })
				if err == nil {
					t.Fatal("GetOrLoad of a dying loader: no error")
				}
				_, berr := c.GetManyOrLoad(lc.ctx, []string{"a", "b"}, func(context.Context, []string) (map[string]string, error) {
					die()
					return nil, nil
				})
				if berr == nil {
					t.Fatal("GetManyOrLoad of a dying loader: no error")
				}
				noFlights(t, c)
				defer log.lock()()
				if len(log.starts) != 2 || len(log.dones) != 2 {
					t.Fatalf("%d LoadStart, %d LoadDone; want 2 and 2", len(log.starts), len(log.dones))
				}
				for i, d := range log.dones {
					if d.Err == nil || log.doneCtx[i] != "load-span" {
						t.Errorf("LoadDone %d: %+v with ctx value %v, want an error and LoadStart's ctx", i, d, log.doneCtx[i])
					}
					var pe *PanicError
					if how == "panic" && (!errors.As(d.Err, &pe) || pe.Value != "loader bug") {
						t.Errorf("LoadDone %d: Err %v, want the *PanicError of the loader's panic", i, d.Err)
					}
				}
				if how == "panic" {
					var pe *PanicError
					if !errors.As(err, &pe) || !errors.As(berr, &pe) {
						t.Errorf("callers' errors %v, %v; want *PanicError", err, berr)
					}
					if p := c.Stats().Loads.Panics; p != 2 {
						t.Errorf("Stats.Loads.Panics %d, want 2", p)
					}
				}
				if !slices.Equal(log.dones[1].Keys, []string{"a", "b"}) || !log.dones[1].Batch {
					t.Errorf("batch LoadDone %+v", log.dones[1])
				}
			})
		}
	}
}

// JoinObservers: a member whose LoadStart or WriteStart returns nil leaves
// the ctx as it was for the next member (which must never get a nil ctx).
// A member that panics does not keep the others from their events, nor
// lose the ctx the members before it returned: each member's LoadDone gets
// its own LoadStart's ctx.
func TestJoinObserversHostileMember(t *testing.T) {
	var got []any
	var mu sync.Mutex
	nilRet := &Observer{
		LoadStart:  func(context.Context, LoadStartEvent) context.Context { return nil },
		WriteStart: func(context.Context, WriteStartEvent) context.Context { return nil },
	}
	check := &Observer{LoadStart: func(ctx context.Context, _ LoadStartEvent) context.Context {
		mu.Lock()
		defer mu.Unlock()
		if ctx == nil {
			got = append(got, "nil ctx")
			return nil
		}
		got = append(got, ctx.Value(obsCtxKey{}))
		return ctx
	}, WriteStart: func(ctx context.Context, _ WriteStartEvent) context.Context {
		if ctx == nil {
			panic("nil ctx in WriteStart")
		}
		return ctx
	}}
	j := JoinObservers(nilRet, check)
	base := context.WithValue(context.Background(), obsCtxKey{}, "base")
	if r := catchPanic(func() {
		if ctx := j.LoadStart(base, LoadStartEvent{}); ctx == nil || ctx.Value(obsCtxKey{}) != "base" {
			t.Errorf("joined LoadStart returned %v, want the ctx it was given", ctx)
		}
		if ctx := j.WriteStart(base, WriteStartEvent{}); ctx == nil {
			t.Error("joined WriteStart returned nil")
		}
	}); r != nil {
		t.Errorf("joined callbacks panicked: %v", r)
	}
	if !slices.Equal(got, []any{"base"}) {
		t.Errorf("the second member's LoadStart saw %v, want the ctx the first was given", got)
	}

	// In a Cache: a panicking member between two span-like members.
	var log eventLog
	var afterCalls atomic.Int64
	panicky := &Observer{
		LoadStart: func(context.Context, LoadStartEvent) context.Context { panic("member bug") },
		LoadDone:  func(context.Context, LoadDoneEvent) { panic("member bug") },
	}
	after := &Observer{LoadDone: func(ctx context.Context, ev LoadDoneEvent) {
		afterCalls.Add(1)
		if ctx.Value(obsCtxKey{}) != "load-span" {
			t.Errorf("last member's LoadDone ctx value %v, want the first member's", ctx.Value(obsCtxKey{}))
		}
	}}
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "ojoin",
		Observer: JoinObservers(log.observer(), panicky, after)})
	if v, err := c.GetOrLoad(context.Background(), "k", func(ctx context.Context, k string) (string, error) {
		if ctx.Value(obsCtxKey{}) != "load-span" {
			t.Errorf("loader ctx value %v, want the first member's", ctx.Value(obsCtxKey{}))
		}
		return "v", nil
	}); err != nil || v != "v" {
		t.Fatalf("GetOrLoad: %q %v", v, err)
	}
	defer log.lock()()
	if len(log.dones) != 1 || log.doneCtx[0] != "load-span" || afterCalls.Load() != 1 {
		t.Errorf("first member: %d LoadDone (ctx %v); last member: %d; want 1 with its own ctx, and 1", len(log.dones), log.doneCtx, afterCalls.Load())
	}
}

// A key repeated in one GetManyOrLoad call is not a caller that joined a
// flight: neither LoadDone.Coalesced nor Stats.Loads count it. A
// single-key caller that joins the batch's flight is counted.
func TestCoalescedRepeatedBatchKeys(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) {
			var log eventLog
			c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "orep", Observer: log.observer()})
			gate := make(chan struct{})
			load := func(_ context.Context, keys []string) (map[string]string, error) {
				<-gate
				return map[string]string{"a": "A", "b": "B"}, nil
			}
			done := make(chan error, 1)
			go func() {
				got, err := c.GetManyOrLoad(lc.ctx, []string{"a", "b", "a", "a", "b"}, load)
				if err == nil && (got["a"] != "A" || got["b"] != "B" || len(got) != 2) {
					err = fmt.Errorf("got %v", got)
				}
				done <- err
			}()
			eventually(t, "the batch's flights", func() bool { return c.Stats().Loads.Flights == 2 })
			before := c.Stats().Loads.Callers
			joined := make(chan error, 1)
			go func() {
				v, err := c.GetOrLoad(context.Background(), "a", func(context.Context, string) (string, error) { return "", errors.New("joiner's loader ran") })
				if err == nil && v != "A" {
					err = fmt.Errorf("joiner got %q", v)
				}
				joined <- err
			}()
			eventually(t, "the joiner waiting", func() bool { return c.Stats().Loads.Callers == before+1 })
			close(gate)
			if err := <-done; err != nil {
				t.Fatalf("GetManyOrLoad: %v", err)
			}
			if err := <-joined; err != nil {
				t.Fatalf("joiner: %v", err)
			}
			if st := c.Stats().Loads; st.Callers != 3 || st.Flights != 2 || st.Coalesced != 1 {
				t.Errorf("Stats.Loads callers %d, flights %d, coalesced %d; want 3, 2, 1", st.Callers, st.Flights, st.Coalesced)
			}
			defer log.lock()()
			if len(log.dones) != 1 || log.dones[0].Coalesced != 1 {
				t.Errorf("LoadDone events %+v, want one with Coalesced 1 (the single-key joiner)", log.dones)
			}
		})
	}
}

// Callbacks may read the Cache's Stats (the one call the Observer's doc
// allows on the Cache that calls them) and use another Cache: nothing is
// held that either needs, whichever goroutine the event comes from.
func TestObserverCallsStatsAndOtherCache(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	var down atomic.Bool
	rc := newClient(t, mr.Addr())
	rc.AddHook(downHook{&down})
	side := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "oside"})
	var self atomic.Pointer[Cache[string]]
	var events atomic.Int64
	use := func() {
		events.Add(1)
		if c := self.Load(); c != nil {
			_ = c.Stats()
		}
		if err := side.Set(ctx, "seen", "x"); err != nil {
			t.Errorf("the other Cache's Set in a callback: %v", err)
		}
		if _, err := side.GetOrLoad(ctx, "side", func(context.Context, string) (string, error) { return "s", nil }); err != nil {
			t.Errorf("the other Cache's GetOrLoad in a callback: %v", err)
		}
	}
	obs := &Observer{
		LoadStart:      func(ctx context.Context, _ LoadStartEvent) context.Context { use(); return ctx },
		LoadDone:       func(context.Context, LoadDoneEvent) { use() },
		WriteStart:     func(ctx context.Context, _ WriteStartEvent) context.Context { use(); return ctx },
		WriteDone:      func(context.Context, WriteDoneEvent) { use() },
		Invalidated:    func(InvalidationEvent) { use() },
		Repaired:       func(RepairEvent) { use() },
		BreakerChanged: func(BreakerEvent) { use() },
		StaleServed:    func(StaleEvent) { use() },
	}
	c := newCache(t, Config[string]{Redis: rc, Namespace: "ostats", Observer: obs,
		BreakerFailures: 1, BreakerCooldown: 20 * time.Millisecond, FailSafeMaxStale: time.Hour})
	self.Store(c)
	other := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "ostats"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, lctx := range []context.Context{ctx, canceledLater(t)} {
			if _, err := c.GetOrLoad(lctx, "k", func(context.Context, string) (string, error) { return "v", nil }); err != nil {
				t.Errorf("GetOrLoad: %v", err)
			}
			if _, err := c.GetManyOrLoad(lctx, []string{"a", "b"}, func(context.Context, []string) (map[string]string, error) {
				return map[string]string{"a": "1"}, nil
			}); err != nil {
				t.Errorf("GetManyOrLoad: %v", err)
			}
			if err := c.Delete(lctx, "k", "a"); err != nil {
				t.Errorf("Delete: %v", err)
			}
		}
		if err := c.Set(ctx, "s", "old", WithTTL(time.Millisecond)); err != nil {
			t.Errorf("Set: %v", err)
		}
		time.Sleep(3 * time.Millisecond)
		if v, err := c.GetOrLoad(ctx, "s", func(context.Context, string) (string, error) { return "", errors.New("down") }); v != "old" {
			t.Errorf("fail-safe: %q %v", v, err)
		}
		if err := other.Set(ctx, "s", "new"); err != nil {
			t.Errorf("other.Set: %v", err)
		}
		handler[string]{c}.InvalidateAll(invalidation.CauseGap)
		down.Store(true)
		_, _ = c.Get(ctx, "x")
		down.Store(false)
		eventually(t, "the breaker closed again", func() bool {
			_, err := c.Get(ctx, "absent")
			return errors.Is(err, ErrNotFound)
		})
		if err := c.Clear(ctx); err != nil {
			t.Errorf("Clear: %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("operations with callbacks that call Stats and another Cache did not finish: deadlock")
	}
	if n := events.Load(); n < 20 {
		t.Errorf("%d events, want every kind several times", n)
	}
}

// The breaker flaps while Stats is read and BreakerChanged keeps the last
// state it heard of: under -race nothing races, the events chain (each
// From is the previous To), and once the flapping stops the last state
// heard of is the one Stats reports.
func TestObserverBreakerChangedVsStats(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	var down atomic.Bool
	rc := newClient(t, mr.Addr())
	rc.AddHook(downHook{&down})
	var mu sync.Mutex
	var events []BreakerEvent
	var self atomic.Pointer[Cache[string]]
	obs := &Observer{BreakerChanged: func(ev BreakerEvent) {
		if c := self.Load(); c != nil {
			_ = c.Stats().L2.Breaker
		}
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}}
	c := newCache(t, Config[string]{Redis: rc, Namespace: "oflap", Observer: obs,
		BreakerFailures: 2, BreakerCooldown: time.Millisecond})
	self.Store(c)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = c.Stats()
			}
		}
	})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = c.Get(ctx, fmt.Sprintf("g%d-%d", g, i%8))
			}
		})
	}
	for range 30 {
		down.Store(true)
		time.Sleep(2 * time.Millisecond)
		down.Store(false)
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	eventually(t, "the breaker closed again", func() bool {
		_, err := c.Get(ctx, "absent")
		return errors.Is(err, ErrNotFound) && c.Stats().L2.Breaker == BreakerClosed
	})
	mu.Lock()
	defer mu.Unlock()
	if len(events) < 3 {
		t.Fatalf("%d breaker events over 30 outages, want several", len(events))
	}
	prev := BreakerClosed
	for i, ev := range events {
		if ev.From != prev || ev.From == ev.To {
			t.Fatalf("event %d: %v -> %v after a change to %v", i, ev.From, ev.To, prev)
		}
		prev = ev.To
	}
	if prev != BreakerClosed {
		t.Errorf("last state heard of %v, Stats says closed", prev)
	}
}

// In L1-only mode writes never reach Redis, so WriteStart and WriteDone
// are not called (as documented), while loads are observed as with Redis.
// A LoadStart that returns nil leaves the loader the load's own ctx.
func TestObserverL1Only(t *testing.T) {
	type key struct{}
	ctx := context.WithValue(context.Background(), key{}, "caller")
	var writes, loads atomic.Int64
	obs := &Observer{
		LoadStart:  func(context.Context, LoadStartEvent) context.Context { loads.Add(1); return nil },
		LoadDone:   func(context.Context, LoadDoneEvent) { loads.Add(1) },
		WriteStart: func(ctx context.Context, _ WriteStartEvent) context.Context { writes.Add(1); return ctx },
		WriteDone:  func(context.Context, WriteDoneEvent) { writes.Add(1) },
	}
	c := newCache(t, Config[string]{Namespace: "olocal", Observer: obs})
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.SetMany(ctx, map[string]string{"a": "1"}, WithVersion(3)); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if err := c.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := c.GetOrLoad(ctx, "x", func(lctx context.Context, _ string) (string, error) {
		if lctx == nil || lctx.Value(key{}) != "caller" {
			t.Errorf("loader ctx %v, want the load's ctx with the caller's values", lctx)
		}
		return "X", nil
	})
	if err != nil || v != "X" {
		t.Fatalf("GetOrLoad: %q %v", v, err)
	}
	if w, l := writes.Load(), loads.Load(); w != 0 || l != 2 {
		t.Errorf("%d write callbacks, %d load callbacks; want 0 and 2", w, l)
	}
}
