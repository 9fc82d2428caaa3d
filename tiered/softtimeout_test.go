package tiered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// softTimeout is Config.SoftTimeout in these tests, and softBound how long
// past it a caller may take on a busy machine to get the stale value.
const (
	softTimeout = 100 * time.Millisecond
	softBound   = softTimeout + time.Second
)

// softMode is how a caller waits: with a ctx that cannot end it leads an
// inline flight (or batch) itself; with a cancellable one it starts a
// DoChan flight (or a batch on its own goroutine).
type softMode struct {
	name   string
	ctx    func(t *testing.T) context.Context
	inline bool
}

func softModes() []softMode {
	return []softMode{
		{"inline", func(*testing.T) context.Context { return context.Background() }, true},
		{"DoChan", func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			return ctx
		}, false},
	}
}

// staleEvents records Observer.StaleServed.
type staleEvents struct {
	mu  sync.Mutex
	evs []StaleEvent
}

func (s *staleEvents) add(ev StaleEvent) {
	s.mu.Lock()
	s.evs = append(s.evs, ev)
	s.mu.Unlock()
}

func (s *staleEvents) all() []StaleEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]StaleEvent(nil), s.evs...)
}

// softEnv is a Cache with fail-safe and a soft timeout, its logs and stale
// events, and a peer Cache on the same Redis and namespace (an L1 of its
// own: its Get reads what Redis holds).
type softEnv struct {
	c, peer *Cache[string]
	logs    *observer.ObservedLogs
	events  *staleEvents
}

func newSoftEnv(t *testing.T, rc redis.UniversalClient, ns string, cfg Config[string]) *softEnv {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	events := &staleEvents{}
	cfg.Redis, cfg.Namespace, cfg.Logger = rc, ns, zap.New(core)
	cfg.Observer = &Observer{StaleServed: events.add}
	c := newCache(t, cfg)
	peer := newCache(t, Config[string]{Redis: rc, Namespace: ns, FailSafeMaxStale: time.Hour})
	return &softEnv{c: c, peer: peer, logs: logs, events: events}
}

func softConfig() Config[string] {
	return Config[string]{FailSafeMaxStale: time.Hour, SoftTimeout: softTimeout, FailSafeRetryAfter: time.Minute}
}

// putStale writes the values in Redis with a freshness of 1 ms, through
// the peer, and waits until they are stale (within FailSafeMaxStale) and
// their invalidations have reached c: one arriving later would make c
// forget the load it starts for the key (and so serve no stale value).
func (e *softEnv) putStale(t *testing.T, values map[string]string) {
	t.Helper()
	applied := e.c.Stats().Invalidation.Applied
	for k, v := range values {
		if err := e.peer.Set(context.Background(), k, v, WithTTL(time.Millisecond)); err != nil {
			t.Fatalf("Set %s: %v", k, err)
		}
	}
	written := time.Now()
	eventually(t, "the invalidations of the stale values", func() bool {
		return e.c.Stats().Invalidation.Applied >= applied+uint64(len(values))
	})
	for time.Since(written) < 3*time.Millisecond { // let the 1 ms freshness pass
		time.Sleep(time.Millisecond)
	}
}

// redisHolds reports whether Redis holds the fresh value want for key, as
// the peer reads it.
func (e *softEnv) redisHolds(key, want string) bool {
	v, err := e.peer.Get(context.Background(), key)
	return err == nil && v == want
}

// getSoft checks that GetOrLoad of key with the slow loader load returns
// the stale value want by the soft timeout.
func (e *softEnv) getSoft(t *testing.T, ctx context.Context, key string, load Loader[string], want string) {
	t.Helper()
	start := time.Now()
	v, err := e.c.GetOrLoad(ctx, key, load)
	if elapsed := time.Since(start); err != nil || v != want || elapsed < softTimeout || elapsed > softBound {
		t.Fatalf("GetOrLoad with a slow loader: %q, %v after %v; want the stale value %q after SoftTimeout (%v), within %v",
			v, err, elapsed, want, softTimeout, softBound)
	}
}

// loudLogs returns the entries logged at Warn or above.
func (e *softEnv) loudLogs() []observer.LoggedEntry {
	return e.logs.Filter(func(le observer.LoggedEntry) bool { return le.Level >= zapcore.WarnLevel }).All()
}

// heldLoader is a Loader that blocks until released, then returns
// value(key), or err if set.
type heldLoader struct {
	started chan string   // the key, each time the loader is called
	release chan struct{} // closed to let every call return
	once    sync.Once
	value   func(key string) string
	err     error
}

func newHeldLoader(t *testing.T) *heldLoader {
	g := &heldLoader{started: make(chan string, 16), release: make(chan struct{}),
		value: func(k string) string { return "new-" + k }}
	t.Cleanup(g.open) // before the Caches' Close, which waits for the load
	return g
}

func (g *heldLoader) open() { g.once.Do(func() { close(g.release) }) }

// called reports a call of the loader (without blocking: a test waits for
// the first calls only).
func (g *heldLoader) called(what string) {
	select {
	case g.started <- what:
	default:
	}
}

func (g *heldLoader) load(ctx context.Context, key string) (string, error) {
	g.called(key)
	select {
	case <-g.release:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if g.err != nil {
		return "", g.err
	}
	return g.value(key), nil
}

func (g *heldLoader) loadMany(ctx context.Context, keys []string) (map[string]string, error) {
	g.called(strings.Join(keys, ","))
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if g.err != nil {
		return nil, g.err
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = g.value(k)
	}
	return out, nil
}

// awaitStart waits (bounded) for the loader to be called and returns what
// it was called for.
func (g *heldLoader) awaitStart(t *testing.T) string {
	t.Helper()
	select {
	case k := <-g.started:
		return k
	case <-time.After(5 * time.Second):
		t.Fatal("the loader was not called within 5s")
		return ""
	}
}

// notCalled is a Loader for callers that must be served without one.
func notCalled(t *testing.T) Loader[string] {
	return func(_ context.Context, key string) (string, error) {
		t.Errorf("loader called for %q; want the caller served without its own load", key)
		return "", errors.New("unexpected load")
	}
}

// checkFlightKind checks that key's running load is the kind of flight
// mode starts.
func checkFlightKind(t *testing.T, c *Cache[string], key string, mode softMode) {
	t.Helper()
	c.flightMu.Lock()
	f := c.flights[key]
	c.flightMu.Unlock()
	switch {
	case f == nil:
		t.Fatalf("no flight for %q while its loader runs", key)
	case mode.inline && f.sf != nil:
		t.Fatalf("flight for %q is a DoChan flight; want an inline one", key)
	case !mode.inline && f.sf == nil:
		t.Fatalf("flight for %q is not a DoChan flight", key)
	}
}

// flightEnded waits (bounded) until key has no running load: a caller then
// starts afresh instead of joining the load that served a stale value.
func flightEnded(t *testing.T, c *Cache[string], key string) {
	t.Helper()
	eventually(t, "the end of the flight of "+key, func() bool {
		c.flightMu.Lock()
		defer c.flightMu.Unlock()
		return c.flights[key] == nil
	})
}

// joinedBy waits (bounded) until n callers have joined key's running load.
func joinedBy(t *testing.T, c *Cache[string], key string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d callers joining the flight of %s", n, key), func() bool {
		c.flightMu.Lock()
		defer c.flightMu.Unlock()
		f := c.flights[key]
		return f != nil && int(f.joined) >= n
	})
}

// checkSoftEvents checks that the Observer heard exactly the soft-timeout
// serves of keys (one per caller and key) and nothing else.
func checkSoftEvents(t *testing.T, e *softEnv, keys ...string) {
	t.Helper()
	evs := e.events.all()
	var got []string
	for _, ev := range evs {
		if !ev.SoftTimeout || ev.Err != nil || ev.Namespace != e.c.Namespace() {
			t.Errorf("stale event %+v; want SoftTimeout set, Err nil, namespace %q", ev, e.c.Namespace())
		}
		got = append(got, ev.Key)
	}
	if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(keys)) {
		t.Errorf("soft-timeout events for keys %v; want %v", got, keys)
	}
	st := e.c.Stats().Loads
	if st.StaleServedSoftTimeout != uint64(len(keys)) || st.StaleServed != 0 {
		t.Errorf("StaleServedSoftTimeout %d, StaleServed %d; want %d and 0", st.StaleServedSoftTimeout, st.StaleServed, len(keys))
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestSoftTimeoutServesStale: with a stale value in Redis and a loader
// that blocks, the caller gets the stale value once the soft timeout has
// passed, a caller joining later gets it at once, neither fills L1 with it
// or logs anything, each is counted and reported once; the load goes on and
// its value reaches Redis and the callers after it.
func TestSoftTimeoutServesStale(t *testing.T) {
	for _, srv := range servers() {
		for _, mode := range softModes() {
			t.Run(srv.name+"/"+mode.name, func(t *testing.T) {
				e := newSoftEnv(t, srv.client(t), "soft", softConfig())
				ctx := mode.ctx(t)
				e.putStale(t, map[string]string{"k": "old"})
				g := newHeldLoader(t)

				start := time.Now()
				v, err := e.c.GetOrLoad(ctx, "k", g.load)
				elapsed := time.Since(start)
				if err != nil || v != "old" {
					t.Fatalf("GetOrLoad with a slow loader: %q, %v; want the stale value %q", v, err, "old")
				}
				if elapsed < softTimeout || elapsed > softBound {
					t.Fatalf("stale value served after %v; want between SoftTimeout (%v) and %v", elapsed, softTimeout, softBound)
				}
				if k := g.awaitStart(t); k != "k" {
					t.Fatalf("loader called for %q, want k", k)
				}
				checkFlightKind(t, e.c, "k", mode)

				start = time.Now()
				v, err = e.c.GetOrLoad(ctx, "k", notCalled(t))
				if elapsed := time.Since(start); err != nil || v != "old" || elapsed > time.Second {
					t.Fatalf("joining caller: %q, %v after %v; want %q at once", v, err, elapsed, "old")
				}
				e.c.local.(interface{ Wait() }).Wait()
				if it, ok := e.c.hot.Get("k"); ok {
					t.Fatalf("L1 holds %+v while the load runs; want no local copy of the stale value", it)
				}
				checkSoftEvents(t, e, "k", "k")

				g.open()
				flightEnded(t, e.c, "k")
				if !e.redisHolds("k", "new-k") {
					v, err := e.peer.Get(ctx, "k")
					t.Fatalf("Redis holds %q (%v) after the load; want the loaded value", v, err)
				}
				if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "new-k" {
					t.Fatalf("GetOrLoad after the load: %q, %v; want the loaded value", v, err)
				}
				st := e.c.Stats().Loads
				if st.LoaderCalls != 1 || st.LoaderErrors != 0 || st.Conflicts != 0 {
					t.Fatalf("loader calls %d, errors %d, conflicts %d; want 1, 0, 0", st.LoaderCalls, st.LoaderErrors, st.Conflicts)
				}
				checkSoftEvents(t, e, "k", "k")
				if l := e.loudLogs(); len(l) > 0 {
					t.Fatalf("logged at Warn or above: %+v; want nothing", l)
				}
			})
		}
	}
}

// TestSoftTimeoutLoaderFailsLate: a loader that fails after the soft
// timeout served the stale value changes nothing for the callers: nothing
// more is served, counted as fail-safe or logged, and no local copy of the
// stale value keeps the next caller from loading again.
func TestSoftTimeoutLoaderFailsLate(t *testing.T) {
	for _, mode := range softModes() {
		t.Run(mode.name, func(t *testing.T) {
			e := newSoftEnv(t, servers()[1].client(t), "soft-late", softConfig())
			ctx := mode.ctx(t)
			e.putStale(t, map[string]string{"k": "old"})
			g := newHeldLoader(t)
			g.err = errors.New("database down")
			e.getSoft(t, ctx, "k", g.load, "old")
			g.awaitStart(t)
			g.open()
			flightEnded(t, e.c, "k")
			if n := e.c.Stats().Loads.LoaderErrors; n != 1 {
				t.Fatalf("%d loader errors; want 1", n)
			}
			checkSoftEvents(t, e, "k")
			if l := e.loudLogs(); len(l) > 0 {
				t.Fatalf("logged at Warn or above: %+v; want nothing", l)
			}
			// Not kept locally: the next caller loads again (and Redis
			// still holds the stale value for it).
			var fresh countingLoader
			v, err := e.c.GetOrLoad(ctx, "k", func(ctx context.Context, k string) (string, error) {
				u, err := fresh.load(ctx, k)
				return u.Name + "!", err
			})
			if err != nil || v != "k!" || fresh.calls.Load() != 1 {
				t.Fatalf("next GetOrLoad: %q, %v with %d loader calls; want the loaded value from one call", v, err, fresh.calls.Load())
			}
		})
	}
}

// TestSoftTimeoutLoaderFailsFirst: a loader that fails before the soft
// timeout is answered by classic fail-safe: the stale value, counted in
// StaleServed, reported with the loader's error, logged, and kept locally
// for FailSafeRetryAfter.
func TestSoftTimeoutLoaderFailsFirst(t *testing.T) {
	for _, mode := range softModes() {
		t.Run(mode.name, func(t *testing.T) {
			cfg := softConfig()
			cfg.SoftTimeout = time.Minute // the loader fails long before
			e := newSoftEnv(t, servers()[1].client(t), "soft-first", cfg)
			ctx := mode.ctx(t)
			e.putStale(t, map[string]string{"k": "old"})
			down := errors.New("database down")
			var calls countingLoader
			failing := func(ctx context.Context, k string) (string, error) {
				calls.load(ctx, k)
				return "", down
			}
			if v, err := e.c.GetOrLoad(ctx, "k", failing); err != nil || v != "old" {
				t.Fatalf("GetOrLoad with a failing loader: %q, %v; want the stale value", v, err)
			}
			st := e.c.Stats().Loads
			if st.StaleServed != 1 || st.StaleServedSoftTimeout != 0 {
				t.Fatalf("StaleServed %d, StaleServedSoftTimeout %d; want 1 and 0", st.StaleServed, st.StaleServedSoftTimeout)
			}
			evs := e.events.all()
			if len(evs) != 1 || evs[0].SoftTimeout || !errors.Is(evs[0].Err, down) || evs[0].Key != "k" {
				t.Fatalf("stale events %+v; want one for k with the loader's error, SoftTimeout false", evs)
			}
			if n := e.logs.FilterMessage(msgStaleServes).FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
				t.Fatalf("%d Warn %q; want 1", n, msgStaleServes)
			}
			e.c.local.(interface{ Wait() }).Wait()
			if v, err := e.c.GetOrLoad(ctx, "k", failing); err != nil || v != "old" || calls.calls.Load() != 1 {
				t.Fatalf("GetOrLoad within FailSafeRetryAfter: %q, %v, %d loader calls; want the local stale copy, 1 call", v, err, calls.calls.Load())
			}
		})
	}
}

// TestSoftTimeoutNoStale: without a stale value at hand (none in Redis, or
// fail-safe off in this Cache) callers wait for the loader, however slow.
func TestSoftTimeoutNoStale(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failSafe time.Duration
		stale    bool // a stale value in Redis (written by a peer with fail-safe)
	}{
		{"nothing in Redis", time.Hour, false},
		{"fail-safe off", 0, true},
	} {
		for _, mode := range softModes() {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				cfg := softConfig()
				cfg.FailSafeMaxStale = tc.failSafe
				e := newSoftEnv(t, servers()[1].client(t), "soft-none", cfg)
				ctx := mode.ctx(t)
				if tc.stale {
					e.putStale(t, map[string]string{"k": "old"})
				}
				g := newHeldLoader(t)
				type result struct {
					v   string
					err error
				}
				done := make(chan result, 1)
				go func() {
					v, err := e.c.GetOrLoad(ctx, "k", g.load)
					done <- result{v, err}
				}()
				g.awaitStart(t)
				// Whatever the machine's load, a caller served early would
				// have returned by now: the timer fires 100 ms after the
				// loader was called.
				select {
				case r := <-done:
					t.Fatalf("GetOrLoad returned %q, %v before the loader; want it to wait", r.v, r.err)
				case <-time.After(5 * softTimeout):
				}
				g.open()
				select {
				case r := <-done:
					if r.err != nil || r.v != "new-k" {
						t.Fatalf("GetOrLoad: %q, %v; want the loaded value", r.v, r.err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("GetOrLoad did not return within 5s of the loader's release")
				}
				if n := e.c.Stats().Loads.StaleServedSoftTimeout; n != 0 || len(e.events.all()) != 0 {
					t.Fatalf("StaleServedSoftTimeout %d, events %v; want none", n, e.events.all())
				}
			})
		}
	}
}

// TestSoftTimeoutWriteWins: a write of the key while the detached load runs
// wins: after it, callers get the written value, never the stale one, and
// the load's late value is neither written back nor served.
func TestSoftTimeoutWriteWins(t *testing.T) {
	for _, writer := range []string{"own", "peer"} {
		for _, mode := range softModes() {
			t.Run(writer+"/"+mode.name, func(t *testing.T) {
				e := newSoftEnv(t, servers()[1].client(t), "soft-write", softConfig())
				ctx := mode.ctx(t)
				e.putStale(t, map[string]string{"k": "old"})
				g := newHeldLoader(t)
				e.getSoft(t, ctx, "k", g.load, "old")
				g.awaitStart(t)
				w := e.c
				if writer == "peer" {
					w = e.peer
				}
				if err := w.Set(ctx, "k", "written"); err != nil {
					t.Fatalf("Set: %v", err)
				}
				// The invalidation (the peer's through pub/sub) makes c forget
				// the running load: the next caller starts afresh.
				flightEnded(t, e.c, "k")
				if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "written" {
					t.Fatalf("GetOrLoad after the write: %q, %v; want the written value", v, err)
				}
				g.open()
				eventually(t, "the late load refused", func() bool { return e.c.Stats().Loads.Conflicts == 1 })
				if !e.redisHolds("k", "written") {
					v, err := e.peer.Get(ctx, "k")
					t.Fatalf("Redis holds %q (%v) after the late load; want the written value", v, err)
				}
				for range 3 {
					if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "written" {
						t.Fatalf("GetOrLoad after the late load: %q, %v; want the written value", v, err)
					}
				}
				checkSoftEvents(t, e, "k")
			})
		}
	}
}

// TestSoftTimeoutWriteFirst: a write of the key after the loader was
// called and before the soft timeout overtakes the stale value: the caller
// waiting for the load is not served it when the timer fires, but waits for
// the loader (whose value, raced by the write, it gets and nothing keeps).
func TestSoftTimeoutWriteFirst(t *testing.T) {
	for _, mode := range softModes() {
		t.Run(mode.name, func(t *testing.T) {
			cfg := softConfig()
			cfg.SoftTimeout = 400 * time.Millisecond // time for the write to come first
			e := newSoftEnv(t, servers()[1].client(t), "soft-first-write", cfg)
			ctx := mode.ctx(t)
			e.putStale(t, map[string]string{"k": "old"})
			g := newHeldLoader(t)
			type result struct {
				v   string
				err error
			}
			done := make(chan result, 1)
			go func() {
				v, err := e.c.GetOrLoad(ctx, "k", g.load)
				done <- result{v, err}
			}()
			g.awaitStart(t)
			called := time.Now()
			if err := e.c.Set(ctx, "k", "written"); err != nil {
				t.Fatalf("Set: %v", err)
			}
			if d := time.Since(called); d > cfg.SoftTimeout/2 {
				g.open()
				<-done
				t.Skipf("Set took %v after the loader was called: too slow to come before the soft timeout (%v)", d, cfg.SoftTimeout)
			}
			select {
			case r := <-done:
				t.Fatalf("GetOrLoad returned %q, %v before the loader; want it to wait (the write overtook the stale value)", r.v, r.err)
			case <-time.After(3 * cfg.SoftTimeout):
			}
			g.open()
			select {
			case r := <-done:
				if r.err != nil || r.v != "new-k" {
					t.Fatalf("GetOrLoad: %q, %v; want the loaded value", r.v, r.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("GetOrLoad did not return within 5s of the loader's release")
			}
			eventually(t, "the raced load refused", func() bool { return e.c.Stats().Loads.Conflicts == 1 })
			if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "written" {
				t.Fatalf("GetOrLoad after the load: %q, %v; want the written value", v, err)
			}
			if !e.redisHolds("k", "written") {
				t.Fatal("Redis does not hold the written value after the raced load")
			}
			checkSoftEvents(t, e)
		})
	}
}

// TestSoftTimeoutBatch: GetManyOrLoad of keys with and without stale values
// (and one fresh in Redis): at the soft timeout the keys with a stale value
// are settled with it (callers joining them get it at once) while a key
// without one waits for the loader; a batch whose every key has a stale
// value or a fresh one returns at the soft timeout.
func TestSoftTimeoutBatch(t *testing.T) {
	for _, mode := range softModes() {
		t.Run("mixed/"+mode.name, func(t *testing.T) {
			e := newSoftEnv(t, servers()[1].client(t), "soft-batch", softConfig())
			ctx := mode.ctx(t)
			e.putStale(t, map[string]string{"a": "old-a", "b": "old-b"})
			g := newHeldLoader(t)
			type result struct {
				m   map[string]string
				err error
			}
			batchDone := make(chan result, 1)
			go func() {
				m, err := e.c.GetManyOrLoad(ctx, []string{"a", "b", "c"}, g.loadMany)
				batchDone <- result{m, err}
			}()
			if keys := g.awaitStart(t); keys != "a,b,c" {
				t.Fatalf("batch loader called for %s, want a,b,c", keys)
			}
			cDone := make(chan string, 1)
			go func() {
				v, err := e.c.GetOrLoad(ctx, "c", notCalled(t))
				cDone <- fmt.Sprintf("%s %v", v, err)
			}()
			joinedBy(t, e.c, "c", 1)
			for _, k := range []string{"a", "b"} {
				start := time.Now()
				v, err := e.c.GetOrLoad(ctx, k, notCalled(t))
				if elapsed := time.Since(start); err != nil || v != "old-"+k || elapsed > softBound {
					t.Fatalf("GetOrLoad %s joining the batch: %q, %v after %v; want %q within %v", k, v, err, elapsed, "old-"+k, softBound)
				}
			}
			select {
			case r := <-cDone:
				t.Fatalf("GetOrLoad c returned %s before the loader; want it to wait", r)
			case r := <-batchDone:
				t.Fatalf("GetManyOrLoad returned %v, %v before the loader; want it to wait for c", r.m, r.err)
			default:
			}
			g.open()
			select {
			case r := <-cDone:
				if r != "new-c <nil>" {
					t.Fatalf("GetOrLoad c: %s; want the loaded value", r)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("GetOrLoad c did not return within 5s of the loader's release")
			}
			r := <-batchDone
			if want := "map[a:old-a b:old-b c:new-c]"; r.err != nil || fmt.Sprint(r.m) != want {
				t.Fatalf("GetManyOrLoad: %v, %v; want %s (the stale values it was settled with)", r.m, r.err, want)
			}
			// One serve per caller and key: the joiners of a and b, and the
			// batch's own caller for each.
			checkSoftEvents(t, e, "a", "b", "a", "b")
			for _, k := range []string{"a", "b", "c"} {
				eventually(t, "the loaded value of "+k+" in Redis", func() bool { return e.redisHolds(k, "new-"+k) })
			}
			if l := e.loudLogs(); len(l) > 0 {
				t.Fatalf("logged at Warn or above: %+v; want nothing", l)
			}
		})
		t.Run("all answered/"+mode.name, func(t *testing.T) {
			e := newSoftEnv(t, servers()[1].client(t), "soft-batch-all", softConfig())
			ctx := mode.ctx(t)
			applied := e.c.Stats().Invalidation.Applied
			if err := e.peer.Set(ctx, "f", "fresh"); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the invalidation of f", func() bool { return e.c.Stats().Invalidation.Applied > applied })
			e.putStale(t, map[string]string{"a": "old-a", "b": "old-b"})
			g := newHeldLoader(t)
			start := time.Now()
			m, err := e.c.GetManyOrLoad(ctx, []string{"a", "f", "b", "a"}, g.loadMany)
			elapsed := time.Since(start)
			if want := "map[a:old-a b:old-b f:fresh]"; err != nil || fmt.Sprint(m) != want || elapsed > softBound {
				t.Fatalf("GetManyOrLoad: %v, %v after %v; want %s within %v", m, err, elapsed, want, softBound)
			}
			if keys := g.awaitStart(t); keys != "a,b" {
				t.Fatalf("batch loader called for %s, want a,b", keys)
			}
			checkSoftEvents(t, e, "a", "b") // a, repeated, is one serve
			g.open()
			for _, k := range []string{"a", "b"} {
				eventually(t, "the loaded value of "+k+" in Redis", func() bool { return e.redisHolds(k, "new-"+k) })
			}
			eventually(t, "the loaded values served", func() bool {
				m, err := e.c.GetManyOrLoad(ctx, []string{"a", "b"}, g.loadMany)
				return err == nil && fmt.Sprint(m) == "map[a:new-a b:new-b]"
			})
			if n := e.c.Stats().Loads.LoaderCalls; n != 1 {
				t.Fatalf("%d loader calls; want 1", n)
			}
		})
	}
}

// TestSoftTimeoutBatchFailsLate: a batch loader that fails after the soft
// timeout served a key's stale value changes nothing for that key's
// callers, and a key without a stale value gets the loader's error; nothing
// is counted as fail-safe or logged.
func TestSoftTimeoutBatchFailsLate(t *testing.T) {
	for _, mode := range softModes() {
		t.Run(mode.name, func(t *testing.T) {
			e := newSoftEnv(t, servers()[1].client(t), "soft-batch-late", softConfig())
			ctx := mode.ctx(t)
			e.putStale(t, map[string]string{"a": "old-a"})
			g := newHeldLoader(t)
			down := errors.New("database down")
			g.err = down
			type result struct {
				m   map[string]string
				err error
			}
			batchDone := make(chan result, 1)
			go func() {
				m, err := e.c.GetManyOrLoad(ctx, []string{"a", "c"}, g.loadMany)
				batchDone <- result{m, err}
			}()
			g.awaitStart(t)
			if v, err := e.c.GetOrLoad(ctx, "a", notCalled(t)); err != nil || v != "old-a" {
				t.Fatalf("GetOrLoad a joining the batch: %q, %v; want the stale value", v, err)
			}
			g.open()
			r := <-batchDone
			if !errors.Is(r.err, down) || fmt.Sprint(r.m) != "map[a:old-a]" {
				t.Fatalf("GetManyOrLoad: %v, %v; want map[a:old-a] and the loader's error (for c)", r.m, r.err)
			}
			checkSoftEvents(t, e, "a", "a")
			if n := e.c.Stats().Loads.LoaderErrors; n != 1 {
				t.Fatalf("%d loader errors; want 1", n)
			}
			if l := e.loudLogs(); len(l) > 0 {
				t.Fatalf("logged at Warn or above: %+v; want nothing", l)
			}
		})
	}
}

// TestSoftTimeoutConfig: a negative SoftTimeout is refused, naming the
// field; MarshalJSON includes it.
func TestSoftTimeoutConfig(t *testing.T) {
	if _, err := New(Config[string]{SoftTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "SoftTimeout") {
		t.Fatalf("New with a negative SoftTimeout: %v; want an error naming SoftTimeout", err)
	}
	js, err := Config[string]{SoftTimeout: 250 * time.Millisecond}.MarshalJSON()
	if err != nil || !strings.Contains(string(js), `"SoftTimeout":250000000`) {
		t.Fatalf("MarshalJSON: %s, %v; want SoftTimeout 250000000", js, err)
	}
}
