package tiered

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/l2"
)

// Review of refresh-ahead: tests that attack its promises (one refresh per
// key and retry, one loader for the fleet, no overtaken value anywhere,
// claims released, accurate stats).

// claimGate is a remote tier whose Claim waits, once entered, until gate is
// closed (or its ctx ends): it holds a refresh between its Redis read and
// its claim, as a descheduled goroutine would.
type claimGate struct {
	remoteTier
	entered chan struct{} // closed when Claim is first called
	gate    chan struct{} // Claim waits for it
	once    sync.Once
}

func newClaimGate(r remoteTier) *claimGate {
	return &claimGate{remoteTier: r, entered: make(chan struct{}), gate: make(chan struct{})}
}

func (g *claimGate) Claim(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	g.once.Do(func() { close(g.entered) })
	select {
	case <-g.gate:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return g.remoteTier.Claim(ctx, key, token, ttl)
}

// waitChan waits (bounded) for ch to be closed.
func waitChan(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitOutcomes waits until rec has n events and returns them.
func waitOutcomes(t *testing.T, rec *refreshRecorder, n int) []RefreshEvent {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, fmt.Sprintf("%d refreshes to end", n), func() bool { return len(rec.outcomes()) >= n })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]RefreshEvent(nil), rec.evs...)
}

// TestReviewRefreshGetManyKeepsDue: GetMany has no loader and never
// refreshes (Config.RefreshAhead), so its hits must not use up an entry's
// due report either: a GetOrLoad hit right after must start the refresh,
// not wait FailSafeRetryAfter (here a minute) for the next report.
func TestReviewRefreshGetManyKeepsDue(t *testing.T) {
	c := newCache(t, Config[string]{TTL: 10 * time.Second, RefreshAhead: 0.02, FailSafeRetryAfter: time.Minute, L1TTLJitter: NoJitter})
	var l gatedLoader
	ctx := context.Background()
	if v, err := c.GetOrLoad(ctx, "k", l.load); err != nil || v != "k@1" {
		t.Fatalf("GetOrLoad = %q, %v", v, err)
	}
	c.hot.Wait() // in ristretto: without Redis, a GetMany that missed L1 would not refill it
	loaded := time.Now()
	// Due 200ms after the load; read with GetMany well past that.
	redistest.WaitFor(t, 10*time.Second, "the value past its refresh time", func() bool {
		m, err := c.GetMany(ctx, []string{"k"})
		if err != nil || m["k"] != "k@1" {
			t.Fatalf("GetMany = %v, %v; want k@1", m, err)
		}
		return time.Since(loaded) > 600*time.Millisecond
	})
	if st := c.Stats().Loads.Refreshes; st.Started != 0 {
		t.Fatalf("GetMany started %d refreshes; it has no loader", st.Started)
	}
	if v, err := c.GetOrLoad(ctx, "k", l.load); err != nil || v != "k@1" {
		t.Fatalf("GetOrLoad = %q, %v", v, err)
	}
	if st := c.Stats().Loads.Refreshes; st.Started != 1 {
		t.Fatalf("a GetOrLoad hit on a due value after GetMany hits started %d refreshes, want 1 (GetMany used up the due report)", st.Started)
	}
	redistest.WaitFor(t, 10*time.Second, "the refreshed value", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@2"
	})
}

// TestReviewRefreshL1OnlySetIsDue: Config.RefreshAhead says a value written
// by a load or a Set is due RefreshAhead×TTL after the write. Without
// Redis, a Set's value must be refreshed too, while it is still served.
func TestReviewRefreshL1OnlySetIsDue(t *testing.T) {
	c := newCache(t, Config[string]{TTL: 20 * time.Second, RefreshAhead: 0.01, L1TTLJitter: NoJitter})
	var l gatedLoader
	ctx := context.Background()
	if err := c.Set(ctx, "k", "set"); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would load, not refresh
	// Due 200ms after the Set; it expires after 20s.
	redistest.WaitFor(t, 5*time.Second, "a refresh of the Set value", func() bool {
		v, err := c.GetOrLoad(ctx, "k", l.load)
		if err != nil || (v != "set" && v != "k@1") {
			t.Fatalf("GetOrLoad = %q, %v; want the Set value or its refresh", v, err)
		}
		return c.Stats().Loads.Refreshes.Started >= 1
	})
	redistest.WaitFor(t, 10*time.Second, "the refreshed value", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@1"
	})
}

// TestReviewRefreshOneLoaderAfterOtherRefreshed: instance B's refresh reads
// Redis (the value is due) and is then held before its claim; meanwhile A
// refreshes the key from the loader, writes it back and releases the claim.
// When B goes on and wins the now free claim, Redis already holds A's fresh
// value: B must take it, not call the loader a second time for the same
// refresh period ("only one instance of the fleet calls the loader").
func TestReviewRefreshOneLoaderAfterOtherRefreshed(t *testing.T) {
	srv := redistest.StartServer(t)
	var calls atomic.Int64
	load := func(_ context.Context, key string) (string, error) {
		return fmt.Sprintf("%s@%d", key, calls.Add(1)), nil
	}
	cfg := func(rec *refreshRecorder) Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "r1", TTL: 4 * time.Second, RefreshAhead: 0.1,
			FailSafeRetryAfter: 300 * time.Millisecond, RedisTimeout: 20 * time.Second, L1TTLJitter: NoJitter,
			Observer: rec.observer()}
	}
	var recA, recB refreshRecorder
	a := newCache(t, cfg(&recA))
	b := newCache(t, cfg(&recB))
	gate := newClaimGate(b.l2)
	b.l2 = gate
	ctx := context.Background()
	if v, err := a.GetOrLoad(ctx, "k", load); err != nil || v != "k@1" {
		t.Fatalf("A GetOrLoad = %q, %v", v, err)
	}
	if v, err := b.GetOrLoad(ctx, "k", load); err != nil || v != "k@1" {
		t.Fatalf("B GetOrLoad = %q, %v; want Redis's k@1", v, err)
	}
	// B's refresh: reads Redis (due), then waits at its claim.
	waitRefreshStarted(t, b, "k", load, 1)
	waitChan(t, gate.entered, "B's refresh to reach its claim")
	// A's refresh: claims, loads, writes back, releases.
	waitRefreshStarted(t, a, "k", load, 1)
	if evs := waitOutcomes(t, &recA, 1); evs[0].Outcome != RefreshFromLoader {
		t.Fatalf("A's refresh: %v, want loader", evs[0].Outcome)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d loader calls after A's refresh, want 2", n)
	}
	close(gate.gate)
	evs := waitOutcomes(t, &recB, 1)
	if n := calls.Load(); n != 2 {
		t.Errorf("%d loader calls, want 2: B called the loader again after A had refreshed the key (B's outcome %v)", n, evs[0].Outcome)
	}
	if evs[0].Outcome != RefreshFromRedis {
		t.Errorf("B's refresh: %v, want redis (A's value)", evs[0].Outcome)
	}
	if _, err := newClient(t, srv.Addr()).Get(ctx, wire.ClaimKey("r1:", "k")).Result(); err != redis.Nil {
		t.Errorf("the claim is still held after both refreshes: %v", err)
	}
}

// TestReviewRefreshCloseReleasesClaim: Close during a refresh whose loader
// holds the key's claim cancels the loader; the claim must then be released
// as after any failure (held at most FailSafeRetryAfter), not left to the
// rest of the fleet for LoadTimeout.
func TestReviewRefreshCloseReleasesClaim(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rclose", TTL: 4 * time.Second,
		RefreshAhead: 0.1, FailSafeRetryAfter: 300 * time.Millisecond, LoadTimeout: 30 * time.Second,
		L1TTLJitter: NoJitter, Observer: rec.observer()})
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would not be the refresh under test
	l.hold()
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 10*time.Second, "the refresh to call the loader", func() bool { return l.calls.Load() == 2 })
	ck := wire.ClaimKey("rclose:", "k")
	if pttl := rc.PTTL(ctx, ck).Val(); pttl < 10*time.Second {
		t.Fatalf("claim PTTL %v while the refresh loads, want about LoadTimeout (30s)", pttl)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if evs := waitOutcomes(t, &rec, 1); evs[0].Outcome != RefreshFailed {
		t.Fatalf("outcome %v, want failed (Close cancelled the loader)", evs[0].Outcome)
	}
	if pttl := rc.PTTL(ctx, ck).Val(); pttl > 300*time.Millisecond {
		t.Fatalf("claim PTTL %v after Close cancelled the refresh, want at most FailSafeRetryAfter (300ms)", pttl)
	}
}

// TestReviewRefreshGoexitReleasesClaim: a loader that exits through
// runtime.Goexit in a refresh is a failure like any other: the claim is
// held at most FailSafeRetryAfter, not LoadTimeout.
func TestReviewRefreshGoexitReleasesClaim(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rgoexit", TTL: 4 * time.Second,
		RefreshAhead: 0.1, FailSafeRetryAfter: 300 * time.Millisecond, LoadTimeout: 30 * time.Second,
		L1TTLJitter: NoJitter, Observer: rec.observer()})
	var calls atomic.Int64
	load := func(_ context.Context, key string) (string, error) {
		if calls.Add(1) > 1 {
			runtime.Goexit()
		}
		return "v", nil
	}
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", load); err != nil {
		t.Fatal(err)
	}
	waitRefreshStarted(t, c, "k", load, 1)
	ev := waitOutcomes(t, &rec, 1)[0]
	if ev.Outcome != RefreshFailed || !errors.Is(ev.Err, errLoaderGoexit) {
		t.Fatalf("outcome %v (%v), want failed with errLoaderGoexit", ev.Outcome, ev.Err)
	}
	if pttl := rc.PTTL(ctx, wire.ClaimKey("rgoexit:", "k")).Val(); pttl > 300*time.Millisecond {
		t.Fatalf("claim PTTL %v after the loader's Goexit, want at most FailSafeRetryAfter (300ms)", pttl)
	}
	if v, err := c.GetOrLoad(ctx, "k", load); err != nil || v != "v" {
		t.Fatalf("GetOrLoad after the failed refresh = %q, %v; want v", v, err)
	}
}

// TestReviewRefreshStaleServedIsFailed: when the refresh finds Redis's value
// stale (its invalidation was lost) and the loader fails, fail-safe serves
// the stale value; the refresh failed, and must say so (RefreshFailed with
// the loader's error), not count a value from the loader.
func TestReviewRefreshStaleServedIsFailed(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := newCache(t, Config[string]{Redis: rc, Namespace: "rstale", TTL: 4 * time.Second, RefreshAhead: 0.1,
		FailSafeMaxStale: 10 * time.Second, FailSafeRetryAfter: 300 * time.Millisecond, L1TTLJitter: NoJitter,
		Observer: rec.observer()})
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would not be the refresh under test
	other, err := l2.New(rc, l2.Config{KeyPrefix: "rstale:"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Set(ctx, "k", l2.Entry{Value: []byte("old"), TTL: 10 * time.Second, FreshFor: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	l.fail.Store(true)
	waitRefreshStarted(t, c, "k", l.load, 1)
	ev := waitOutcomes(t, &rec, 1)[0]
	if st := c.Stats().Loads; st.StaleServed != 1 {
		t.Fatalf("StaleServed %d, want 1 (the test's premise)", st.StaleServed)
	}
	if ev.Outcome != RefreshFailed || ev.Err == nil || !strings.Contains(ev.Err.Error(), "database down") {
		t.Fatalf("refresh whose loader failed (stale value served): outcome %v, err %v; want failed with the loader's error", ev.Outcome, ev.Err)
	}
	if st := c.Stats().Loads.Refreshes; st.Failed != 1 || st.FromLoader != 0 {
		t.Fatalf("RefreshStats %+v, want 1 failed, none from the loader", st)
	}
}

// TestReviewRefreshStatsCoalesced: a refresh is a flight no caller started;
// it must not cancel out a caller that joined another flight
// (LoadStats.Coalesced).
func TestReviewRefreshStatsCoalesced(t *testing.T) {
	c := newCache(t, Config[string]{TTL: 4 * time.Second, RefreshAhead: 0.1, L1TTLJitter: NoJitter})
	var l gatedLoader
	ctx := context.Background()
	release := l.hold()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
				t.Errorf("GetOrLoad: %v", err)
			}
		}()
		redistest.WaitFor(t, 10*time.Second, "the caller to wait on the flight", func() bool {
			return l.calls.Load() == 1 && c.Stats().Loads.Callers >= 1
		})
	}
	redistest.WaitFor(t, 10*time.Second, "the second caller to join", func() bool { return c.Stats().Loads.Callers == 2 })
	close(release)
	wg.Wait()
	if st := c.Stats().Loads; st.Coalesced != 1 {
		t.Fatalf("Coalesced %d after two callers shared one load, want 1 (the test's premise)", st.Coalesced)
	}
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 10*time.Second, "the refresh to end", func() bool { return c.Stats().Loads.Refreshes.FromLoader == 1 })
	if st := c.Stats().Loads; st.Coalesced != 1 {
		t.Fatalf("Coalesced %d after a refresh (callers %d, flights %d), want still 1", st.Coalesced, st.Callers, st.Flights)
	}
}

// TestReviewRefreshStatsHitRatio: every L1 hit answers a request without
// calling a loader, so Combined.HitRatio is at least L1HitRatio; a
// background refresh answers no request and must not lower it.
func TestReviewRefreshStatsHitRatio(t *testing.T) {
	c := newCache(t, Config[string]{TTL: 4 * time.Second, RefreshAhead: 0.1, L1TTLJitter: NoJitter})
	var l gatedLoader
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 10*time.Second, "the refresh to end", func() bool { return c.Stats().Loads.Refreshes.FromLoader == 1 })
	s := c.Stats()
	if s.Combined.HitRatio < s.Combined.L1HitRatio {
		t.Fatalf("HitRatio %.4f below L1HitRatio %.4f (requests %d, L1 hits %d, loaded keys %d): the refresh was counted as a request that called the loader",
			s.Combined.HitRatio, s.Combined.L1HitRatio, s.Combined.Requests, s.Combined.L1Hits, s.Loads.LoadedKeys)
	}
}

// TestReviewRefreshACLReleasesClaim: README lists what the Cache's Redis
// user needs, "and ~*NS:claim:* with RefreshAhead". With exactly that, a
// successful refresh must release its claim (and a failed one shorten it
// to FailSafeRetryAfter), not leave it held for LoadTimeout because the
// release is refused.
func TestReviewRefreshACLReleasesClaim(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	t.Cleanup(func() { _ = admin.Close() })
	args := []any{"ACL", "SETUSER", "nc", "on", ">pw", "resetkeys", "~racl:*", "~*racl:inv:*", "~*racl:claim:*",
		"resetchannels", "&racl:inv", "&racl:inv:route:*", "-@all"}
	for _, c := range readmeACLCommands {
		args = append(args, "+"+strings.ToLower(c))
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nc", Password: "pw", ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rc.Close() })
	var rec refreshRecorder
	c := newCache(t, Config[string]{Redis: rc, Namespace: "racl", TTL: 4 * time.Second, RefreshAhead: 0.1,
		FailSafeRetryAfter: 300 * time.Millisecond, LoadTimeout: 30 * time.Second, L1TTLJitter: NoJitter,
		Observer: rec.observer()})
	var l gatedLoader
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would not be the refresh under test
	waitRefreshStarted(t, c, "k", l.load, 1)
	if ev := waitOutcomes(t, &rec, 1)[0]; ev.Outcome != RefreshFromLoader {
		t.Fatalf("refresh as a user with README's grants: %v (%v), want loader", ev.Outcome, ev.Err)
	}
	ck := wire.ClaimKey("racl:", "k")
	if pttl := admin.PTTL(ctx, ck).Val(); pttl > 0 {
		t.Fatalf("claim still held (PTTL %v) after a successful refresh by a user with README's grants: the release was refused", pttl)
	}
	// A failed refresh shortens the claim to FailSafeRetryAfter.
	l.fail.Store(true)
	redistest.WaitFor(t, 10*time.Second, "the value due again", func() bool {
		if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
			t.Fatalf("GetOrLoad: %v", err)
		}
		return c.Stats().Loads.Refreshes.Started >= 2
	})
	if ev := waitOutcomes(t, &rec, 2)[1]; ev.Outcome != RefreshFailed {
		t.Fatalf("second refresh: %v, want failed", ev.Outcome)
	}
	if pttl := admin.PTTL(ctx, ck).Val(); pttl > 300*time.Millisecond {
		t.Fatalf("claim PTTL %v after a failed refresh by a user with README's grants, want at most FailSafeRetryAfter", pttl)
	}
}

// TestReviewRefreshRacingWrites extends TestRefreshRacingWrite to the other
// writes: a refresh whose loader read the old row before a SetMany, a
// versioned Set or DeleteMany, or a Clear (by this instance or another)
// leaves its value nowhere: not in Redis, not in either L1.
func TestReviewRefreshRacingWrites(t *testing.T) {
	type write struct {
		name string
		fn   func(c *Cache[string]) error
		want string // "" : not found
	}
	ctx := context.Background()
	writes := []write{
		{"setmany", func(c *Cache[string]) error { return c.SetMany(ctx, map[string]string{"k": "new", "j": "x"}) }, "new"},
		{"set-versioned", func(c *Cache[string]) error { return c.Set(ctx, "k", "new", WithVersion(7)) }, "new"},
		{"delete-versioned", func(c *Cache[string]) error { return c.DeleteMany(ctx, []string{"k"}, WithVersion(7)) }, ""},
		{"clear", func(c *Cache[string]) error { return c.Clear(ctx) }, ""},
	}
	for _, w := range writes {
		for _, remote := range []bool{false, true} {
			name := w.name + "-local"
			if remote {
				name = w.name + "-remote"
			}
			t.Run(name, func(t *testing.T) {
				srv := redistest.StartServer(t)
				var rec refreshRecorder
				a := refreshCache(t, newClient(t, srv.Addr()), "rw2", &rec)
				b := refreshCache(t, newClient(t, srv.Addr()), "rw2", &refreshRecorder{})
				var l gatedLoader
				if _, err := a.GetOrLoad(ctx, "k", l.load); err != nil {
					t.Fatal(err)
				}
				if v, err := b.GetOrLoad(ctx, "k", l.load); err != nil || v != "k@1" {
					t.Fatalf("B GetOrLoad = %q, %v", v, err)
				}
				release := l.hold()
				waitRefreshStarted(t, a, "k", l.load, 1)
				redistest.WaitFor(t, 5*time.Second, "the refresh to call the loader", func() bool { return l.calls.Load() == 2 })
				writer := a
				if remote {
					writer = b
				}
				if err := w.fn(writer); err != nil {
					t.Fatal(err)
				}
				close(release)
				waitOutcomes(t, &rec, 1)
				for _, c := range []*Cache[string]{a, b} {
					check := func() (string, error) {
						return c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "", ErrNotFound })
					}
					redistest.WaitFor(t, 5*time.Second, "the write everywhere", func() bool {
						v, err := check()
						if w.want == "" {
							return errors.Is(err, ErrNotFound)
						}
						return v == w.want && err == nil
					})
					for range 20 {
						v, err := check()
						if v == "k@2" || (w.want != "" && v != w.want) || (w.want == "" && !errors.Is(err, ErrNotFound)) {
							t.Fatalf("GetOrLoad after the refresh = %q, %v; want %q", v, err, w.want)
						}
					}
				}
				if v, _ := newClient(t, srv.Addr()).Get(ctx, "rw2:k").Bytes(); bytesHasSuffix(v, "k@2") {
					t.Fatalf("Redis holds the refresh's overtaken value %q", v)
				}
			})
		}
	}
}

// TestReviewRefreshObserverPanics: a Refreshed callback that panics loses
// only its event: the refresh's value is served, the counts add up, and no
// flight is left.
func TestReviewRefreshObserverPanics(t *testing.T) {
	var heard atomic.Int64
	c := newCache(t, Config[string]{TTL: 4 * time.Second, RefreshAhead: 0.1, L1TTLJitter: NoJitter,
		Observer: &Observer{Refreshed: func(RefreshEvent) { heard.Add(1); panic("observer bug") }}})
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would load, not refresh
	redistest.WaitFor(t, 10*time.Second, "the refreshed value", func() bool {
		v, err := c.GetOrLoad(ctx, "k", l.load)
		if err != nil {
			t.Fatalf("GetOrLoad: %v", err)
		}
		return v == "k@2"
	})
	redistest.WaitFor(t, 10*time.Second, "the refresh to end", func() bool { return heard.Load() >= 1 })
	st := c.Stats().Loads
	if r := st.Refreshes; r.Started != r.FromRedis+r.FromLoader+r.Skipped+r.Failed || r.FromLoader < 1 {
		t.Fatalf("RefreshStats %+v: Started is not the sum of the outcomes", r)
	}
	if st.Panics != 0 {
		t.Fatalf("Panics %d: an Observer panic was counted as a loader panic", st.Panics)
	}
	noFlights(t, c)
}

// TestReviewRefreshHitAllocs: with refresh-ahead on, a hit on an entry that
// is not due allocates nothing, with or without per-call options.
func TestReviewRefreshHitAllocs(t *testing.T) {
	c := newCache(t, Config[string]{TTL: time.Hour, MaxL1TTL: time.Hour, RefreshAhead: 0.9})
	ctx := context.Background()
	load := func(context.Context, string) (string, error) { return "v", nil }
	if _, err := c.GetOrLoad(ctx, "k", load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait()
	opts := []Option{WithTTL(time.Hour)}
	for name, fn := range map[string]func(){
		"plain":   func() { _, _ = c.GetOrLoad(ctx, "k", load) },
		"options": func() { _, _ = c.GetOrLoad(ctx, "k", load, opts...) },
	} {
		if n := testing.AllocsPerRun(1000, fn); n != 0 {
			t.Errorf("%s: %v allocs per L1 hit with refresh-ahead on, want 0", name, n)
		}
	}
	if st := c.Stats().Loads.Refreshes; st.Started != 0 {
		t.Fatalf("%d refreshes started on a value due in 54 minutes", st.Started)
	}
}

// TestReviewRefreshRacingWritesL1Only: without Redis, a refresh whose
// loader read the old row before a Set, Delete, versioned Set or Clear
// leaves its value out of L1.
func TestReviewRefreshRacingWritesL1Only(t *testing.T) {
	ctx := context.Background()
	for _, w := range []struct {
		name string
		fn   func(c *Cache[string]) error
		want string // "": not found
	}{
		{"set", func(c *Cache[string]) error { return c.Set(ctx, "k", "new") }, "new"},
		{"delete", func(c *Cache[string]) error { return c.Delete(ctx, "k") }, ""},
		{"set-versioned", func(c *Cache[string]) error { return c.Set(ctx, "k", "new", WithVersion(3)) }, "new"},
		{"clear", func(c *Cache[string]) error { return c.Clear(ctx) }, ""},
	} {
		t.Run(w.name, func(t *testing.T) {
			var rec refreshRecorder
			c := newCache(t, Config[string]{TTL: 4 * time.Second, RefreshAhead: 0.1, L1TTLJitter: NoJitter, Observer: rec.observer()})
			var l gatedLoader
			if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
				t.Fatal(err)
			}
			c.hot.Wait() // in ristretto: a miss now would not be the refresh under test
			release := l.hold()
			waitRefreshStarted(t, c, "k", l.load, 1)
			redistest.WaitFor(t, 5*time.Second, "the refresh to call the loader", func() bool { return l.calls.Load() == 2 })
			if err := w.fn(c); err != nil {
				t.Fatal(err)
			}
			close(release)
			waitOutcomes(t, &rec, 1)
			c.hot.Wait()
			for range 20 {
				v, err := c.Get(ctx, "k")
				if w.want == "" && !errors.Is(err, ErrNotFound) || w.want != "" && (v != w.want || err != nil) {
					t.Fatalf("Get after the refresh = %q, %v; want %q", v, err, w.want)
				}
			}
		})
	}
}

// TestReviewRefreshRedisBlackHoled: while Redis does not answer the
// refresh's read, hits still return at once; the refresh falls back to the
// loader (as a miss does) and its value is served.
func TestReviewRefreshRedisBlackHoled(t *testing.T) {
	srv := redistest.StartServer(t)
	proxy := redistest.StartProxy(t, srv.Addr())
	var rec refreshRecorder
	c := newCache(t, Config[string]{Redis: newClient(t, proxy.Addr()), Namespace: "rbh", TTL: 4 * time.Second,
		RefreshAhead: 0.1, FailSafeRetryAfter: 300 * time.Millisecond, L1TTLJitter: NoJitter, Observer: rec.observer()})
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would not be the refresh under test
	release := proxy.Hold("get", "rbh:k")
	defer release()
	redistest.WaitFor(t, 10*time.Second, "a refresh to start", func() bool {
		t0 := time.Now()
		v, err := c.GetOrLoad(ctx, "k", l.load)
		if d := time.Since(t0); d > time.Second || err != nil || v != "k@1" {
			t.Fatalf("GetOrLoad = %q, %v in %v; want k@1 at once", v, err, d)
		}
		return c.Stats().Loads.Refreshes.Started >= 1
	})
	if ev := waitOutcomes(t, &rec, 1)[0]; ev.Outcome != RefreshFromLoader {
		t.Fatalf("refresh with Redis's read held: %v (%v), want loader", ev.Outcome, ev.Err)
	}
	redistest.WaitFor(t, 10*time.Second, "the refreshed value", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@2"
	})
}

// TestReviewRefreshLoaderIgnoresCtx: a refresh whose loader ignores its
// ctx never holds a reader; its flight is released after LoadTimeout (a
// miss then starts a fresh load), and its outcome is counted once it
// returns.
func TestReviewRefreshLoaderIgnoresCtx(t *testing.T) {
	var rec refreshRecorder
	c := newCache(t, Config[string]{TTL: 4 * time.Second, RefreshAhead: 0.1, LoadTimeout: 300 * time.Millisecond,
		FailSafeRetryAfter: time.Minute, L1TTLJitter: NoJitter, Observer: rec.observer()})
	stuck := make(chan struct{})
	var calls atomic.Int64
	load := func(_ context.Context, key string) (string, error) {
		if calls.Add(1) == 2 {
			<-stuck // ignores ctx
		}
		return fmt.Sprintf("v%d", calls.Load()), nil
	}
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // in ristretto: a miss now would not be the refresh under test
	waitRefreshStarted(t, c, "k", load, 1)
	redistest.WaitFor(t, 10*time.Second, "the refresh flight released after LoadTimeout", func() bool {
		c.flightMu.Lock()
		defer c.flightMu.Unlock()
		return c.flights["k"] == nil
	})
	t0 := time.Now()
	if v, err := c.GetOrLoad(ctx, "k", load); err != nil || v != "v1" || time.Since(t0) > time.Second {
		t.Fatalf("GetOrLoad during the stuck refresh = %q, %v in %v; want v1 at once", v, err, time.Since(t0))
	}
	close(stuck)
	waitOutcomes(t, &rec, 1)
	if r := c.Stats().Loads.Refreshes; r.Started != r.FromRedis+r.FromLoader+r.Skipped+r.Failed {
		t.Fatalf("RefreshStats %+v: Started is not the sum of the outcomes", r)
	}
}

// TestReviewRefreshBatchLoader: GetManyOrLoad refreshes its due keys with
// its BatchLoader, each key on its own; a key the batch loader no longer
// returns is a not-found.
func TestReviewRefreshBatchLoader(t *testing.T) {
	var rec refreshRecorder
	c := newCache(t, Config[string]{TTL: 4 * time.Second, RefreshAhead: 0.1, L1TTLJitter: NoJitter, Observer: rec.observer()})
	var round atomic.Int64
	var batches [][]string
	var mu sync.Mutex
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		mu.Lock()
		batches = append(batches, append([]string(nil), keys...))
		mu.Unlock()
		m := map[string]string{}
		for _, k := range keys {
			m[k] = fmt.Sprintf("%s#%d", k, round.Load())
		}
		return m, nil
	}
	ctx := context.Background()
	keys := []string{"a", "b", "c"}
	// Without Redis, a miss loads: wait until ristretto holds every key (a
	// fill can be dropped under load; the round-0 loader refills it), so
	// that the round-1 values come from refreshes only.
	redistest.WaitFor(t, 10*time.Second, "every key in L1", func() bool {
		if m, err := c.GetManyOrLoad(ctx, keys, load); err != nil || len(m) != 3 {
			t.Fatalf("GetManyOrLoad = %v, %v", m, err)
		}
		c.hot.Wait()
		for _, k := range keys {
			if _, err := c.Get(ctx, k); err != nil {
				return false
			}
		}
		return true
	})
	mu.Lock()
	batches = batches[len(batches)-1:]
	mu.Unlock()
	round.Store(1)
	redistest.WaitFor(t, 10*time.Second, "every key refreshed", func() bool {
		m, err := c.GetManyOrLoad(ctx, keys, load)
		if err != nil || len(m) != 3 {
			t.Fatalf("GetManyOrLoad = %v, %v", m, err)
		}
		return m["a"] == "a#1" && m["b"] == "b#1" && m["c"] == "c#1"
	})
	redistest.WaitFor(t, 5*time.Second, "the refreshes to end", func() bool { return len(rec.outcomes()) >= 3 })
	if r := c.Stats().Loads.Refreshes; r.Started != 3 || r.FromLoader != 3 {
		t.Fatalf("RefreshStats %+v, want 3 started, 3 from the loader", r)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range batches[1:] {
		if len(b) != 1 {
			t.Fatalf("refresh batches %v: want one key per refresh", batches[1:])
		}
	}
}

// TestReviewRefreshNegativeNeverDue: a cached not-found is never refreshed
// (DESIGN: "a not-found ... is never due").
func TestReviewRefreshNegativeNeverDue(t *testing.T) {
	srv := redistest.StartServer(t)
	c := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rneg", TTL: 4 * time.Second,
		NegativeTTL: 2 * time.Second, RefreshAhead: 0.01, L1TTLJitter: NoJitter})
	var calls atomic.Int64
	load := func(context.Context, string) (string, error) { calls.Add(1); return "", ErrNotFound }
	ctx := context.Background()
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		if _, err := c.GetOrLoad(ctx, "k", load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("GetOrLoad = %v, want ErrNotFound", err)
		}
	}
	if r := c.Stats().Loads.Refreshes; r.Started != 0 || calls.Load() != 1 {
		t.Fatalf("a cached not-found: %d refreshes, %d loader calls; want 0 and 1", r.Started, calls.Load())
	}
}
