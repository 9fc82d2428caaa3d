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
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
)

// Review of fleet-wide stampede protection (Config.LoadClaim): tests that
// attack its promises (one load per key for the fleet, take-over of a dead
// owner's claim within the lease, waiters never held past their bounds,
// claims released, accurate stats).

// longLease is a configuration whose lease and wait bound are far longer
// than any test here should take: a waiter that returns quickly was let go
// by the owner (a release, a value, an invalidation), not by an expiry.
func longLease(addr, ns string, t *testing.T) Config[string] {
	return Config[string]{Redis: newClient(t, addr), Namespace: ns,
		LoadClaim: 20 * time.Second, LoadClaimWait: 25 * time.Second, LoadTimeout: 30 * time.Second}
}

// claimHeld reports whether Redis holds key's claim in namespace ns.
func claimHeld(t *testing.T, rc *redis.Client, ns, key string) bool {
	t.Helper()
	n, err := rc.Exists(context.Background(), wire.ClaimKey(wire.KeyPrefix(ns), key)).Result()
	if err != nil {
		t.Fatalf("EXISTS claim: %v", err)
	}
	return n == 1
}

// ownerThen starts GetOrLoad of key on owner with a loader that signals
// running, waits for proceed, and then ends with end (which may panic or
// call runtime.Goexit). It returns once the loader runs; the channel gets
// the call's error.
func ownerThen(t *testing.T, owner *Cache[string], key string, proceed <-chan struct{}, end func(ctx context.Context) (string, error)) <-chan error {
	t.Helper()
	running := make(chan struct{})
	out := make(chan error, 1)
	go func() {
		_, err := owner.GetOrLoad(context.Background(), key, func(ctx context.Context, _ string) (string, error) {
			close(running)
			select {
			case <-proceed:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return end(ctx)
		})
		out <- err
	}()
	waitChan(t, running, "the owner's loader to start")
	return out
}

type loadResult struct {
	v    string
	err  error
	took time.Duration
}

// waiterLoad starts GetOrLoad of key on c with a loader that counts its
// calls into calls and returns "waiter-row" (or ErrNotFound when notFound),
// and waits until c waits on the claim.
func waiterLoad(t *testing.T, c *Cache[string], key string, calls *atomic.Int64, notFound bool) <-chan loadResult {
	t.Helper()
	out := make(chan loadResult, 1)
	before := c.Stats().Loads.Claims.Waited
	go func() {
		start := time.Now()
		v, err := c.GetOrLoad(context.Background(), key, func(context.Context, string) (string, error) {
			calls.Add(1)
			if notFound {
				return "", ErrNotFound
			}
			return "waiter-row", nil
		})
		out <- loadResult{v, err, time.Since(start)}
	}()
	redistest.WaitFor(t, 10*time.Second, "the waiter to wait on the claim", func() bool {
		return c.Stats().Loads.Claims.Waited > before
	})
	return out
}

func recvResult(t *testing.T, ch <-chan loadResult, within time.Duration, what string) loadResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("%s: no result within %v (the lease is 20s, the wait bound 25s)", what, within)
	}
	return loadResult{}
}

// TestReviewClaimOwnerEndsWithoutValue: when the claim's owner ends its
// load without a value in Redis (its loader fails, panics, exits through
// runtime.Goexit, reports not-found that is not cached), it releases the
// claim, and a waiter on another instance loads by itself at once (within
// a poll), not after the lease or the wait bound. With NegativeTTL the
// owner's not-found is stored, and the waiter takes it without loading.
func TestReviewClaimOwnerEndsWithoutValue(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	cases := []struct {
		name        string
		negativeTTL time.Duration
		end         func(ctx context.Context) (string, error)
		wantOwnErr  bool
		wantWaiter  string // "" = ErrNotFound
		waiterLoads int64
	}{
		{"loader fails", 0, func(context.Context) (string, error) { return "", errors.New("database down") }, true, "waiter-row", 1},
		{"loader panics", 0, func(context.Context) (string, error) { panic("owner boom") }, true, "waiter-row", 1},
		{"loader Goexit", 0, func(context.Context) (string, error) { runtime.Goexit(); return "", nil }, true, "waiter-row", 1},
		{"not found, not cached", 0, func(context.Context) (string, error) { return "", ErrNotFound }, true, "waiter-row", 1},
		{"not found, cached", time.Minute, func(context.Context) (string, error) { return "", ErrNotFound }, true, "", 0},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := fmt.Sprintf("rcend%d", i)
			cfg := longLease(srv.Addr(), ns, t)
			cfg.NegativeTTL = tc.negativeTTL
			owner, waiter := newCache(t, cfg), newCache(t, cfg)
			proceed := make(chan struct{})
			ownerErr := ownerThen(t, owner, "k", proceed, tc.end)
			var calls atomic.Int64
			got := waiterLoad(t, waiter, "k", &calls, false)
			close(proceed)
			if err := <-ownerErr; (err != nil) != tc.wantOwnErr {
				t.Fatalf("owner GetOrLoad error %v", err)
			}
			r := recvResult(t, got, 5*time.Second, "waiter")
			switch {
			case tc.wantWaiter == "" && !errors.Is(r.err, ErrNotFound):
				t.Fatalf("waiter got %q, %v; want the owner's cached not-found", r.v, r.err)
			case tc.wantWaiter != "" && (r.err != nil || r.v != tc.wantWaiter):
				t.Fatalf("waiter got %q, %v; want %q", r.v, r.err, tc.wantWaiter)
			}
			if n := calls.Load(); n != tc.waiterLoads {
				t.Fatalf("waiter called its loader %d times, want %d", n, tc.waiterLoads)
			}
			st := waiter.Stats().Loads.Claims
			t.Logf("waiter returned after %v; claims %+v", r.took, st)
			want := ClaimStats{Won: 1, Waited: 1, Expired: 1} // took the released claim over (ClaimStats.Expired)
			if tc.waiterLoads == 0 {
				want = ClaimStats{Waited: 1, FromOther: 1}
			}
			if st != want {
				t.Errorf("waiter claims %+v, want %+v", st, want)
			}
			redistest.WaitFor(t, 5*time.Second, "the claim released", func() bool { return !claimHeld(t, rc, ns, "k") })
		})
	}
}

// TestReviewClaimCloseOwner: Close of the instance whose loader holds the
// claim (a loader that honours its ctx) releases the claim at once, so
// the waiting instance loads within a poll, not after the 20s lease; the
// lease renewal goroutine ends (goleak in TestMain).
func TestReviewClaimCloseOwner(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	cfg := longLease(srv.Addr(), "rccl", t)
	owner, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	waiter := newCache(t, cfg)
	never := make(chan struct{})
	ownerErr := ownerThen(t, owner, "k", never, nil)
	var calls atomic.Int64
	got := waiterLoad(t, waiter, "k", &calls, false)
	closed := make(chan error, 1)
	go func() { closed <- owner.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("owner Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("owner Close did not return")
	}
	if err := <-ownerErr; err == nil {
		t.Fatal("owner GetOrLoad succeeded after Close cancelled its loader")
	}
	if claimHeld(t, rc, "rccl", "k") {
		t.Fatal("Close left the owner's claim in Redis (held for the lease)")
	}
	r := recvResult(t, got, 5*time.Second, "waiter")
	if r.err != nil || r.v != "waiter-row" || calls.Load() != 1 {
		t.Fatalf("waiter got %q, %v with %d loader calls", r.v, r.err, calls.Load())
	}
}

// TestReviewClaimCloseWaiter: Close of an instance whose load waits for
// another instance's claim returns at once (not after the 25s wait bound),
// and its caller gets an error.
func TestReviewClaimCloseWaiter(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := longLease(srv.Addr(), "rccw", t)
	owner := newCache(t, cfg)
	waiter, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	release := make(chan struct{})
	defer close(release)
	ownerThen(t, owner, "k", release, func(context.Context) (string, error) { return "row", nil })
	var calls atomic.Int64
	got := waiterLoad(t, waiter, "k", &calls, false)
	start := time.Now()
	if err := waiter.Close(); err != nil {
		t.Fatalf("waiter Close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("waiter Close took %v", d)
	}
	r := recvResult(t, got, 5*time.Second, "waiter")
	if r.err == nil || calls.Load() != 0 {
		t.Fatalf("waiter got %q, %v with %d loader calls after Close; want an error, no load", r.v, r.err, calls.Load())
	}
}

// TestReviewClaimCallerLeaves: a caller whose ctx ends while its load waits
// for another instance's claim returns its ctx's error at once.
func TestReviewClaimCallerLeaves(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := longLease(srv.Addr(), "rccx", t)
	owner, waiter := newCache(t, cfg), newCache(t, cfg)
	release := make(chan struct{})
	ownerThen(t, owner, "k", release, func(context.Context) (string, error) { return "row", nil })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := waiter.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "waiter-row", nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetOrLoad = %v, want the caller's deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the caller left after %v", d)
	}
	close(release)
	// The shared wait goes on without the caller and takes the owner's value.
	eventually(t, "the waiter to take the owner's row", func() bool {
		v, err := waiter.Get(context.Background(), "k")
		return err == nil && v == "row"
	})
}

// TestReviewClaimRedisLostDuringWait: a waiter whose connection to Redis is
// cut while it waits (the owner cannot reach it, nor it Redis) stops
// waiting within a few RedisTimeouts and loads by itself; with the breaker
// open it does too.
func TestReviewClaimRedisLostDuringWait(t *testing.T) {
	for _, breaker := range []int{NoBreaker, 1} {
		t.Run(fmt.Sprintf("breaker=%d", breaker), func(t *testing.T) {
			srv := redistest.StartServer(t)
			proxy := redistest.StartProxy(t, srv.Addr())
			ownerCfg := longLease(srv.Addr(), "rcrl", t)
			waiterCfg := longLease(proxy.Addr(), "rcrl", t)
			waiterCfg.BreakerFailures = breaker
			owner, waiter := newCache(t, ownerCfg), newCache(t, waiterCfg)
			release := make(chan struct{})
			defer close(release)
			ownerThen(t, owner, "k", release, func(context.Context) (string, error) { return "row", nil })
			var calls atomic.Int64
			got := waiterLoad(t, waiter, "k", &calls, false)
			proxy.Close()
			r := recvResult(t, got, 5*time.Second, "waiter cut off from Redis")
			if r.err != nil || r.v != "waiter-row" || calls.Load() != 1 {
				t.Fatalf("waiter got %q, %v with %d loader calls; want its own row", r.v, r.err, calls.Load())
			}
		})
	}
}

// TestReviewClaimRefreshOwnerDies: LoadClaim's promise holds for every
// holder of the key's claim: a refresh-ahead holds the same claim, and
// when the instance refreshing dies, a miss on another instance takes the
// claim over after the lease (here 1.5s) and loads, as it would from a
// load's dead owner — not after LoadClaimWait (8s), nor after the
// refresh's LoadTimeout claim (20s).
func TestReviewClaimRefreshOwnerDies(t *testing.T) {
	srv := redistest.StartServer(t)
	proxy := redistest.StartProxy(t, srv.Addr())
	rc := newClient(t, srv.Addr())
	cfg := func(addr string) Config[string] {
		return Config[string]{Redis: newClient(t, addr), Namespace: "rcrf", TTL: 3 * time.Second, RefreshAhead: 0.3,
			L1TTLJitter: NoJitter, LoadClaim: 1500 * time.Millisecond, LoadClaimWait: 8 * time.Second,
			LoadTimeout: 20 * time.Second, BreakerFailures: NoBreaker}
	}
	refresher := newCache(t, cfg(proxy.Addr()))
	other := newCache(t, cfg(srv.Addr()))
	ctx := context.Background()
	refreshing := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	var n atomic.Int64
	load := func(ctx context.Context, _ string) (string, error) {
		if n.Add(1) == 1 {
			return "v1", nil
		}
		close(refreshing)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return "", errors.New("refresher gone")
	}
	if v, err := refresher.GetOrLoad(ctx, "k", load); err != nil || v != "v1" {
		t.Fatalf("GetOrLoad = %q, %v", v, err)
	}
	refresher.hot.Wait()
	redistest.WaitFor(t, 10*time.Second, "a refresh to start", func() bool {
		_, _ = refresher.GetOrLoad(ctx, "k", load)
		select {
		case <-refreshing:
			return true
		default:
			return false
		}
	})
	proxy.Close() // the refreshing instance dies: it neither renews nor releases
	// The value goes (as if it expired) while the dead refresher's claim
	// is still held.
	if err := rc.Del(ctx, "rcrf:k").Err(); err != nil {
		t.Fatal(err)
	}
	if !claimHeld(t, rc, "rcrf", "k") {
		t.Fatal("the refresh does not hold the key's claim")
	}
	start := time.Now()
	v, err := other.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "v2", nil })
	took := time.Since(start)
	st := other.Stats().Loads.Claims
	t.Logf("miss served after %v; claims %+v", took, st)
	if err != nil || v != "v2" {
		t.Fatalf("GetOrLoad on the other instance = %q, %v", v, err)
	}
	if took > 4*time.Second {
		t.Fatalf("the miss waited %v for a dead refresher's claim; want about the 1.5s lease", took)
	}
	if st.Waited != 1 || st.Expired != 1 {
		t.Fatalf("claims %+v: want one wait ended by taking the expired claim over", st)
	}
}

// TestReviewClaimBatchSoftTimeout: a GetManyOrLoad whose key another
// instance is loading under its claim, with a stale value in Redis and
// SoftTimeout set, returns the stale value after SoftTimeout, as a
// GetOrLoad does (TestLoadClaimSoftTimeout) and as the batch would waiting
// for its own loader.
func TestReviewClaimBatchSoftTimeout(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rcbs", TTL: 200 * time.Millisecond,
			FailSafeMaxStale: time.Hour, SoftTimeout: 200 * time.Millisecond, LoadClaim: time.Second, LoadClaimWait: 8 * time.Second}
	}
	owner, waiter := newCache(t, cfg()), newCache(t, cfg())
	ctx := context.Background()
	if err := owner.Set(ctx, "k", "old"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past TTL: Redis holds it stale (its local copies expired with its freshness)
	release := make(chan struct{})
	defer close(release)
	holdLoad(t, owner, "k", "new", release)
	start := time.Now()
	m, err := waiter.GetManyOrLoad(ctx, []string{"k"}, func(context.Context, []string) (map[string]string, error) {
		return map[string]string{"k": "waiter-row"}, nil
	})
	took := time.Since(start)
	if err != nil || m["k"] != "old" {
		t.Fatalf("waiter GetManyOrLoad = %v, %v; want the stale old", m, err)
	}
	if took > 200*time.Millisecond+2*time.Second {
		t.Fatalf("waiter returned after %v, want about SoftTimeout (200ms)", took)
	}
	if st := waiter.Stats().Loads; st.StaleServedSoftTimeout != 1 || st.Claims.Waited != 1 {
		t.Fatalf("waiter stats: soft %d, claims %+v", st.StaleServedSoftTimeout, st.Claims)
	}
}

// TestReviewClaimWaitsForgotten: the wake-up channels of loads that waited
// for another instance's claim do not outlive the waits. Here every owner
// finds its key missing (not-found, not cached: no write-back, so no
// invalidation ever closes the channel); after 200 such keys the waiting
// instance must hold no channel for them.
func TestReviewClaimWaitsForgotten(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rcwf", LoadClaim: 40 * time.Millisecond, LoadClaimWait: 5 * time.Second}
	}
	owner, waiter := newCache(t, cfg()), newCache(t, cfg())
	ctx := context.Background()
	notFound := func(context.Context, string) (string, error) { return "", ErrNotFound }
	for i := range 200 {
		key := fmt.Sprintf("gone-%d", i)
		proceed := make(chan struct{})
		ownerErr := ownerThen(t, owner, key, proceed, func(context.Context) (string, error) { return "", ErrNotFound })
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = waiter.GetOrLoad(ctx, key, notFound)
		}()
		redistest.WaitFor(t, 10*time.Second, "the waiter to wait", func() bool {
			waiter.flightMu.Lock()
			defer waiter.flightMu.Unlock()
			return waiter.claimWaits[key] != nil
		})
		close(proceed)
		<-ownerErr
		waitChan(t, done, "the waiter's load")
	}
	waiter.flightMu.Lock()
	n := len(waiter.claimWaits)
	waiter.flightMu.Unlock()
	if n != 0 {
		t.Fatalf("after 200 finished waits the instance holds %d wake-up channels; want 0 (they grow with every key ever waited for)", n)
	}
}

// TestReviewClaimACL: with LoadClaim, a user granted exactly README's ACLs
// ("Redis ACLs": the namespace, its inv and claim keys, the listed
// commands) claims, waits, loads batches, renews and releases (ReleaseMany
// runs EVAL in a pipeline) without a Redis error, and leaves no claim
// behind.
func TestReviewClaimACL(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	t.Cleanup(func() { _ = admin.Close() })
	args := []any{"ACL", "SETUSER", "nc", "on", ">pw", "resetkeys", "~rcacl:*", "~*rcacl:inv:*", "~*rcacl:claim:*",
		"resetchannels", "&rcacl:inv", "&rcacl:inv:route:*", "-@all"}
	for _, c := range readmeACLCommands {
		args = append(args, "+"+strings.ToLower(c))
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	cfg := func() Config[string] {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nc", Password: "pw", ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = c.Close() })
		// A lease of 60ms is renewed every 20ms: the 300ms loads below renew it.
		return Config[string]{Redis: c, Namespace: "rcacl", LoadClaim: 60 * time.Millisecond, LoadClaimWait: 5 * time.Second, Logger: zap.New(core)}
	}
	a, b := newCache(t, cfg()), newCache(t, cfg())
	var calls atomic.Int64
	slow := func(ctx context.Context, k string) (string, error) {
		calls.Add(1)
		time.Sleep(300 * time.Millisecond)
		return "row-" + k, nil
	}
	batch := func(ctx context.Context, ks []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range ks {
			v, _ := slow(ctx, k)
			m[k] = v
		}
		return m, nil
	}
	done := make(chan error, 2)
	go func() { _, err := a.GetOrLoad(ctx, "one", slow); done <- err }()
	go func() { _, err := b.GetOrLoad(ctx, "one", slow); done <- err }()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("GetOrLoad: %v", err)
		}
	}
	go func() { _, err := a.GetManyOrLoad(ctx, []string{"x", "y"}, batch); done <- err }()
	go func() { _, err := b.GetManyOrLoad(ctx, []string{"x", "y"}, batch); done <- err }()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("GetManyOrLoad: %v", err)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("loader called for %d keys, want 3 (one, x, y once each)", n)
	}
	if sa, sb := a.Stats().Loads.Claims, b.Stats().Loads.Claims; sa.Won+sb.Won != 3 {
		t.Errorf("claims A %+v, B %+v: want the 3 loads run holding their claims", sa, sb)
	}
	for _, c := range []*Cache[string]{a, b} {
		if st := c.Stats(); st.L2.Errors != 0 {
			t.Errorf("%d L2 errors with README's grants", st.L2.Errors)
		}
	}
	for _, k := range []string{"one", "x", "y"} {
		if n := admin.Exists(ctx, wire.ClaimKey("rcacl:", k)).Val(); n != 0 {
			t.Errorf("claim of %s left in Redis (a release refused?)", k)
		}
	}
	for _, e := range logs.All() {
		t.Errorf("logged with README's grants: %s %v", e.Message, e.ContextMap())
	}
}

// TestReviewClaimBatchOwnerFails: a GetManyOrLoad waiting for a key whose
// owner (another instance) then fails, with repeated keys and keys of its
// own in the batch: the batch loads the failed key itself within a poll
// (not at the 25s wait bound), loads each of its keys once, and every key
// repeated in the call gets its value.
func TestReviewClaimBatchOwnerFails(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	cfg := longLease(srv.Addr(), "rcbf", t)
	owner, waiter := newCache(t, cfg), newCache(t, cfg)
	proceed := make(chan struct{})
	ownerErr := ownerThen(t, owner, "b", proceed, func(context.Context) (string, error) { return "", errors.New("database down") })
	loaded := map[string]int{}
	var calls atomic.Int64
	type res struct {
		m    map[string]string
		err  error
		took time.Duration
	}
	got := make(chan res, 1)
	go func() {
		start := time.Now()
		m, err := waiter.GetManyOrLoad(context.Background(), []string{"a", "b", "a", "c", "b"}, func(_ context.Context, ks []string) (map[string]string, error) {
			calls.Add(1)
			m := map[string]string{}
			for _, k := range ks {
				loaded[k]++ // one loader call at a time: the batch's rounds are sequential
				m[k] = "row-" + k
			}
			return m, nil
		})
		got <- res{m, err, time.Since(start)}
	}()
	redistest.WaitFor(t, 10*time.Second, "the batch to wait for b", func() bool { return waiter.Stats().Loads.Claims.Waited == 1 })
	close(proceed)
	if err := <-ownerErr; err == nil {
		t.Fatal("owner GetOrLoad succeeded")
	}
	var r res
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the batch still waits for a key whose owner failed")
	}
	if r.err != nil || len(r.m) != 3 || r.m["a"] != "row-a" || r.m["b"] != "row-b" || r.m["c"] != "row-c" {
		t.Fatalf("GetManyOrLoad = %v, %v", r.m, r.err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if loaded[k] != 1 {
			t.Errorf("key %s loaded %d times, want 1", k, loaded[k])
		}
		if claimHeld(t, rc, "rcbf", k) {
			t.Errorf("claim of %s left in Redis", k)
		}
	}
	t.Logf("batch returned after %v with %d loader calls; claims %+v", r.took, calls.Load(), waiter.Stats().Loads.Claims)
}

// TestReviewClaimDeleteClearRace: a Delete or a Clear (on a third
// instance) while the owner's loader reads the old row wins everywhere:
// the waiter does not take the owner's old row, the owner's late write-back
// is refused, and every instance ends with the row as the database holds
// it after the change.
func TestReviewClaimDeleteClearRace(t *testing.T) {
	srv := redistest.StartServer(t)
	for _, op := range []string{"Delete", "Clear"} {
		t.Run(op, func(t *testing.T) {
			ns := "rcdc" + strings.ToLower(op)
			cfg := longLease(srv.Addr(), ns, t)
			owner, waiter, writer := newCache(t, cfg), newCache(t, cfg), newCache(t, cfg)
			var row atomic.Value
			row.Store("old")
			proceed := make(chan struct{})
			var oldRead string
			ownerErr := ownerThen(t, owner, "k", proceed, func(context.Context) (string, error) { return oldRead, nil })
			oldRead = row.Load().(string) // read before the change (proceed orders it before the loader's return)
			load := func(context.Context, string) (string, error) { return row.Load().(string), nil }
			got := make(chan loadResult, 1)
			go func() {
				v, err := waiter.GetOrLoad(context.Background(), "k", load)
				got <- loadResult{v: v, err: err}
			}()
			redistest.WaitFor(t, 10*time.Second, "the waiter to wait", func() bool { return waiter.Stats().Loads.Claims.Waited == 1 })
			row.Store("new")
			cleared := owner.Stats().Invalidation.InvalidateAllTotal()
			var err error
			if op == "Delete" {
				err = writer.Delete(context.Background(), "k")
			} else {
				err = writer.Clear(context.Background())
			}
			if err != nil {
				t.Fatal(err)
			}
			if op == "Clear" {
				// Clear leaves no tombstones: a load of a key Redis did not
				// hold is refused by its ticket once the clear-all reaches
				// its instance, not before (see DESIGN, Clear).
				redistest.WaitFor(t, 5*time.Second, "the owner to hear the clear", func() bool {
					return owner.Stats().Invalidation.InvalidateAllTotal() > cleared
				})
			}
			close(proceed)
			<-ownerErr
			r := recvResult(t, got, 5*time.Second, "waiter")
			if r.err != nil || r.v != "new" {
				t.Fatalf("waiter got %q, %v; want the row after the %s", r.v, r.err, op)
			}
			for i, c := range []*Cache[string]{owner, waiter, writer} {
				redistest.WaitFor(t, 5*time.Second, fmt.Sprintf("instance %d to serve new", i), func() bool {
					v, err := c.GetOrLoad(context.Background(), "k", load)
					return err == nil && v == "new"
				})
			}
		})
	}
}

// TestReviewClaimCluster: on Redis Cluster (keys on every master), three
// instances whose batches and single-key loads overlap load each key once
// for the fleet, and release every claim.
func TestReviewClaimCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	newRedis := func() redis.UniversalClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true,
			DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	keys := keysN("ck", 60)
	admin := newRedis().(*redis.ClusterClient)
	masters := map[string]bool{}
	for _, k := range keys {
		m, err := admin.MasterForKey(ctx, "rccl:"+k)
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) != len(cl.Masters) {
		t.Fatalf("the keys are on %d masters, want all %d", len(masters), len(cl.Masters))
	}
	cs := instances(t, 3, newRedis, Config[string]{Namespace: "rccl", LoadClaim: time.Second, LoadClaimWait: 8 * time.Second})
	var mu sync.Mutex
	loads := map[string]int{}
	batch := func(_ context.Context, ks []string) (map[string]string, error) {
		time.Sleep(100 * time.Millisecond)
		m := map[string]string{}
		mu.Lock()
		for _, k := range ks {
			loads[k]++
			m[k] = "row-" + k
		}
		mu.Unlock()
		return m, nil
	}
	one := func(ctx context.Context, k string) (string, error) {
		m, err := batch(ctx, []string{k})
		return m[k], err
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for ci, c := range cs {
		want := keys[ci*15 : ci*15+30]
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if g == 0 {
					k := want[5]
					if v, err := c.GetOrLoad(ctx, k, one); err != nil || v != "row-"+k {
						t.Errorf("GetOrLoad(%s) = %q, %v", k, v, err)
					}
					return
				}
				m, err := c.GetManyOrLoad(ctx, want, batch)
				if err != nil {
					t.Errorf("GetManyOrLoad: %v", err)
				}
				for _, k := range want {
					if m[k] != "row-"+k {
						t.Errorf("GetManyOrLoad[%s] = %q", k, m[k])
					}
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	for _, k := range keys {
		if loads[k] != 1 {
			t.Errorf("key %s loaded %d times in the fleet, want 1", k, loads[k])
		}
	}
	var left []string
	err := admin.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		ks, err := m.Keys(ctx, "*rccl:claim:*").Result()
		mu.Lock()
		left = append(left, ks...)
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("claims left in Redis: %v", left)
	}
	for i, c := range cs {
		t.Logf("instance %d claims %+v", i, c.Stats().Loads.Claims)
	}
}

// TestReviewClaimHugeBatch: an instance loads 20,000 cold keys in one
// GetManyOrLoad (its claims taken in one pipeline, renewed and released in
// pipelines of EVAL) while another asks for the same keys: the second waits
// for all of them and takes every value from Redis, each key is loaded
// once for the fleet, and no claim is left behind.
func TestReviewClaimHugeBatch(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	cfg := func() Config[string] {
		// RedisTimeout 20s: a pipeline of 20,000 claims or releases takes
		// 100-400ms on a busy machine, more than the default 250ms, and
		// seconds under -race with both cores saturated (CI once saw B's
		// re-claim overrun 5s); a claim pipeline that overruns it makes
		// the batch load without claims (the fallback for Redis trouble),
		// which is not what this test is about.
		// LoadClaim 3s: the renewal of 20,000 claims is one pipeline of
		// EVALs, 100-400ms by itself, so the lease must leave room for it.
		return Config[string]{Redis: newHugeBatchClient(t, srv.Addr()), Namespace: "rchb", LoadClaim: 3 * time.Second,
			LoadClaimWait: 30 * time.Second, LoadTimeout: 60 * time.Second, RedisTimeout: 20 * time.Second}
	}
	a, b := newCache(t, cfg()), newCache(t, cfg())
	keys := keysN("h", 20000)
	var mu sync.Mutex
	loads := map[string]int{}
	running := make(chan struct{}, 2)
	proceed := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(proceed) }) }
	defer release() // a failed assertion must not leave A's loader blocked until LoadTimeout
	batch := func(_ context.Context, ks []string) (map[string]string, error) {
		running <- struct{}{}
		<-proceed
		m := make(map[string]string, len(ks))
		mu.Lock()
		for _, k := range ks {
			loads[k]++
			m[k] = "row-" + k
		}
		mu.Unlock()
		return m, nil
	}
	errs := make(chan error, 2)
	get := func(c *Cache[string]) {
		m, err := c.GetManyOrLoad(context.Background(), keys, batch)
		if err == nil && len(m) != len(keys) {
			err = fmt.Errorf("got %d values for %d keys", len(m), len(keys))
		}
		errs <- err
	}
	go get(a)
	<-running
	go get(b)
	redistest.WaitFor(t, 10*time.Second, "B to wait for A's keys", func() bool { return b.Stats().Loads.Claims.Waited == uint64(len(keys)) })
	time.Sleep(3500 * time.Millisecond) // A's loader outlives its 3s lease: the renewals keep it
	release()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("GetManyOrLoad: %v", err)
		}
	}
	twice := 0
	for _, k := range keys {
		if loads[k] != 1 {
			twice++
		}
	}
	if twice > 0 {
		t.Errorf("%d of %d keys loaded more than once for the fleet", twice, len(keys))
	}
	left, err := rc.Keys(context.Background(), "*rchb:claim:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("%d claims left in Redis", len(left))
	}
	if st := b.Stats().Loads.Claims; st.FromOther != uint64(len(keys)) || st.Won != 0 {
		t.Errorf("B claims %+v, want every key from A (B's Redis errors: %d, timeouts %d)", st, b.Stats().L2.Errors, b.Stats().L2.Store.Timeouts)
	}
}

// newHugeBatchClient is newClient with socket timeouts that a pipeline of
// 20,000 scripts meets on a saturated machine.
func newHugeBatchClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: 1,
		DialTimeout: 2 * time.Second, ReadTimeout: 20 * time.Second, WriteTimeout: 20 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Review of tiered.Invalidator: attacks on Delete, Invalidate and
// InvalidateAll (hash tags on Redis Cluster, oversized messages, odd keys,
// concurrent use, docs/WIRE.md's ACL list).

// TestReviewInvalidatorClusterHashTags: on Redis Cluster, keys whose data
// keys carry hash tags (and odd braces that are not tags) are grouped by
// the slot Redis gives them: Delete and Invalidate of them all, in one
// call, reach every instance without a CROSSSLOT refusal and without a
// sequence gap.
func TestReviewInvalidatorClusterHashTags(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	newRedis := func() redis.UniversalClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true,
			DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	cs := instances(t, 2, newRedis, Config[string]{Namespace: "rcht"})
	keys := []string{"{u1}a", "{u1}b", "{u1}c", "{u2}a", "x{u3}y", "{}z", "{a", "a}{b}", "{{b}}", "{", "}", "", "plain", "{u1}"}
	for i := range 20 {
		keys = append(keys, fmt.Sprintf("{grp%d}k", i%4))
	}
	outside := newRedis()
	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "rcht"})
	db := newTable(map[string]string{})
	for _, k := range keys {
		db.set(k, "v1")
	}
	uniq := map[string]bool{}
	var distinct []string
	for _, k := range keys {
		if !uniq[k] {
			uniq[k] = true
			distinct = append(distinct, k)
		}
	}
	warm(t, cs, distinct, db.load, "v1")
	gaps := make([]uint64, len(cs))
	for i, c := range cs {
		gaps[i] = c.Stats().Invalidation.Gaps
	}
	for _, k := range distinct {
		db.set(k, "v2")
	}
	if err := inv.Delete(ctx, keys...); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	waitFresh(t, cs, distinct, db.load, func(string) string { return "v2" }, time.Now())
	store, err := l2.New(outside, l2.Config{KeyPrefix: "rcht:"})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range distinct {
		if err := store.Set(ctx, k, l2.Entry{Value: []byte("v3"), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Invalidate(ctx, keys...); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	noLoad := func(_ context.Context, k string) (string, error) { return "", fmt.Errorf("loader called for %q", k) }
	waitFresh(t, cs, distinct, noLoad, func(string) string { return "v3" }, time.Now())
	for i, c := range cs {
		if st := c.Stats().Invalidation; st.Gaps != gaps[i] || st.DecodeRejects != 0 {
			t.Errorf("instance %d: gaps %d (before %d), decode rejects %d", i, st.Gaps, gaps[i], st.DecodeRejects)
		}
	}
}

// TestReviewInvalidatorOversized: keys whose message body would exceed
// MaxBodySize (1 MiB) become a clear-all (docs/WIRE.md): every Cache drops
// its whole L1, including keys the call did not name, without a gap; Delete
// still leaves a tombstone on every key.
func TestReviewInvalidatorOversized(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cs := instances(t, 2, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "rcov"})
	// Writing 40,000 tombstones (a few MB) takes longer than newClient's
	// 500 ms on a busy machine: this test is about bodies, not timeouts.
	outside := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: 1,
		DialTimeout: time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	t.Cleanup(func() { _ = outside.Close() })
	inv := newInvalidator(t, outside, InvalidatorConfig{Namespace: "rcov"})
	many := make([]string, 40000) // 40,000 keys of 30 bytes: about 1.2 MB of body
	for i := range many {
		many[i] = fmt.Sprintf("row-%026d", i)
	}
	huge := strings.Repeat("h", invalidation.MaxBodySize) // one key alone too long for a body
	for _, call := range []struct {
		name string
		fn   func() error
	}{
		{"Invalidate many", func() error { return inv.Invalidate(ctx, many...) }},
		{"Delete many", func() error { return inv.Delete(ctx, many...) }},
		{"Invalidate huge key", func() error { return inv.Invalidate(ctx, huge) }},
		{"Delete huge key", func() error { return inv.Delete(ctx, huge) }},
	} {
		t.Run(call.name, func(t *testing.T) {
			other := "unnamed"
			old := func(context.Context, string) (string, error) { return "old", nil }
			warm(t, cs, []string{other}, old, "old")
			clears := make([]uint64, len(cs))
			gaps := make([]uint64, len(cs))
			for i, c := range cs {
				st := c.Stats().Invalidation
				clears[i], gaps[i] = st.InvalidateAll[invalidation.CauseClear], st.Gaps
			}
			if err := call.fn(); err != nil {
				t.Fatalf("%s: %v", call.name, err)
			}
			newer := func(context.Context, string) (string, error) { return "new", nil }
			for i, c := range cs {
				redistest.WaitFor(t, freshBound, fmt.Sprintf("instance %d to apply a clear-all", i), func() bool {
					return c.Stats().Invalidation.InvalidateAll[invalidation.CauseClear] > clears[i]
				})
				if v, err := c.GetOrLoad(ctx, other, newer); err != nil || v != "old" {
					// Redis still holds old: the clear drops L1 only.
					t.Fatalf("instance %d: %s = %q, %v; want Redis's old", i, other, v, err)
				}
				if st := c.Stats().Invalidation; st.Gaps != gaps[i] || st.DecodeRejects != 0 {
					t.Errorf("instance %d: gaps %d (before %d), decode rejects %d", i, st.Gaps, gaps[i], st.DecodeRejects)
				}
			}
			if strings.HasPrefix(call.name, "Delete") {
				k := many[len(many)-1]
				if call.name == "Delete huge key" {
					k = huge
				}
				store, err := l2.New(outside, l2.Config{KeyPrefix: "rcov:", MaxValueSize: l2.NoValueSizeLimit})
				if err != nil {
					t.Fatal(err)
				}
				if e, err := store.Read(ctx, k); err != nil || !e.Tombstone {
					t.Fatalf("Redis holds %+v, %v for the deleted key; want a tombstone", e, err)
				}
			}
		})
	}
}

// TestReviewInvalidatorConcurrent: one Invalidator used from many
// goroutines at once (Delete, Invalidate, InvalidateAll, Close at the end)
// publishes every message with its own sequence: no Cache sees a gap, a
// backwards sequence or an undecodable message, and every Cache serves the
// last rows.
func TestReviewInvalidatorConcurrent(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cs := instances(t, 2, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "rccc"})
	inv := newInvalidator(t, newClient(t, srv.Addr()), InvalidatorConfig{Namespace: "rccc"})
	db := newTable(map[string]string{})
	keys := keysN("k", 16)
	for _, k := range keys {
		db.set(k, "v0")
	}
	warm(t, cs, keys, db.load, "v0")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				k := keys[(g*50+i)%len(keys)]
				var err error
				switch i % 10 {
				case 9:
					err = inv.InvalidateAll(ctx)
				case 0, 3, 6:
					err = inv.Invalidate(ctx, k, keys[(i+1)%len(keys)])
				default:
					db.set(k, fmt.Sprintf("g%d-%d", g, i))
					err = inv.Delete(ctx, k)
				}
				if err != nil {
					t.Errorf("goroutine %d call %d: %v", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	waitFresh(t, cs, keys, db.load, func(k string) string { v, _ := db.get(k); return v }, time.Now())
	for i, c := range cs {
		st := c.Stats().Invalidation
		if st.Gaps != 0 || st.SeqResets != 0 || st.DecodeRejects != 0 || st.Dropped != 0 {
			t.Errorf("instance %d: gaps %d, seq resets %d, decode rejects %d, dropped %d; want none", i, st.Gaps, st.SeqResets, st.DecodeRejects, st.Dropped)
		}
	}
	if err := inv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := inv.Delete(ctx, "k0"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Delete after Close = %v, want ErrClosed", err)
	}
}

// TestReviewInvalidatorWireACL: a publishing user granted exactly what
// docs/WIRE.md ("Rules") lists (the keys ~NS:* and ~*NS:inv:seq, the
// channel &NS:inv, the commands EVAL, EVALSHA, GET, SET, PTTL, PUBLISH)
// runs Delete, Invalidate and InvalidateAll, and the Caches apply them.
func TestReviewInvalidatorWireACL(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	t.Cleanup(func() { _ = admin.Close() })
	if err := admin.Do(ctx, "ACL", "SETUSER", "pub", "on", ">pw", "resetkeys", "~rcwa:*", "~*rcwa:inv:seq",
		"resetchannels", "&rcwa:inv", "-@all", "+eval", "+evalsha", "+get", "+set", "+pttl", "+publish").Err(); err != nil {
		t.Fatal(err)
	}
	pubClient := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "pub", Password: "pw", ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = pubClient.Close() })
	cs := instances(t, 2, func() redis.UniversalClient { return newClient(t, srv.Addr()) }, Config[string]{Namespace: "rcwa"})
	inv := newInvalidator(t, pubClient, InvalidatorConfig{Namespace: "rcwa"})
	db := newTable(map[string]string{"a": "v1", "b": "v1"})
	keys := []string{"a", "b"}
	warm(t, cs, keys, db.load, "v1")
	db.set("a", "v2")
	db.set("b", "v2")
	if err := inv.Delete(ctx, keys...); err != nil {
		t.Fatalf("Delete with WIRE.md's grants: %v", err)
	}
	waitFresh(t, cs, keys, db.load, func(string) string { return "v2" }, time.Now())
	before := applied(cs)
	if err := inv.Invalidate(ctx, keys...); err != nil {
		t.Fatalf("Invalidate with WIRE.md's grants: %v", err)
	}
	redistest.WaitFor(t, freshBound, "the Invalidate to be applied", func() bool {
		for i, n := range applied(cs) {
			if n <= before[i] {
				return false
			}
		}
		return true
	})
	if err := inv.InvalidateAll(ctx); err != nil {
		t.Fatalf("InvalidateAll with WIRE.md's grants: %v", err)
	}
}
