package tiered

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// checkPTTL fails t unless the Redis key of key in namespace ns expires in
// (lo, hi].
func checkPTTL(t *testing.T, rc redis.UniversalClient, ns, key string, lo, hi time.Duration) {
	t.Helper()
	d, err := rc.PTTL(context.Background(), ns+":"+key).Result()
	if err != nil {
		t.Fatalf("PTTL %s:%s: %v", ns, key, err)
	}
	if d <= lo || d > hi {
		t.Fatalf("PTTL of %s:%s = %v, want in (%v, %v]", ns, key, d, lo, hi)
	}
}

// checkAbsent fails t if Redis holds the key of key in namespace ns.
func checkAbsent(t *testing.T, rc redis.UniversalClient, ns, key string) {
	t.Helper()
	n, err := rc.Exists(context.Background(), ns+":"+key).Result()
	if err != nil {
		t.Fatalf("EXISTS %s:%s: %v", ns, key, err)
	}
	if n != 0 {
		t.Fatalf("Redis holds %s:%s; want nothing stored", ns, key)
	}
}

// checkFreshFor fails t unless the envelope Redis holds for key stops being
// fresh in (lo, hi] from now.
func checkFreshFor[V any](t *testing.T, c *Cache[V], key string, lo, hi time.Duration) {
	t.Helper()
	e, err := c.l2.Read(context.Background(), key)
	if err != nil {
		t.Fatalf("l2 Read %q: %v", key, err)
	}
	if e.StaleAt.IsZero() {
		t.Fatalf("the entry of %q has no soft expiry; want one (FailSafeMaxStale)", key)
	}
	if d := time.Until(e.StaleAt); d <= lo || d > hi {
		t.Fatalf("the entry of %q is fresh for %v more, want in (%v, %v]", key, d, lo, hi)
	}
}

// settleL1 hands c's staged L1 fills to ristretto and waits until it has
// applied them: until then a Get may miss a fill that was handed over (see
// l1.Cache.Fill).
func settleL1[V any](c *Cache[V]) { c.local.(interface{ Wait() }).Wait() }

// setterCtxs are the ways a loader may hand its ctx to a setter: the ctx
// itself, a ctx derived from it, or either from another goroutine while
// the loader waits for it.
var setterCtxs = []struct {
	name string
	call func(ctx context.Context, set func(context.Context) error) error
}{
	{"ctx", func(ctx context.Context, set func(context.Context) error) error { return set(ctx) }},
	{"derived", func(ctx context.Context, set func(context.Context) error) error {
		dctx, cancel := context.WithTimeout(context.WithValue(ctx, struct{}{}, 1), time.Minute)
		defer cancel()
		return set(dctx)
	}},
	{"goroutine", func(ctx context.Context, set func(context.Context) error) error {
		errc := make(chan error, 1)
		go func() { errc <- set(ctx) }()
		return <-errc
	}},
}

// A Loader's SetTTL decides the value's TTL in Redis, over Config.TTL, with
// fail-safe's grace added, whichever way the flight runs and whichever way
// the loader passes its ctx on (also through an Observer's LoadStart ctx).
func TestSetTTLLoader(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	const maxStale = 10 * time.Second
	obs := &Observer{LoadStart: func(ctx context.Context, _ LoadStartEvent) context.Context {
		return context.WithValue(ctx, struct{ span int }{}, "span")
	}}
	for _, fs := range []time.Duration{0, maxStale} {
		for _, withObs := range []bool{false, true} {
			ns := fmt.Sprintf("st%d%t", fs/time.Second, withObs)
			cfg := Config[string]{Redis: rc, Namespace: ns, TTL: 5 * time.Minute, FailSafeMaxStale: fs}
			if withObs {
				cfg.Observer = obs
			}
			c := newCache(t, cfg)
			for _, lc := range leaderContexts(t) {
				for _, how := range setterCtxs {
					name := fmt.Sprintf("failsafe=%v/observer=%t/%s/%s", fs, withObs, lc.name, how.name)
					t.Run(name, func(t *testing.T) {
						key := lc.name + "-" + how.name
						var loads atomic.Int64
						load := func(ctx context.Context, k string) (string, error) {
							loads.Add(1)
							if err := how.call(ctx, func(ctx context.Context) error { return SetTTL(ctx, 3*time.Second) }); err != nil {
								return "", err
							}
							return "v-" + k, nil
						}
						v, err := c.GetOrLoad(lc.ctx, key, load)
						if err != nil || v != "v-"+key {
							t.Fatalf("GetOrLoad: %q, %v; want %q", v, err, "v-"+key)
						}
						checkPTTL(t, rc, ns, key, 2*time.Second+fs, 3*time.Second+fs)
						if fs > 0 {
							checkFreshFor(t, c, key, 2*time.Second, 3*time.Second)
						}
						if v, err := c.GetOrLoad(lc.ctx, key, load); err != nil || v != "v-"+key || loads.Load() != 1 {
							t.Fatalf("second GetOrLoad: %q, %v after %d loads; want %q from the cache after 1", v, err, loads.Load(), "v-"+key)
						}
					})
				}
			}
		}
	}
}

// A BatchLoader's SetKeyTTL gives keys TTLs of their own, whichever of it
// and SetTTL comes first; SetTTL sets the rest, a key absent from the map
// included (as a negative entry, with Config.NegativeTTL zero).
func TestSetKeyTTLBatch(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	for _, fs := range []time.Duration{0, 10 * time.Second} {
		ns := fmt.Sprintf("sk%d", fs/time.Second)
		c := newCache(t, Config[string]{Redis: rc, Namespace: ns, TTL: 5 * time.Minute, FailSafeMaxStale: fs})
		for _, lc := range leaderContexts(t) {
			for _, how := range setterCtxs {
				t.Run(fmt.Sprintf("failsafe=%v/%s/%s", fs, lc.name, how.name), func(t *testing.T) {
					p := lc.name + "-" + how.name + "-"
					a, b, cc, d := p+"a", p+"b", p+"c", p+"d"
					var loads atomic.Int64
					load := func(ctx context.Context, keys []string) (map[string]string, error) {
						loads.Add(1)
						err := how.call(ctx, func(ctx context.Context) error {
							return errors.Join(
								SetKeyTTL(ctx, a, 2*time.Second),
								SetTTL(ctx, 3*time.Second),
								SetKeyTTL(ctx, b, 4*time.Second))
						})
						if err != nil {
							return nil, err
						}
						return map[string]string{a: "A", b: "B", cc: "C"}, nil // d: not found
					}
					got, err := c.GetManyOrLoad(lc.ctx, []string{a, b, cc, d}, load)
					if err != nil || len(got) != 3 || got[a] != "A" || got[b] != "B" || got[cc] != "C" {
						t.Fatalf("GetManyOrLoad: %v, %v", got, err)
					}
					checkPTTL(t, rc, ns, a, time.Second+fs, 2*time.Second+fs)
					checkPTTL(t, rc, ns, b, 3*time.Second+fs, 4*time.Second+fs)
					checkPTTL(t, rc, ns, cc, 2*time.Second+fs, 3*time.Second+fs)
					checkPTTL(t, rc, ns, d, 2*time.Second, 3*time.Second) // negative: no fail-safe grace
					if fs > 0 {
						checkFreshFor(t, c, a, time.Second, 2*time.Second)
						checkFreshFor(t, c, b, 3*time.Second, 4*time.Second)
						checkFreshFor(t, c, cc, 2*time.Second, 3*time.Second)
					}
					got, err = c.GetManyOrLoad(lc.ctx, []string{a, b, cc, d}, load)
					if err != nil || len(got) != 3 || loads.Load() != 1 {
						t.Fatalf("second GetManyOrLoad: %v, %v after %d loads; want 3 values from the cache after 1", got, err, loads.Load())
					}
				})
			}
		}
	}
}

// A not-found result whose loader called SetTTL is cached for that long
// with Config.NegativeTTL zero: in Redis (another instance reads it) and in
// L1 (the next read costs no Redis lookup and no load).
func TestSetTTLNotFound(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	cfg := Config[string]{Redis: rc, Namespace: "nf"}
	c := newCache(t, cfg)
	var loads atomic.Int64
	load := func(ctx context.Context, _ string) (string, error) {
		loads.Add(1)
		if err := SetTTL(ctx, 2*time.Second); err != nil {
			return "", err
		}
		return "", fmt.Errorf("no such row: %w", ErrNotFound)
	}
	if _, err := c.GetOrLoad(ctx, "k", load); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetOrLoad: %v, want ErrNotFound", err)
	}
	checkPTTL(t, rc, "nf", "k", time.Second, 2*time.Second)
	if n := c.Stats().Loads.NegativeCached; n != 1 {
		t.Fatalf("Stats.Loads.NegativeCached = %d, want 1", n)
	}
	settleL1(c)
	lookups := c.Stats().L2.Lookups
	for range 3 {
		if _, err := c.GetOrLoad(ctx, "k", load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("GetOrLoad again: %v, want ErrNotFound", err)
		}
	}
	if n, l := loads.Load(), c.Stats().L2.Lookups; n != 1 || l != lookups {
		t.Fatalf("after 3 more reads: %d loads, %d Redis lookups; want 1 load and %d lookups (L1 serves the not-found)", n, l, lookups)
	}
	other := newCache(t, cfg)
	if _, err := other.GetOrLoad(ctx, "k", load); !errors.Is(err, ErrNotFound) || loads.Load() != 1 {
		t.Fatalf("another instance: %v after %d loads; want ErrNotFound from Redis after 1", err, loads.Load())
	}
}

// A TTL <= 0 from the loader stores nothing, in Redis or in L1: the caller
// gets the result, and the next read loads again. It overrides
// NegativeTTL too.
func TestSetTTLZeroStoresNothing(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	for _, mode := range []string{"redis", "l1only"} {
		for _, tc := range []struct {
			name string
			ttl  time.Duration
			err  error // the loader's
		}{
			{"zero", 0, nil},
			{"negative", -time.Second, nil},
			{"notfound", 0, ErrNotFound},
		} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				ns := "z" + mode + tc.name
				cfg := Config[string]{Namespace: ns, NegativeTTL: time.Minute}
				if mode == "redis" {
					cfg.Redis = rc
				}
				c := newCache(t, cfg)
				var loads atomic.Int64
				load := func(ctx context.Context, _ string) (string, error) {
					loads.Add(1)
					if err := SetTTL(ctx, tc.ttl); err != nil {
						return "", err
					}
					if tc.err != nil {
						return "", tc.err
					}
					return "expired-token", nil
				}
				for i := int64(1); i <= 2; i++ {
					v, err := c.GetOrLoad(ctx, "k", load)
					if !errors.Is(err, tc.err) || (tc.err == nil && v != "expired-token") {
						t.Fatalf("GetOrLoad %d: %q, %v; want %q, %v", i, v, err, "expired-token", tc.err)
					}
					if n := loads.Load(); n != i {
						t.Fatalf("GetOrLoad %d: %d loads so far, want %d (nothing stored)", i, n, i)
					}
					if mode == "redis" {
						checkAbsent(t, rc, ns, "k")
					}
				}
			})
		}
	}
	t.Run("batch", func(t *testing.T) {
		c := newCache(t, Config[string]{Redis: rc, Namespace: "zb"})
		var asked [][]string
		load := func(ctx context.Context, keys []string) (map[string]string, error) {
			asked = append(asked, slices.Clone(keys))
			if err := SetTTL(ctx, 0); err != nil {
				return nil, err
			}
			m := map[string]string{}
			for _, k := range keys {
				if k == "b" {
					if err := SetKeyTTL(ctx, k, time.Minute); err != nil {
						return nil, err
					}
				}
				m[k] = strings.ToUpper(k)
			}
			return m, nil
		}
		for range 2 {
			got, err := c.GetManyOrLoad(ctx, []string{"a", "b"}, load)
			if err != nil || got["a"] != "A" || got["b"] != "B" {
				t.Fatalf("GetManyOrLoad: %v, %v", got, err)
			}
		}
		checkAbsent(t, rc, "zb", "a")
		checkPTTL(t, rc, "zb", "b", 59*time.Second, time.Minute)
		if want := [][]string{{"a", "b"}, {"a"}}; fmt.Sprint(asked) != fmt.Sprint(want) {
			t.Fatalf("the loader was asked for %v, want %v (b stored, a not)", asked, want)
		}
	})
}

// SetL1TTL caps the local copy the load fills: before the cap the key is
// served from L1, after it from Redis (without a load). It is clamped to
// MaxL1TTL, and <= 0 keeps no local copy.
func TestSetL1TTL(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	const l1TTL = 200 * time.Millisecond
	for _, tc := range []struct {
		name   string
		maxL1  time.Duration
		set    time.Duration
		expiry time.Duration // the least life of the local copy
	}{
		{"set", time.Minute, l1TTL, l1TTL},
		{"clamped", l1TTL, time.Hour, l1TTL},
	} {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/batch=%t", tc.name, batch), func(t *testing.T) {
				ns := fmt.Sprintf("l1%s%t", tc.name, batch)
				c := newCache(t, Config[string]{Redis: rc, Namespace: ns, MaxL1TTL: tc.maxL1, L1TTLJitter: NoJitter})
				var loads atomic.Int64
				start := time.Now()
				if batch {
					_, err := c.GetManyOrLoad(ctx, []string{"k"}, func(ctx context.Context, keys []string) (map[string]string, error) {
						loads.Add(1)
						return map[string]string{"k": "v"}, SetL1TTL(ctx, tc.set)
					})
					if err != nil {
						t.Fatal(err)
					}
				} else {
					if _, err := c.GetOrLoad(ctx, "k", func(ctx context.Context, _ string) (string, error) {
						loads.Add(1)
						return "v", SetL1TTL(ctx, tc.set)
					}); err != nil {
						t.Fatal(err)
					}
				}
				settleL1(c)
				lookups := c.Stats().L2.Lookups
				if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
					t.Fatalf("Get: %q, %v", v, err)
				}
				// The copy was filled after start: it lives until at least
				// start + its TTL.
				if early := time.Since(start) < tc.expiry; early && c.Stats().L2.Lookups != lookups {
					t.Fatalf("a Get within %v of the load went to Redis; want it served from L1", tc.expiry)
				}
				redistest.WaitFor(t, 10*time.Second, "a Get to go to Redis once the local copy expired", func() bool {
					if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
						t.Fatalf("Get: %q, %v", v, err)
					}
					return c.Stats().L2.Lookups > lookups
				})
				// L1 times expiry on its coarse clock, which may lag the
				// wall clock by a tick (1 ms) or a late tick when it was
				// filled: allow 10 ms.
				if d := time.Since(start); d < tc.expiry-10*time.Millisecond {
					t.Fatalf("the local copy expired %v after the load started, before its TTL %v", d, tc.expiry)
				}
				if n := loads.Load(); n != 1 {
					t.Fatalf("%d loads, want 1 (the value is in Redis)", n)
				}
			})
		}
	}
	t.Run("none", func(t *testing.T) {
		c := newCache(t, Config[string]{Redis: rc, Namespace: "l1none"})
		if _, err := c.GetOrLoad(ctx, "k", func(ctx context.Context, _ string) (string, error) {
			return "v", SetL1TTL(ctx, 0)
		}); err != nil {
			t.Fatal(err)
		}
		_, err := c.GetManyOrLoad(ctx, []string{"a", "b"}, func(ctx context.Context, keys []string) (map[string]string, error) {
			return map[string]string{"a": "A", "b": "B"}, SetL1TTL(ctx, -time.Second)
		})
		if err != nil {
			t.Fatal(err)
		}
		lookups := c.Stats().L2.Lookups
		if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
			t.Fatalf("Get: %q, %v", v, err)
		}
		if got, err := c.GetMany(ctx, []string{"a", "b"}); err != nil || len(got) != 2 {
			t.Fatalf("GetMany: %v, %v", got, err)
		}
		if n := c.Stats().L2.Lookups - lookups; n != 3 {
			t.Fatalf("%d Redis lookups for 3 keys loaded with SetL1TTL <= 0, want 3 (no local copies)", n)
		}
		checkPTTL(t, rc, "l1none", "k", DefaultTTL-time.Minute, DefaultTTL)
	})
}

// The setters refuse, with an error naming them, a ctx that is not a
// loader's (and a ctx derived from a caller's), a key that is not part of
// the load, and any call once the loader has returned, which then changes
// nothing.
func TestLoadTTLSetterErrors(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	type callerKey struct{}
	caller := context.WithValue(context.Background(), callerKey{}, "caller")
	setters := []struct {
		name string
		call func(ctx context.Context, key string) error
	}{
		{"SetTTL", func(ctx context.Context, _ string) error { return SetTTL(ctx, time.Second) }},
		{"SetKeyTTL", func(ctx context.Context, key string) error { return SetKeyTTL(ctx, key, time.Second) }},
		{"SetL1TTL", func(ctx context.Context, _ string) error { return SetL1TTL(ctx, time.Second) }},
	}
	checkErr := func(t *testing.T, err, want error, words ...string) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("got %v, want an error that is %v", err, want)
		}
		for _, w := range words {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("error %q does not name %q", err, w)
			}
		}
	}

	t.Run("outside", func(t *testing.T) {
		for _, s := range setters {
			for _, ctx := range []context.Context{context.Background(), caller, nil} {
				checkErr(t, s.call(ctx, "k"), errNotLoaderCtx, "tiered: "+s.name+":")
			}
		}
		// The caller's ctx (and one derived from it) inside the loader.
		c := newCache(t, Config[string]{Redis: rc, Namespace: "eo"})
		for _, lc := range leaderContexts(t) {
			cctx := context.WithValue(lc.ctx, callerKey{}, "caller")
			_, err := c.GetOrLoad(cctx, "k-"+lc.name, func(ctx context.Context, key string) (string, error) {
				if ctx.Value(callerKey{}) != "caller" {
					t.Errorf("the loader's ctx lacks the caller's values")
				}
				for _, s := range setters {
					dctx, cancel := context.WithCancel(cctx)
					err := errors.Join(s.call(cctx, key), s.call(dctx, key))
					cancel()
					if !errors.Is(err, errNotLoaderCtx) {
						return "", fmt.Errorf("%s with the caller's ctx: %v", s.name, err)
					}
				}
				return "v", nil
			})
			if err != nil {
				t.Fatalf("%s: %v", lc.name, err)
			}
			checkPTTL(t, rc, "eo", "k-"+lc.name, DefaultTTL-time.Minute, DefaultTTL)
		}
	})

	// The Observer's callbacks around the loader get its ctx, but are not
	// the loader: before it runs, and once it has returned, setters refuse.
	t.Run("observer", func(t *testing.T) {
		startErr, doneErr := make(chan error, 1), make(chan error, 1)
		obs := &Observer{
			LoadStart: func(ctx context.Context, _ LoadStartEvent) context.Context {
				startErr <- SetTTL(ctx, time.Second)
				return ctx
			},
			LoadDone: func(ctx context.Context, _ LoadDoneEvent) { doneErr <- SetTTL(ctx, time.Second) },
		}
		c := newCache(t, Config[string]{Redis: rc, Namespace: "eobs", Observer: obs})
		if _, err := c.GetOrLoad(context.Background(), "k", func(ctx context.Context, _ string) (string, error) {
			return "v", nil
		}); err != nil {
			t.Fatal(err)
		}
		checkErr(t, <-startErr, errNotLoaderCtx, "tiered: SetTTL:")
		checkErr(t, <-doneErr, errLoaderReturned, "tiered: SetTTL:")
		checkPTTL(t, rc, "eobs", "k", DefaultTTL-time.Minute, DefaultTTL)
	})

	t.Run("foreign key", func(t *testing.T) {
		c := newCache(t, Config[string]{Redis: rc, Namespace: "ef"})
		ctx := context.Background()
		var single error
		if _, err := c.GetOrLoad(ctx, "k", func(ctx context.Context, key string) (string, error) {
			single = errors.Join(SetKeyTTL(ctx, "k", 3*time.Second), SetKeyTTL(ctx, "other", time.Hour))
			return "v", nil
		}); err != nil {
			t.Fatal(err)
		}
		checkErr(t, single, errNotLoadKey, "SetKeyTTL", `"other"`, `"k"`)
		checkPTTL(t, rc, "ef", "k", 2*time.Second, 3*time.Second)

		if err := c.Set(ctx, "cached", "c"); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{3, 20} { // a small batch and one past smallLoad
			keys := []string{"cached"}
			for i := range n {
				keys = append(keys, fmt.Sprintf("b%d-%d", n, i))
			}
			last := keys[len(keys)-1]
			var batchErr, lastErr error
			if _, err := c.GetManyOrLoad(ctx, keys, func(ctx context.Context, ks []string) (map[string]string, error) {
				batchErr = errors.Join(SetKeyTTL(ctx, "cached", time.Hour), SetKeyTTL(ctx, "nope", time.Hour))
				lastErr = SetKeyTTL(ctx, last, 3*time.Second)
				m := map[string]string{}
				for _, k := range ks {
					m[k] = "v"
				}
				return m, nil
			}); err != nil {
				t.Fatal(err)
			}
			// "cached" was in L1: the loader was not asked for it.
			checkErr(t, batchErr, errNotLoadKey, `SetKeyTTL "cached"`, `SetKeyTTL "nope"`, fmt.Sprintf("%d keys", n))
			if lastErr != nil {
				t.Fatalf("SetKeyTTL of a key of the batch: %v", lastErr)
			}
			checkPTTL(t, rc, "ef", last, 2*time.Second, 3*time.Second)
			checkPTTL(t, rc, "ef", keys[1], DefaultTTL-time.Minute, DefaultTTL)
		}
	})

	t.Run("after return", func(t *testing.T) {
		c := newCache(t, Config[string]{Redis: rc, Namespace: "ea"})
		for _, lc := range leaderContexts(t) {
			for _, batch := range []bool{false, true} {
				key := fmt.Sprintf("%s-%t", lc.name, batch)
				var kept context.Context
				gate, late := make(chan struct{}), make(chan error, len(setters))
				start := func(ctx context.Context) {
					kept = ctx
					go func() { // a goroutine of the loader that outlives it
						<-gate
						for _, s := range setters {
							late <- s.call(ctx, key)
						}
					}()
				}
				var err error
				if batch {
					_, err = c.GetManyOrLoad(lc.ctx, []string{key}, func(ctx context.Context, keys []string) (map[string]string, error) {
						start(ctx)
						return map[string]string{key: "v"}, nil
					})
				} else {
					_, err = c.GetOrLoad(lc.ctx, key, func(ctx context.Context, _ string) (string, error) {
						start(ctx)
						return "v", nil
					})
				}
				if err != nil {
					t.Fatal(err)
				}
				close(gate)
				for _, s := range setters {
					checkErr(t, <-late, errLoaderReturned, "tiered: "+s.name+":")
					checkErr(t, s.call(kept, key), errLoaderReturned, "tiered: "+s.name+":", "returned")
				}
				checkPTTL(t, rc, "ea", key, DefaultTTL-time.Minute, DefaultTTL)
				settleL1(c)
				lookups := c.Stats().L2.Lookups
				if v, err := c.Get(context.Background(), key); err != nil || v != "v" || c.Stats().L2.Lookups != lookups {
					t.Fatalf("Get after a late SetL1TTL: %q, %v; want the L1 copy kept", v, err)
				}
			}
		}
	})
}

// A loader that calls another Cache with its ctx sets the TTLs of its own
// load, and the other Cache's loader those of its own.
func TestSetTTLNestedLoads(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	ctx := context.Background()
	outer := newCache(t, Config[string]{Redis: rc, Namespace: "outer"})
	inner := newCache(t, Config[string]{Redis: rc, Namespace: "inner"})
	v, err := outer.GetOrLoad(ctx, "k", func(ctx context.Context, key string) (string, error) {
		if err := SetTTL(ctx, 3*time.Second); err != nil {
			return "", err
		}
		part, err := inner.GetOrLoad(ctx, key, func(ctx context.Context, _ string) (string, error) {
			return "inner", SetTTL(ctx, 7*time.Second)
		})
		return "outer+" + part, err
	})
	if err != nil || v != "outer+inner" {
		t.Fatalf("GetOrLoad: %q, %v", v, err)
	}
	checkPTTL(t, rc, "outer", "k", 2*time.Second, 3*time.Second)
	checkPTTL(t, rc, "inner", "k", 6*time.Second, 7*time.Second)
}
