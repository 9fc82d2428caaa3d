package tiered

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
)

func claimCache(t *testing.T, addr, ns string, wait time.Duration, hmacKey string) *Cache[string] {
	t.Helper()
	cfg := Config[string]{Redis: newClient(t, addr), Namespace: ns, LoadClaim: time.Second, LoadClaimWait: wait}
	if hmacKey != "" {
		cfg.HMACKey = []byte(hmacKey)
	}
	return newCache(t, cfg)
}

// holdLoad starts GetOrLoad of key on c with a loader that blocks until
// release is closed, returns once the loader runs, and reports the call's
// result on the returned channel.
func holdLoad(t *testing.T, c *Cache[string], key, value string, release <-chan struct{}) <-chan string {
	t.Helper()
	running := make(chan struct{})
	out := make(chan string, 1)
	go func() {
		v, err := c.GetOrLoad(context.Background(), key, func(ctx context.Context, _ string) (string, error) {
			close(running)
			<-release
			return value, nil
		})
		if err != nil {
			v = "error: " + err.Error()
		}
		out <- v
	}()
	select {
	case <-running:
	case <-time.After(10 * time.Second):
		t.Fatal("the owner's loader did not start")
	}
	return out
}

// TestLoadClaimWriteWins: a Set of the key while the claim's owner is
// loading wins everywhere: the waiting instance, woken by the Set's
// invalidation, returns the written value without loading, and the owner's
// late value is kept neither in Redis nor in any L1.
func TestLoadClaimWriteWins(t *testing.T) {
	srv := redistest.StartServer(t)
	owner := claimCache(t, srv.Addr(), "clw", 5*time.Second, "")
	waiter := claimCache(t, srv.Addr(), "clw", 5*time.Second, "")
	writer := claimCache(t, srv.Addr(), "clw", 5*time.Second, "")
	release := make(chan struct{})
	ownerGot := holdLoad(t, owner, "k", "old-row", release)
	var calls atomic.Int64
	got := make(chan string, 1)
	go func() {
		v, _ := waiter.GetOrLoad(context.Background(), "k", func(context.Context, string) (string, error) {
			calls.Add(1)
			return "waiter-row", nil
		})
		got <- v
	}()
	redistest.WaitFor(t, 5*time.Second, "the waiter to wait on the claim", func() bool { return waiter.Stats().Loads.Claims.Waited == 1 })
	if err := writer.Set(context.Background(), "k", "new"); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got:
		if v != "new" {
			t.Fatalf("waiter got %q, want the written new", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter was not woken by the write")
	}
	close(release)
	<-ownerGot
	for _, c := range []*Cache[string]{owner, waiter, writer} {
		redistest.WaitFor(t, 5*time.Second, "new everywhere", func() bool {
			v, err := c.Get(context.Background(), "k")
			return err == nil && v == "new"
		})
	}
	if calls.Load() != 0 {
		t.Fatalf("the waiter called its loader %d times", calls.Load())
	}
	if raw, _ := newClient(t, srv.Addr()).Get(context.Background(), "clw:k").Bytes(); !strings.HasSuffix(string(raw), "new") {
		t.Fatalf("Redis holds %q, want the written value", raw)
	}
}

// TestLoadClaimPollsWithoutInvalidation: a waiter that cannot hear the
// owner's invalidation (another HMAC key: it rejects the message) still
// takes the owner's value, found by polling Redis, without loading.
func TestLoadClaimPollsWithoutInvalidation(t *testing.T) {
	srv := redistest.StartServer(t)
	owner := claimCache(t, srv.Addr(), "clp", 5*time.Second, "key-one")
	waiter := claimCache(t, srv.Addr(), "clp", 5*time.Second, "key-two")
	release := make(chan struct{})
	ownerGot := holdLoad(t, owner, "k", "row", release)
	var calls atomic.Int64
	got := make(chan string, 1)
	go func() {
		v, _ := waiter.GetOrLoad(context.Background(), "k", func(context.Context, string) (string, error) {
			calls.Add(1)
			return "waiter-row", nil
		})
		got <- v
	}()
	redistest.WaitFor(t, 5*time.Second, "the waiter to wait on the claim", func() bool { return waiter.Stats().Loads.Claims.Waited == 1 })
	close(release)
	if v := <-ownerGot; v != "row" {
		t.Fatalf("owner got %q", v)
	}
	select {
	case v := <-got:
		if v != "row" || calls.Load() != 0 {
			t.Fatalf("waiter got %q with %d loader calls; want the owner's row, none", v, calls.Load())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter never found the owner's value")
	}
	if st := waiter.Stats().Loads.Claims; st.FromOther != 1 {
		t.Fatalf("waiter claims %+v, want 1 from the other instance", st)
	}
	if n := newClient(t, srv.Addr()).Exists(context.Background(), wire.ClaimKey("clp:", "k")).Val(); n != 0 {
		t.Fatal("the owner left its claim behind")
	}
}

// TestLoadClaimWaitBound: while the owner keeps its claim (renewed, its
// loader slow), a waiter loads by itself once LoadClaimWait has passed.
func TestLoadClaimWaitBound(t *testing.T) {
	srv := redistest.StartServer(t)
	owner := claimCache(t, srv.Addr(), "clb", 5*time.Second, "")
	waiter := claimCache(t, srv.Addr(), "clb", 400*time.Millisecond, "")
	release := make(chan struct{})
	defer close(release)
	holdLoad(t, owner, "k", "slow-row", release)
	start := time.Now()
	v, err := waiter.GetOrLoad(context.Background(), "k", func(context.Context, string) (string, error) {
		return "own-row", nil
	})
	took := time.Since(start)
	if err != nil || v != "own-row" {
		t.Fatalf("waiter GetOrLoad = %q, %v", v, err)
	}
	if took < 350*time.Millisecond || took > 5*time.Second {
		t.Fatalf("waiter returned after %v, want about LoadClaimWait (400ms): the owner renews its 1s lease", took)
	}
	if st := waiter.Stats().Loads.Claims; st.WaitBound != 1 || st.Won != 0 {
		t.Fatalf("waiter claims %+v, want one wait bound and no claim", st)
	}
}

// TestLoadClaimConfig checks the bounds of LoadClaim and LoadClaimWait.
func TestLoadClaimConfig(t *testing.T) {
	for _, cfg := range []Config[string]{
		{LoadClaim: -time.Second}, {LoadClaim: time.Millisecond}, {LoadClaim: time.Second, LoadClaimWait: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(LoadClaim %v, LoadClaimWait %v) succeeded", cfg.LoadClaim, cfg.LoadClaimWait)
		}
	}
	d, err := Config[string]{LoadClaim: time.Second}.withDefaults()
	if err != nil || d.LoadClaimWait != DefaultLoadTimeout/2 {
		t.Fatalf("default LoadClaimWait %v, %v; want LoadTimeout/2", d.LoadClaimWait, err)
	}
	d, _ = Config[string]{LoadClaim: time.Second, LoadClaimWait: time.Hour}.withDefaults()
	if d.LoadClaimWait != DefaultLoadTimeout {
		t.Fatalf("LoadClaimWait %v, want it capped at LoadTimeout", d.LoadClaimWait)
	}
	b, _ := json.Marshal(Config[string]{LoadClaim: time.Second})
	if !strings.Contains(string(b), `"LoadClaim":1000000000`) {
		t.Fatalf("JSON %s lacks LoadClaim", b)
	}
}

// TestLoadClaimSoftTimeout: a waiter with a stale value in Redis and
// SoftTimeout set returns the stale value after SoftTimeout while another
// instance's claimed load is still running, as it would for its own loader.
func TestLoadClaimSoftTimeout(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "cls", TTL: 200 * time.Millisecond,
			FailSafeMaxStale: time.Hour, SoftTimeout: 200 * time.Millisecond, LoadClaim: time.Second, LoadClaimWait: 5 * time.Second}
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
	v, err := waiter.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "waiter-row", nil })
	took := time.Since(start)
	if err != nil || v != "old" {
		t.Fatalf("waiter GetOrLoad = %q, %v; want the stale old", v, err)
	}
	if took > 200*time.Millisecond+time.Second {
		t.Fatalf("waiter returned after %v, want about SoftTimeout (200ms)", took)
	}
	if st := waiter.Stats().Loads; st.StaleServedSoftTimeout != 1 || st.Claims.Waited != 1 {
		t.Fatalf("waiter stats: soft %d, claims %+v", st.StaleServedSoftTimeout, st.Claims)
	}
}

// TestLoadClaimFailureLogged: a claim that Redis does not answer (the
// proxy holds the claim's SET) lets the load go on without it, and is
// logged once as an episode, not silently.
func TestLoadClaimFailureLogged(t *testing.T) {
	srv := redistest.StartServer(t)
	proxy := redistest.StartProxy(t, srv.Addr())
	core, logs := observer.New(zap.WarnLevel)
	c := newCache(t, Config[string]{Redis: newClient(t, proxy.Addr()), Namespace: "clf", LoadClaim: time.Second,
		RedisTimeout: 200 * time.Millisecond, BreakerFailures: NoBreaker, Logger: zap.New(core)})
	release := proxy.Hold("clf:claim:")
	defer release()
	for _, k := range []string{"a", "b"} {
		v, err := c.GetOrLoad(context.Background(), k, func(context.Context, string) (string, error) { return "row", nil })
		if err != nil || v != "row" {
			t.Fatalf("GetOrLoad(%s) = %q, %v; want the load to go on without the claim", k, v, err)
		}
	}
	if n := logs.FilterMessage(msgClaimFail).Len(); n != 1 {
		t.Fatalf("%d %q warnings, want 1 (one episode)", n, msgClaimFail)
	}
}
