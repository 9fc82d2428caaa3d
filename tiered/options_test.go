package tiered

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// fillRecorder wraps a Cache's L1 and records, per key, the TTL of every
// fill handed to it.
type fillRecorder[V any] struct {
	localTier[item[V]]
	mu    sync.Mutex
	fills map[string][]time.Duration
}

// newRecordedCache is newCache with a fillRecorder around its L1,
// installed before the Cache starts any goroutine.
func newRecordedCache[V any](t *testing.T, cfg Config[V]) (*Cache[V], *fillRecorder[V]) {
	t.Helper()
	var r *fillRecorder[V]
	c, err := build(cfg, func(local localTier[item[V]]) localTier[item[V]] {
		r = &fillRecorder[V]{localTier: local, fills: map[string][]time.Duration{}}
		return r
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, r
}

func (r *fillRecorder[V]) Fill(t l1.Ticket, v item[V], ttl time.Duration) bool {
	r.mu.Lock()
	r.fills[t.Key()] = append(r.fills[t.Key()], ttl)
	r.mu.Unlock()
	return r.localTier.Fill(t, v, ttl)
}

// of returns the TTLs of key's fills so far.
func (r *fillRecorder[V]) of(key string) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.fills[key]...)
}

// TestNoJitter: with L1TTLJitter NoJitter every local copy is filled for
// exactly the TTL its bounds allow (MaxL1TTL, WithL1TTL, the value's TTL),
// with and without Redis; with the default jitter the TTLs are shortened by
// up to DefaultL1TTLJitter of the bound.
func TestNoJitter(t *testing.T) {
	ctx := context.Background()
	load := func(context.Context, string) (string, error) { return "v", nil }
	const n = 50
	for _, withRedis := range []bool{false, true} {
		name := "L1-only"
		if withRedis {
			name = "redis"
		}
		t.Run(name, func(t *testing.T) {
			newJitterCache := func(jitter float64) (*Cache[string], *fillRecorder[string]) {
				cfg := Config[string]{Namespace: "jit", TTL: time.Hour, MaxL1TTL: time.Minute, L1TTLJitter: jitter}
				if withRedis {
					cfg.Redis = newClient(t, miniredis.RunT(t).Addr())
				}
				return newRecordedCache(t, cfg)
			}
			c, rec := newJitterCache(NoJitter)
			for _, tc := range []struct {
				name string
				opts []Option
				want time.Duration
			}{
				{"MaxL1TTL", nil, time.Minute},
				{"WithL1TTL", []Option{WithL1TTL(7 * time.Second)}, 7 * time.Second},
				{"WithTTL", []Option{WithTTL(20 * time.Second)}, 20 * time.Second},
			} {
				for i := range n {
					key := fmt.Sprintf("%s-%d", tc.name, i)
					if _, err := c.GetOrLoad(ctx, key, load, tc.opts...); err != nil {
						t.Fatal(err)
					}
					if got := rec.of(key); len(got) != 1 || got[0] != tc.want {
						t.Fatalf("%s: fills of %q with NoJitter: %v, want exactly [%v]", tc.name, key, got, tc.want)
					}
				}
			}

			c, rec = newJitterCache(0) // DefaultL1TTLJitter
			shortened := 0
			for i := range n {
				key := fmt.Sprint("default-", i)
				if _, err := c.GetOrLoad(ctx, key, load); err != nil {
					t.Fatal(err)
				}
				got := rec.of(key)
				lo := time.Minute - time.Duration(DefaultL1TTLJitter*float64(time.Minute))
				if len(got) != 1 || got[0] < lo || got[0] > time.Minute {
					t.Fatalf("fills of %q with the default jitter: %v, want one in [%v, 1m]", key, got, lo)
				}
				if got[0] < time.Minute {
					shortened++
				}
			}
			if shortened == 0 {
				t.Errorf("default jitter shortened none of %d local TTLs", n)
			}
		})
	}
}

// TestJitterConfig: zero means DefaultL1TTLJitter, NoJitter (or any
// negative value) means none, and 1 or more, or NaN, is refused.
func TestJitterConfig(t *testing.T) {
	for _, tc := range []struct {
		in, want float64
	}{{0, DefaultL1TTLJitter}, {NoJitter, 0}, {-0.5, 0}, {0.25, 0.25}} {
		cfg, err := Config[string]{L1TTLJitter: tc.in}.withDefaults()
		if err != nil || cfg.L1TTLJitter != tc.want {
			t.Errorf("L1TTLJitter %v: became %v (err %v), want %v", tc.in, cfg.L1TTLJitter, err, tc.want)
		}
	}
	for _, bad := range []float64{1, 1.5, math.Inf(1), math.NaN()} {
		if _, err := New(Config[string]{L1TTLJitter: bad}); err == nil {
			t.Errorf("New with L1TTLJitter %v: no error", bad)
		}
	}
}

// TestOffSettings: NoBreaker, NoL1WhileUnhealthy and NoValueSizeLimit do
// what their docs say, next to the defaults they replace.
func TestOffSettings(t *testing.T) {
	ctx := context.Background()
	load := func(_ context.Context, k string) (string, error) { return "v:" + k, nil }

	t.Run("NoBreaker", func(t *testing.T) {
		for _, tc := range []struct {
			failures   int
			wantOpened bool
		}{{0, true}, {NoBreaker, false}} {
			mr := miniredis.RunT(t)
			c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "brk", BreakerFailures: tc.failures})
			mr.Close()
			for i := range 3 * DefaultBreakerFailures {
				if _, err := c.GetOrLoad(ctx, fmt.Sprint("k", i), load); err != nil {
					t.Fatalf("GetOrLoad with Redis down: %v", err)
				}
			}
			st := c.Stats().L2
			if opened := st.BreakerOpened > 0; opened != tc.wantOpened || (st.Skipped > 0) != tc.wantOpened {
				t.Errorf("BreakerFailures %d, %d failed reads: breaker opened %d times, %d operations skipped; want opened: %v",
					tc.failures, 3*DefaultBreakerFailures, st.BreakerOpened, st.Skipped, tc.wantOpened)
			}
			if !tc.wantOpened && st.Breaker != BreakerClosed {
				t.Errorf("NoBreaker: breaker %q, want closed", st.Breaker)
			}
		}
	})

	t.Run("NoL1WhileUnhealthy", func(t *testing.T) {
		for _, tc := range []struct {
			unhealthy time.Duration
			want      []time.Duration
		}{{0, []time.Duration{DefaultUnhealthyL1TTL}}, {NoL1WhileUnhealthy, nil}} {
			mr := miniredis.RunT(t)
			c, rec := newRecordedCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "unh",
				UnhealthyL1TTL: tc.unhealthy, L1TTLJitter: NoJitter, BreakerFailures: NoBreaker})
			mr.Close()
			// The stream turns unhealthy, then its worker drops L1 (an epoch
			// bump) for the disconnect: a load whose ticket that overtakes
			// fills nothing whatever the setting, so wait for it.
			eventually(t, "the invalidation stream to turn unhealthy and drop L1", func() bool {
				return !c.bus.Health().Healthy && c.Stats().L1.EpochBumps > 0
			})
			// Should another invalidation overtake a load all the same
			// (counted as a conflict), load another key.
			key := ""
			for i := 0; key == "" && i < 10; i++ {
				before := c.Stats().Loads.Conflicts
				k := fmt.Sprint("k", i)
				if v, err := c.GetOrLoad(ctx, k, load); err != nil || v != "v:"+k {
					t.Fatalf("GetOrLoad while unhealthy: %q %v", v, err)
				}
				if c.Stats().Loads.Conflicts == before {
					key = k
				}
			}
			if key == "" {
				t.Fatal("every load was overtaken by an invalidation")
			}
			if h := c.bus.Health(); h.Healthy {
				t.Fatal("the stream turned healthy again with Redis down")
			}
			if got := rec.of(key); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("UnhealthyL1TTL %v: fills while unhealthy %v, want %v", tc.unhealthy, got, tc.want)
			}
		}
	})

	t.Run("NoValueSizeLimit", func(t *testing.T) {
		mr := miniredis.RunT(t)
		big := strings.Repeat("x", DefaultMaxValueSize+1)
		bounded := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "size"})
		if err := bounded.Set(ctx, "big", big); !errors.Is(err, l2.ErrTooLarge) {
			t.Errorf("Set of %d bytes with the default MaxValueSize: %v, want l2.ErrTooLarge", len(big), err)
		}
		// A 4 MiB script call to miniredis under -race on a busy machine
		// can outlast the default RedisTimeout and newClient's 500ms read
		// timeout: this test is about the size limit, not the timeouts.
		slow := func() *redis.Client {
			c := redis.NewClient(&redis.Options{Addr: mr.Addr(), ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
			t.Cleanup(func() { _ = c.Close() })
			return c
		}
		unbounded := newCache(t, Config[string]{Redis: slow(), Namespace: "size", MaxValueSize: NoValueSizeLimit, RedisTimeout: 10 * time.Second})
		if err := unbounded.Set(ctx, "big", big); err != nil {
			t.Fatalf("Set of %d bytes with NoValueSizeLimit: %v", len(big), err)
		}
		reader := newCache(t, Config[string]{Redis: slow(), Namespace: "size", MaxValueSize: NoValueSizeLimit, RedisTimeout: 10 * time.Second})
		if v, err := reader.Get(ctx, "big"); err != nil || len(v) != len(big) {
			t.Errorf("Get of the big value with NoValueSizeLimit: %d bytes, %v; want %d bytes", len(v), err, len(big))
		}
	})
}

// TestFollowerOptions pins what Option documents: per-call options (and
// the loader) shape only the loads a call leads. A call that joins a load
// another call leads gets that load's result, stored in Redis and L1 as the
// leader's options say, whatever its own options; a batch that joins one key
// and leads another applies its options to the key it leads. The leader's
// loader is gated so that the follower joins its load; then it is released.
func TestFollowerOptions(t *testing.T) {
	const (
		ttl    = time.Hour   // Config.TTL
		maxL1  = time.Minute // Config.MaxL1TTL
		shared = "k"         // the key the leader leads and the follower joins
		own    = "own"       // a key only the batch follower asks for (it leads it)
	)
	// stored is how a key was stored: its Redis TTL and its one L1 fill
	// (zero: not stored there).
	type stored struct{ redis, fill time.Duration }
	cases := []struct {
		name             string
		leader, follower []Option
		notFound         bool   // the loaders answer ErrNotFound
		leaderWant       stored // how the shared key is stored: as the leader says
		followerWant     stored // how the batch follower's own key is stored: as the follower says
	}{
		{"WithTTL/follower-only", nil, []Option{WithTTL(45 * time.Second)}, false,
			stored{ttl, maxL1}, stored{45 * time.Second, 45 * time.Second}},
		{"WithTTL/both", []Option{WithTTL(30 * time.Second)}, []Option{WithTTL(45 * time.Second)}, false,
			stored{30 * time.Second, 30 * time.Second}, stored{45 * time.Second, 45 * time.Second}},
		{"WithL1TTL/follower-only", nil, []Option{WithL1TTL(5 * time.Second)}, false,
			stored{ttl, maxL1}, stored{ttl, 5 * time.Second}},
		{"WithL1TTL/leader-only", []Option{WithL1TTL(5 * time.Second)}, nil, false,
			stored{ttl, 5 * time.Second}, stored{ttl, maxL1}},
		{"WithNegativeTTL/follower-only", nil, []Option{WithNegativeTTL(time.Minute)}, true,
			stored{}, stored{time.Minute, time.Minute}},
		{"WithNegativeTTL/leader-caches", []Option{WithNegativeTTL(time.Minute)}, []Option{WithNegativeTTL(-1)}, true,
			stored{time.Minute, time.Minute}, stored{}},
		{"WithVersion/ignored", []Option{WithVersion(5)}, []Option{WithVersion(7)}, false,
			stored{ttl, maxL1}, stored{ttl, maxL1}},
	}
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	leaders := []struct {
		name  string
		ctx   context.Context
		batch bool
	}{
		{"GetOrLoad-inline", context.Background(), false},
		{"GetOrLoad-detached", cancellable, false},
		{"GetManyOrLoad-inline", context.Background(), true},
		{"GetManyOrLoad-detached", cancellable, true},
	}
	for _, tc := range cases {
		for _, ld := range leaders {
			for _, followerBatch := range []bool{false, true} {
				fname := "GetOrLoad"
				if followerBatch {
					fname = "GetManyOrLoad"
				}
				t.Run(tc.name+"/"+ld.name+"/"+fname, func(t *testing.T) {
					ctx := context.Background()
					mr := miniredis.RunT(t)
					c, rec := newRecordedCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "fo",
						TTL: ttl, MaxL1TTL: maxL1, L1TTLJitter: NoJitter})
					value := func(who, k string) (string, bool) {
						if tc.notFound {
							return "", false
						}
						return who + ":" + k, true
					}

					started, release := make(chan struct{}), make(chan struct{})
					leaderDone := make(chan error, 1)
					if ld.batch {
						go func() {
							m, err := c.GetManyOrLoad(ld.ctx, []string{shared}, func(_ context.Context, keys []string) (map[string]string, error) {
								close(started)
								<-release
								out := map[string]string{}
								for _, k := range keys {
									if v, ok := value("leader", k); ok {
										out[k] = v
									}
								}
								return out, nil
							}, tc.leader...)
							want := map[string]string{}
							if v, ok := value("leader", shared); ok {
								want[shared] = v
							}
							if err == nil && fmt.Sprint(m) != fmt.Sprint(want) {
								err = fmt.Errorf("leader got %v, want %v", m, want)
							}
							leaderDone <- err
						}()
					} else {
						go func() {
							v, err := c.GetOrLoad(ld.ctx, shared, func(_ context.Context, k string) (string, error) {
								close(started)
								<-release
								if v, ok := value("leader", k); ok {
									return v, nil
								}
								return "", ErrNotFound
							}, tc.leader...)
							if tc.notFound && errors.Is(err, ErrNotFound) {
								err = nil
							} else if want, _ := value("leader", shared); err == nil && v != want {
								err = fmt.Errorf("leader got %q, want %q", v, want)
							}
							leaderDone <- err
						}()
					}
					<-started

					// The follower: its loader may load only the key nobody else is loading.
					followerDone := make(chan error, 1)
					var followerKeys []string
					if followerBatch {
						followerKeys = []string{shared, own}
						go func() {
							m, err := c.GetManyOrLoad(ctx, followerKeys, func(_ context.Context, keys []string) (map[string]string, error) {
								if fmt.Sprint(keys) != "["+own+"]" {
									return nil, fmt.Errorf("the follower's batch loader was asked for %v, want [%s]", keys, own)
								}
								out := map[string]string{}
								if v, ok := value("follower", own); ok {
									out[own] = v
								}
								return out, nil
							}, tc.follower...)
							if err == nil {
								want := map[string]string{}
								if v, ok := value("leader", shared); ok {
									want[shared] = v
								}
								if v, ok := value("follower", own); ok {
									want[own] = v
								}
								if fmt.Sprint(m) != fmt.Sprint(want) {
									err = fmt.Errorf("follower got %v, want %v", m, want)
								}
							}
							followerDone <- err
						}()
					} else {
						followerKeys = []string{shared}
						go func() {
							v, err := c.GetOrLoad(ctx, shared, func(context.Context, string) (string, error) {
								return "", errors.New("the follower's loader ran: it joined no load")
							}, tc.follower...)
							if tc.notFound && errors.Is(err, ErrNotFound) {
								err = nil
							} else if want, _ := value("leader", shared); err == nil && v != want {
								err = fmt.Errorf("follower got %q, want %q", v, want)
							}
							followerDone <- err
						}()
					}
					// The follower counts its callers and joins under flightMu:
					// once the count shows and the lock is free, it has joined.
					eventually(t, "the follower to join", func() bool {
						return c.Stats().Loads.Callers == uint64(1+len(followerKeys))
					})
					c.flightMu.Lock()
					_, running := c.flights[shared]
					c.flightMu.Unlock()
					if !running {
						t.Fatalf("the leader's load of %q ended before it was released", shared)
					}
					close(release)
					if err := <-leaderDone; err != nil {
						t.Fatal(err)
					}
					if err := <-followerDone; err != nil {
						t.Fatal(err)
					}
					if st := c.Stats().Loads; st.Coalesced != 1 {
						t.Fatalf("coalesced callers: %d, want 1 (the follower's %q)", st.Coalesced, shared)
					}

					check := func(key, whose string, want stored) {
						t.Helper()
						var redisTTL time.Duration
						if rk := "fo:" + key; mr.Exists(rk) {
							redisTTL = mr.TTL(rk)
						}
						var wantFills []time.Duration
						if want.fill != 0 {
							wantFills = []time.Duration{want.fill}
						}
						if got := rec.of(key); redisTTL != want.redis || fmt.Sprint(got) != fmt.Sprint(wantFills) {
							t.Errorf("%q: Redis TTL %v, L1 fills %v; want %v and %v, as the %s's options say",
								key, redisTTL, got, want.redis, wantFills, whose)
						}
						// WithVersion is ignored by reads: nothing stored a version,
						// so any versioned write goes through.
						if err := c.Set(ctx, key, "new", WithVersion(1)); err != nil {
							t.Errorf("%q: versioned Set after the load: %v, want nil (the load stored no version)", key, err)
						}
					}
					check(shared, "leader", tc.leaderWant)
					if followerBatch {
						check(own, "follower", tc.followerWant)
					}
				})
			}
		}
	}
}
