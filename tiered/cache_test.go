package tiered

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

type user struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// server is one Redis the end-to-end tests run against.
type server struct {
	name   string
	client func(t *testing.T) redis.UniversalClient
}

func servers() []server {
	return []server{
		{"miniredis", func(t *testing.T) redis.UniversalClient {
			mr := miniredis.RunT(t)
			return newClient(t, mr.Addr())
		}},
		{"redis-server", func(t *testing.T) redis.UniversalClient {
			return newClient(t, redistest.StartServer(t).Addr())
		}},
	}
}

func newClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: 1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newCache[V any](t testing.TB, cfg Config[V]) *Cache[V] {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// countingLoader returns "<key>#<n>" values and counts calls.
type countingLoader struct {
	calls atomic.Int64
}

func (l *countingLoader) load(_ context.Context, key string) (user, error) {
	n := l.calls.Add(1)
	if strings.HasPrefix(key, "missing") {
		return user{}, ErrNotFound
	}
	return user{ID: int(n), Name: key}, nil
}

// eventually waits (bounded) for cond; it is for cross-process effects such
// as a pub/sub delivery, whose timing no gate inside the test controls.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 5*time.Second, what, cond)
}

func TestTiers(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			ctx := context.Background()
			rc := srv.client(t)
			a := newCache(t, Config[user]{Redis: rc, Namespace: "t"})
			b := newCache(t, Config[user]{Redis: rc, Namespace: "t"})
			var l countingLoader

			// Cold: loader, then L2 holds it, then L1.
			got, err := a.GetOrLoad(ctx, "u1", l.load)
			if err != nil || got.Name != "u1" || l.calls.Load() != 1 {
				t.Fatalf("cold GetOrLoad: %+v %v, calls %d", got, err, l.calls.Load())
			}
			if raw, err := rc.Get(ctx, "t:u1").Bytes(); err != nil || len(raw) == 0 {
				t.Fatalf("L2 after load: %v", err)
			}
			a.local.(interface{ Wait() }).Wait()
			if got2, _ := a.GetOrLoad(ctx, "u1", l.load); got2 != got || l.calls.Load() != 1 {
				t.Fatalf("warm GetOrLoad: %+v, calls %d", got2, l.calls.Load())
			}
			if st := a.Stats(); st.L1.Hits != 1 || st.L2.Lookups != 1 || st.Loads.LoaderCalls != 1 {
				t.Fatalf("stats of A: L1 hits %d, L2 lookups %d, loader calls %d", st.L1.Hits, st.L2.Lookups, st.Loads.LoaderCalls)
			}
			// Another instance: L2 hit, no loader.
			if got3, err := b.GetOrLoad(ctx, "u1", l.load); err != nil || got3 != got || l.calls.Load() != 1 {
				t.Fatalf("B GetOrLoad: %+v %v, calls %d", got3, err, l.calls.Load())
			}
			if st := b.Stats(); st.L2.Hits != 1 || st.Combined.L2HitRatio != 1 {
				t.Fatalf("stats of B: %+v", st.Combined)
			}
			// Get without a loader.
			if v, err := b.Get(ctx, "u1"); err != nil || v != got {
				t.Fatalf("Get: %+v %v", v, err)
			}
			if _, err := b.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestWritesInvalidateOtherInstances(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			ctx := context.Background()
			rc := srv.client(t)
			a := newCache(t, Config[string]{Redis: rc, Namespace: "w"})
			b := newCache(t, Config[string]{Redis: rc, Namespace: "w"})
			load := func(context.Context, string) (string, error) { return "v0", nil }
			for _, c := range []*Cache[string]{a, b} {
				if v, err := c.GetOrLoad(ctx, "k", load); err != nil || v != "v0" {
					t.Fatalf("warm: %q %v", v, err)
				}
			}
			if err := a.Set(ctx, "k", "v1"); err != nil {
				t.Fatal(err)
			}
			// Read-your-writes on A, immediately.
			if v, err := a.Get(ctx, "k"); err != nil || v != "v1" {
				t.Fatalf("A after its own Set: %q %v, want v1", v, err)
			}
			eventually(t, "B to see v1", func() bool {
				v, err := b.Get(ctx, "k")
				return err == nil && v == "v1"
			})
			if err := b.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("B after its own Delete: %v, want ErrNotFound", err)
			}
			eventually(t, "A to drop k", func() bool {
				_, err := a.Get(ctx, "k")
				return errors.Is(err, ErrNotFound)
			})
			// A load after the delete stores the new value over the tombstone
			// it read.
			v, err := a.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "v2", nil })
			if err != nil || v != "v2" {
				t.Fatalf("load after delete: %q %v", v, err)
			}
			eventually(t, "B to read v2 from L2", func() bool {
				v, err := b.Get(ctx, "k")
				return err == nil && v == "v2"
			})
			// Clear drops every instance's L1 and the namespace's keys only.
			rc.Set(ctx, "foreign", "x", 0)
			if err := a.Clear(ctx); err != nil {
				t.Fatal(err)
			}
			eventually(t, "B to drop everything", func() bool {
				_, err := b.Get(ctx, "k")
				return errors.Is(err, ErrNotFound)
			})
			if n, _ := rc.Exists(ctx, "foreign").Result(); n != 1 {
				t.Fatalf("Clear removed a foreign key")
			}
			if st := b.Stats(); st.Invalidation.Applied == 0 {
				t.Fatalf("B applied no invalidation: %+v", st.Invalidation)
			}
		})
	}
}

func TestNegativeCaching(t *testing.T) {
	ctx := context.Background()
	rc := newClient(t, miniredis.RunT(t).Addr())
	var l countingLoader
	c := newCache(t, Config[user]{Redis: rc, Namespace: "n", NegativeTTL: time.Minute})
	for i := 0; i < 3; i++ {
		if _, err := c.GetOrLoad(ctx, "missing-1", l.load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("call %d: %v, want ErrNotFound", i, err)
		}
		c.local.(interface{ Wait() }).Wait()
	}
	if n := l.calls.Load(); n != 1 {
		t.Fatalf("loader calls with negative caching: %d, want 1", n)
	}
	other := newCache(t, Config[user]{Redis: rc, Namespace: "n", NegativeTTL: time.Minute})
	if _, err := other.GetOrLoad(ctx, "missing-1", l.load); !errors.Is(err, ErrNotFound) || l.calls.Load() != 1 {
		t.Fatalf("another instance: %v, calls %d; want the negative entry from L2", err, l.calls.Load())
	}
	// Without NegativeTTL nothing is cached.
	plain := newCache(t, Config[user]{Redis: rc, Namespace: "n2"})
	_, _ = plain.GetOrLoad(ctx, "missing-2", l.load)
	_, _ = plain.GetOrLoad(ctx, "missing-2", l.load)
	if n := l.calls.Load(); n != 3 {
		t.Fatalf("loader calls without negative caching: %d, want 3", n)
	}
}

func TestTTLBounds(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rc := newClient(t, mr.Addr())
	c := newCache(t, Config[string]{Redis: rc, Namespace: "ttl", TTL: time.Hour, MaxL1TTL: time.Minute})
	load := func(context.Context, string) (string, error) { return "v", nil }
	if _, err := c.GetOrLoad(ctx, "k", load, WithTTL(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if ttl := mr.TTL("ttl:k"); ttl != 10*time.Minute {
		t.Fatalf("L2 TTL with WithTTL: %v, want 10m", ttl)
	}
	// A value whose L2 freshness ends soon must not outlive it in L1.
	other := newCache(t, Config[string]{Redis: rc, Namespace: "ttl", MaxL1TTL: time.Hour})
	_ = c.Set(ctx, "short", "s", WithTTL(50*time.Millisecond))
	if v, err := other.Get(ctx, "short"); err != nil || v != "s" {
		t.Fatalf("Get short: %q %v", v, err)
	}
	other.local.(interface{ Wait() }).Wait()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, ok := other.local.Get("short"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("L1 copy outlived the 50ms L2 TTL")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestL1OnlyMode(t *testing.T) {
	ctx := context.Background()
	var l countingLoader
	c := newCache(t, Config[user]{})
	if _, err := c.GetOrLoad(ctx, "a", l.load); err != nil {
		t.Fatal(err)
	}
	c.local.(interface{ Wait() }).Wait()
	if _, err := c.GetOrLoad(ctx, "a", l.load); err != nil || l.calls.Load() != 1 {
		t.Fatalf("second call: %v, calls %d", err, l.calls.Load())
	}
	if err := c.Set(ctx, "a", user{ID: 42}); err != nil {
		t.Fatal(err)
	}
	c.local.(interface{ Wait() }).Wait()
	if v, _ := c.Get(ctx, "a"); v.ID != 42 {
		t.Fatalf("after Set: %+v", v)
	}
	_ = c.Delete(ctx, "a")
	if _, err := c.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Delete: %v", err)
	}
	if st := c.Stats(); st.L2.Lookups != 0 {
		t.Fatalf("L1-only mode touched L2: %+v", st.L2)
	}
}

// leaderContexts are the two ways a flight runs: a caller whose ctx can
// never end leads it on its own goroutine (inline); any other caller starts
// it with DoChan on a goroutine of its own (detached).
func leaderContexts(t *testing.T) []struct {
	name string
	ctx  context.Context
} {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return []struct {
		name string
		ctx  context.Context
	}{{"inline", context.Background()}, {"detached", ctx}}
}

func TestStampede(t *testing.T) {
	for _, srv := range servers() {
		for _, lc := range leaderContexts(t) {
			t.Run(srv.name+"/"+lc.name, func(t *testing.T) {
				ctx := lc.ctx
				c := newCache(t, Config[string]{Redis: srv.client(t), Namespace: "s"})
				const n = 1000
				release := make(chan struct{})
				var calls atomic.Int64
				load := func(context.Context, string) (string, error) {
					calls.Add(1)
					<-release
					return "v", nil
				}
				var wg sync.WaitGroup
				errs := make(chan error, n)
				for i := 0; i < n; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						v, err := c.GetOrLoad(ctx, "cold", load)
						if err == nil && v != "v" {
							err = fmt.Errorf("got %q", v)
						}
						errs <- err
					}()
				}
				// Release the loader once every caller has joined the flight.
				eventually(t, "1000 callers to join", func() bool { return c.Stats().Loads.Callers == n })
				close(release)
				wg.Wait()
				close(errs)
				for err := range errs {
					if err != nil {
						t.Fatal(err)
					}
				}
				st := c.Stats()
				if calls.Load() != 1 || st.L2.Lookups != 1 || st.L2.Store.Hits+st.L2.Store.Misses != 1 {
					t.Fatalf("loader calls %d, L2 lookups %d, L2 GETs %d; want 1 each", calls.Load(), st.L2.Lookups, st.L2.Store.Hits+st.L2.Store.Misses)
				}
				if st.Loads.Coalesced != n-1 {
					t.Fatalf("coalesced: %d, want %d", st.Loads.Coalesced, n-1)
				}
			})
		}
	}
}

func TestCallerContexts(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "ctx"})
	started := make(chan struct{})
	release := make(chan struct{})
	load := func(lctx context.Context, _ string) (string, error) {
		close(started)
		select {
		case <-release:
			return "v", nil
		case <-lctx.Done():
			return "", lctx.Err()
		}
	}
	leaderCtx, cancelLeader := context.WithCancel(ctx)
	leaderErr := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(leaderCtx, "k", load)
		leaderErr <- err
	}()
	<-started
	followerDone := make(chan error, 1)
	go func() {
		v, err := c.GetOrLoad(ctx, "k", load)
		if err == nil && v != "v" {
			err = fmt.Errorf("got %q", v)
		}
		followerDone <- err
	}()
	eventually(t, "the follower to join", func() bool { return c.Stats().Loads.Callers == 2 })

	// A follower with a short deadline leaves on time.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.GetOrLoad(short, "k", load); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("short deadline: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("short deadline returned after %v", d)
	}
	// The leader leaves; the shared load goes on for the follower.
	cancelLeader()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v, want Canceled", err)
	}
	close(release)
	if err := <-followerDone; err != nil {
		t.Fatalf("follower after the leader left: %v", err)
	}
}

// errBoom is a loader's panic value that is an error.
var errBoom = errors.New("boom error")

// panicValues are the two kinds of value a loader panics with: a string and
// an error.
var panicValues = []struct {
	name  string
	value any
}{{"string", "boom"}, {"error", errBoom}}

// panicker is a loader that panics with value once release is closed; a
// named method, so that a test can find it in the PanicError's stack.
type panicker struct {
	release chan struct{}
	value   any
}

func (p *panicker) load(context.Context, string) (string, error) {
	<-p.release
	panic(p.value)
}

func (p *panicker) loadBatch(context.Context, []string) (map[string]string, error) {
	<-p.release
	panic(p.value)
}

// checkPanicError checks that err is the *PanicError of key's load that
// panicked with value: its value, a stack naming the loader, its message
// and, for an error value, errors.Is.
func checkPanicError(t *testing.T, err error, key string, value any, loader string) {
	t.Helper()
	var pe *PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *PanicError", err, err)
	}
	if pe.Key != key || pe.Value != value {
		t.Fatalf("PanicError{Key: %q, Value: %v}, want {%q, %v}", pe.Key, pe.Value, key, value)
	}
	if !strings.Contains(string(pe.Stack), loader) {
		t.Fatalf("PanicError stack does not name %s:\n%s", loader, pe.Stack)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("panicked: %v", value)) {
		t.Fatalf("error %q does not say the load panicked with %v", err, value)
	}
	if verr, ok := value.(error); ok && !errors.Is(err, verr) {
		t.Fatalf("errors.Is(%v, %v) is false", err, verr)
	}
}

func TestLoaderPanic(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		for _, pv := range panicValues {
			t.Run(lc.name+"/"+pv.name, func(t *testing.T) { testLoaderPanic(t, lc.ctx, pv.value) })
		}
	}
}

func testLoaderPanic(t *testing.T, ctx context.Context, value any) {
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "p"})
	p := &panicker{release: make(chan struct{}), value: value}
	const n = 10
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := c.GetOrLoad(ctx, "k", p.load)
			errs <- err
		}()
	}
	eventually(t, "callers to join", func() bool { return c.Stats().Loads.Callers == n })
	close(p.release)
	for i := 0; i < n; i++ {
		checkPanicError(t, <-errs, "k", value, "(*panicker).load")
	}
	if st := c.Stats(); st.Loads.Panics != 1 {
		t.Fatalf("panics: %d, want 1", st.Loads.Panics)
	}
	// The key is usable again.
	if v, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "ok", nil }); err != nil || v != "ok" {
		t.Fatalf("after a panic: %q %v", v, err)
	}
}

func TestBatchLoaderPanic(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		for _, pv := range panicValues {
			t.Run(lc.name+"/"+pv.name, func(t *testing.T) { testBatchLoaderPanic(t, lc.ctx, pv.value) })
		}
	}
}

func testBatchLoaderPanic(t *testing.T, ctx context.Context, value any) {
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "p"})
	p := &panicker{release: make(chan struct{}), value: value}
	batchErr := make(chan error, 1)
	go func() {
		_, err := c.GetManyOrLoad(ctx, []string{"a", "b"}, p.loadBatch)
		batchErr <- err
	}()
	// A single-key caller joins the batch's flight for "a".
	eventually(t, "the batch to start", func() bool { return c.Stats().Loads.Callers == 2 })
	followerErr := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(ctx, "a", func(context.Context, string) (string, error) { return "unused", nil })
		followerErr <- err
	}()
	eventually(t, "the follower to join", func() bool { return c.Stats().Loads.Callers == 3 })
	close(p.release)
	checkPanicError(t, <-batchErr, "", value, "(*panicker).loadBatch")
	checkPanicError(t, <-followerErr, "", value, "(*panicker).loadBatch")
	if st := c.Stats(); st.Loads.Panics != 1 {
		t.Fatalf("panics: %d, want 1", st.Loads.Panics)
	}
}

func TestCorruptL2IsReloadedAndRepaired(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			ctx := context.Background()
			rc := srv.client(t)
			c := newCache(t, Config[user]{Redis: rc, Namespace: "c"})
			rc.Set(ctx, "c:k", "\x00garbage from another program", 0)
			var l countingLoader
			v, err := c.GetOrLoad(ctx, "k", l.load)
			if err != nil || v.Name != "k" || l.calls.Load() != 1 {
				t.Fatalf("GetOrLoad over corrupt bytes: %+v %v, calls %d", v, err, l.calls.Load())
			}
			if st := c.Stats(); st.Loads.DecodeErrors != 1 || st.L2.Store.Corrupt != 1 {
				t.Fatalf("decode errors %d, l2 corrupt %d; want 1", st.Loads.DecodeErrors, st.L2.Store.Corrupt)
			}
			// Repaired: a fresh instance reads it from L2.
			d := newCache(t, Config[user]{Redis: rc, Namespace: "c"})
			if v2, err := d.GetOrLoad(ctx, "k", l.load); err != nil || v2 != v || l.calls.Load() != 1 {
				t.Fatalf("after repair: %+v %v, calls %d", v2, err, l.calls.Load())
			}
			// A valid envelope whose payload the codec rejects is also reloaded.
			if err := c.Set(ctx, "j", user{ID: 1}); err != nil {
				t.Fatal(err)
			}
			raw, _ := rc.Get(ctx, "c:j").Bytes()
			rc.Set(ctx, "c:j", append(raw[:len(raw)-1:len(raw)-1], '!'), 0) // breaks the JSON
			if v, err := d.GetOrLoad(ctx, "j", l.load); err != nil || v.Name != "j" {
				t.Fatalf("over an undecodable payload: %+v %v", v, err)
			}
		})
	}
}

func TestFailSafe(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rc := newClient(t, mr.Addr())
	failing := func(context.Context, string) (string, error) { return "", errors.New("database down") }
	for _, tc := range []struct {
		name     string
		maxStale time.Duration
		want     string
		wantErr  bool
	}{
		{"on", time.Hour, "old", false},
		{"off", 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(t, Config[string]{Redis: rc, Namespace: "f-" + tc.name, FailSafeMaxStale: tc.maxStale})
			written := time.Now()
			if err := c.Set(ctx, "k", "old", WithTTL(time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			if tc.maxStale > 0 {
				if ttl := mr.TTL("f-on:k"); ttl != time.Hour+time.Millisecond {
					t.Fatalf("L2 TTL with fail-safe: %v, want TTL + FailSafeMaxStale", ttl)
				}
			}
			for time.Since(written) < 3*time.Millisecond { // let the 1 ms freshness pass
				time.Sleep(time.Millisecond)
			}
			v, err := c.GetOrLoad(ctx, "k", failing)
			if (err != nil) != tc.wantErr || v != tc.want {
				t.Fatalf("GetOrLoad with a failing loader: %q %v; want %q, error %v", v, err, tc.want, tc.wantErr)
			}
			st := c.Stats()
			if tc.maxStale > 0 && st.Loads.StaleServed != 1 {
				t.Fatalf("stale served: %d, want 1", st.Loads.StaleServed)
			}
			if st.Loads.LoaderErrors != 1 {
				t.Fatalf("loader errors: %d, want 1", st.Loads.LoaderErrors)
			}
		})
	}
}

func TestCloseAndClient(t *testing.T) {
	ctx := context.Background()
	rc := newClient(t, miniredis.RunT(t).Addr())
	c, err := New(Config[string]{Redis: rc, Namespace: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
	if err := c.Set(ctx, "k", "v"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set after Close: %v, want ErrClosed", err)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("the caller's client was closed: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config[string]
		field string // the error names the field
	}{
		{Config[string]{TTL: -1}, "TTL"},
		{Config[string]{MaxL1TTL: -time.Second}, "MaxL1TTL"},
		{Config[string]{L1TTLJitter: 1.5}, "L1TTLJitter"},
		{Config[string]{NegativeTTL: -1}, "NegativeTTL"},
		{Config[string]{LoadTimeout: -1}, "LoadTimeout"},
		{Config[string]{FailSafeMaxStale: -1}, "FailSafeMaxStale"},
		{Config[string]{FailSafeRetryAfter: -1}, "FailSafeRetryAfter"},
		{Config[string]{BreakerCooldown: -1}, "BreakerCooldown"},
		{Config[string]{L1MaxBytes: 1 << 20}, "L1Cost"}, // no L1Cost
		{Config[string]{L1MaxEntries: -5}, "L1MaxEntries"},
		{Config[string]{L1MaxBytes: -5, L1Cost: func(string) int64 { return 1 }}, "L1MaxBytes"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.cfg, err, tc.field)
		}
	}
}

func TestBatches(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			ctx := context.Background()
			rc := srv.client(t)
			c := newCache(t, Config[string]{Redis: rc, Namespace: "b", NegativeTTL: time.Minute})
			var calls atomic.Int64
			var lastKeys []string
			load := func(_ context.Context, keys []string) (map[string]string, error) {
				calls.Add(1)
				lastKeys = append([]string(nil), keys...)
				m := map[string]string{}
				for _, k := range keys {
					if !strings.HasPrefix(k, "missing") {
						m[k] = "v:" + k
					}
				}
				return m, nil
			}
			// Pre-warm one key in L2 only and one in L1.
			other := newCache(t, Config[string]{Redis: rc, Namespace: "b"})
			_ = other.Set(ctx, "inL2", "from-l2")
			if _, err := c.GetOrLoad(ctx, "inL1", func(context.Context, string) (string, error) { return "from-l1", nil }); err != nil {
				t.Fatal(err)
			}
			c.local.(interface{ Wait() }).Wait()
			before := c.Stats()

			got, err := c.GetManyOrLoad(ctx, []string{"inL1", "inL2", "a", "b", "missing-1", "a"}, load)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"inL1": "from-l1", "inL2": "from-l2", "a": "v:a", "b": "v:b"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("GetManyOrLoad: got %v, want %v", got, want)
			}
			if calls.Load() != 1 || len(lastKeys) != 3 {
				t.Fatalf("batch loader: %d calls, last keys %v; want 1 call with a, b, missing-1", calls.Load(), lastKeys)
			}
			st := c.Stats()
			if d := st.L2.Store.Hits + st.L2.Store.Misses - before.L2.Store.Hits - before.L2.Store.Misses; d != 4 {
				t.Fatalf("L2 keys read: %d, want 4 (one MGET of the L1 misses)", d)
			}
			// Everything is now cached: no loader call, no L2 read.
			c.local.(interface{ Wait() }).Wait()
			got, err = c.GetManyOrLoad(ctx, []string{"a", "b", "missing-1", "inL2"}, load)
			if err != nil || len(got) != 3 || calls.Load() != 1 {
				t.Fatalf("warm batch: %v %v, loader calls %d", got, err, calls.Load())
			}
			// GetMany without a loader sees L2.
			m, err := other.GetMany(ctx, []string{"a", "b", "zzz"})
			if err != nil || m["a"] != "v:a" || m["b"] != "v:b" || len(m) != 2 {
				t.Fatalf("GetMany on another instance: %v %v", m, err)
			}
		})
	}
}

func TestBatchJoinsSingleFlight(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "j"})
	started := make(chan struct{})
	release := make(chan struct{})
	var single atomic.Int64
	done := make(chan string, 1)
	go func() {
		v, _ := c.GetOrLoad(ctx, "shared", func(context.Context, string) (string, error) {
			single.Add(1)
			close(started)
			<-release
			return "from-single", nil
		})
		done <- v
	}()
	<-started
	var batchKeys []string
	batchDone := make(chan map[string]string, 1)
	go func() {
		m, _ := c.GetManyOrLoad(ctx, []string{"shared", "own"}, func(_ context.Context, keys []string) (map[string]string, error) {
			batchKeys = keys
			return map[string]string{"own": "from-batch", "shared": "from-batch"}, nil
		})
		batchDone <- m
	}()
	eventually(t, "the batch to join", func() bool { return c.Stats().Loads.Callers == 3 })
	close(release)
	m := <-batchDone
	if m["shared"] != "from-single" || m["own"] != "from-batch" {
		t.Fatalf("batch result: %v; want shared from the single flight it joined", m)
	}
	if fmt.Sprint(batchKeys) != "[own]" || single.Load() != 1 {
		t.Fatalf("batch loaded %v, single loads %d; want [own] and 1", batchKeys, single.Load())
	}
	<-done
}

func TestConfigNeverPrintsHMACKey(t *testing.T) {
	c := Config[string]{Namespace: "ns", HMACKey: []byte("hmac-secret-key")}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		// Neither the key's text nor its bytes as %v prints them ("104 109 97 99 ...").
		bytesForm := strings.Trim(fmt.Sprint(c.HMACKey), "[]")
		if out := fmt.Sprintf(f, c); strings.Contains(out, "hmac-secret") || strings.Contains(out, bytesForm) || !strings.Contains(out, "ns") {
			t.Errorf("%s: %s", f, out)
		}
	}
	js, err := c.MarshalJSON()
	if err != nil || strings.Contains(string(js), "hmac-secret") || !strings.Contains(string(js), "REDACTED") {
		t.Errorf("JSON: %s %v", js, err)
	}
}

func TestRedisDownAtStartup(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartServer(t)
	srv.Kill()
	rc := newClient(t, srv.Addr())
	start := time.Now()
	c := newCache(t, Config[string]{Redis: rc, Namespace: "down", StartTimeout: 200 * time.Millisecond,
		RedisTimeout: 100 * time.Millisecond, BreakerCooldown: 100 * time.Millisecond})
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("New took %v with Redis down", d)
	}
	var l countingLoader
	for i := 0; i < 10; i++ { // enough failures to open the breaker
		v, err := c.GetOrLoad(ctx, fmt.Sprint("k", i), func(ctx context.Context, k string) (string, error) {
			u, err := l.load(ctx, k)
			return u.Name, err
		})
		if err != nil || v != fmt.Sprint("k", i) {
			t.Fatalf("GetOrLoad with Redis down: %q %v", v, err)
		}
	}
	if err := c.Set(ctx, "k0", "new"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Set with Redis down: %v, want ErrUnavailable", err)
	}
	if st := c.Stats(); st.L2.Breaker != BreakerOpen && st.L2.BreakerOpened == 0 {
		t.Fatalf("breaker never opened: %+v", st.L2)
	}
	if c.bus.Health().Healthy {
		t.Fatalf("bus healthy with Redis down")
	}

	srv.Restart()
	eventually(t, "the invalidation stream to recover", func() bool { return c.bus.Health().Healthy })
	eventually(t, "writes to succeed again", func() bool { return c.Set(ctx, "k0", "new") == nil })
	other := newCache(t, Config[string]{Redis: rc, Namespace: "down"})
	if v, err := other.Get(ctx, "k0"); err != nil || v != "new" {
		t.Fatalf("value written after recovery: %q %v", v, err)
	}
}

type ctxKey struct{}

func TestLoaderContext(t *testing.T) {
	c := newCache(t, Config[string]{LoadTimeout: time.Hour})
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "trace-1"))
	got := make(chan context.Context, 1)
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(ctx, "k", func(lctx context.Context, _ string) (string, error) {
			got <- lctx
			<-release
			return fmt.Sprint(lctx.Value(ctxKey{})), nil
		})
		done <- err
	}()
	lctx := <-got
	if v := lctx.Value(ctxKey{}); v != "trace-1" {
		t.Fatalf("loader ctx value %v, want the caller's trace-1", v)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("caller after cancelling: %v, want Canceled", err)
	}
	if lctx.Err() != nil {
		t.Fatalf("the loader's ctx followed the caller's cancellation: %v", lctx.Err())
	}
	if d, ok := lctx.Deadline(); !ok || time.Until(d) < 59*time.Minute {
		t.Fatalf("the loader's ctx deadline %v, want LoadTimeout from the start", d)
	}
	close(release)
	v, err := c.GetOrLoad(context.Background(), "k", func(context.Context, string) (string, error) { return "other", nil })
	if err != nil || (v != "trace-1" && v != "other") {
		t.Fatalf("after the load: %q %v", v, err)
	}
}

func TestCloseCancelsLoads(t *testing.T) {
	c, err := New(Config[string]{LoadTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	res := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(context.Background(), "k", func(lctx context.Context, _ string) (string, error) {
			close(started)
			<-lctx.Done()
			return "", lctx.Err()
		})
		res <- err
	}()
	<-started
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("a load running at Close: %v, want its ctx cancelled", err)
	}
}

func TestLoaderGoexitAndOverrun(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) { testLoaderGoexitAndOverrun(t, lc.ctx) })
	}
}

func testLoaderGoexitAndOverrun(t *testing.T, ctx context.Context) {
	c := newCache(t, Config[string]{LoadTimeout: 50 * time.Millisecond})

	// runtime.Goexit in the loader: x/sync sends no result; waiters must not hang.
	start := time.Now()
	_, err := c.GetOrLoad(ctx, "goexit", func(context.Context, string) (string, error) {
		runtime.Goexit()
		return "", nil
	})
	if err == nil || !strings.Contains(err.Error(), "Goexit") || time.Since(start) > time.Second {
		t.Fatalf("loader calling Goexit: %v after %v, want a prompt error", err, time.Since(start))
	}

	// A loader that ignores its ctx: waiters leave after LoadTimeout (+ grace).
	release := make(chan struct{})
	defer close(release)
	start = time.Now()
	_, err = c.GetOrLoad(ctx, "stuck", func(context.Context, string) (string, error) {
		<-release
		return "late", nil
	})
	if !errors.Is(err, errLoadOverran) || time.Since(start) > 2*time.Second {
		t.Fatalf("loader ignoring its ctx: %v after %v, want errLoadOverran after ~150ms", err, time.Since(start))
	}
	// The key is not stuck behind the hung load: a new caller starts afresh.
	if v, err := c.GetOrLoad(ctx, "stuck", func(context.Context, string) (string, error) { return "fresh", nil }); err != nil || v != "fresh" {
		t.Fatalf("after an overrun: %q %v, want a fresh load", v, err)
	}
	// The same for a batch.
	_, err = c.GetManyOrLoad(ctx, []string{"b1", "b2"}, func(context.Context, []string) (map[string]string, error) {
		<-release
		return nil, nil
	})
	if !errors.Is(err, errLoadOverran) {
		t.Fatalf("batch loader ignoring its ctx: %v, want errLoadOverran", err)
	}
}

func TestLoaderDerivedContextsStartNoGoroutine(t *testing.T) {
	c := newCache(t, Config[string]{})
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	_, err := c.GetOrLoad(ctx, "k", func(lctx context.Context, _ string) (string, error) {
		d, stop := context.WithTimeout(lctx, time.Minute)
		defer stop()
		// The goroutine context starts for a parent it cannot hook into
		// runs in propagateCancel; other tests' goroutines may come and go
		// meanwhile, so look for it rather than count.
		buf := make([]byte, 1<<22)
		if st := string(buf[:runtime.Stack(buf, true)]); strings.Contains(st, "context.(*cancelCtx).propagateCancel") {
			return "", errors.New("context.WithTimeout on the loader's ctx started a goroutine (propagateCancel)")
		}
		if context.Cause(d) != nil {
			return "", fmt.Errorf("cause before any cancellation: %v", context.Cause(d))
		}
		return "v", nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWithNegativeTTLZeroKeepsConfig(t *testing.T) {
	c := newCache(t, Config[string]{NegativeTTL: time.Minute})
	if o := c.options([]Option{WithNegativeTTL(0)}); o.negativeTTL != time.Minute {
		t.Fatalf("WithNegativeTTL(0): %v, want the Config's 1m", o.negativeTTL)
	}
	if o := c.options([]Option{WithNegativeTTL(-1)}); o.negativeTTL != 0 {
		t.Fatalf("WithNegativeTTL(-1): %v, want off", o.negativeTTL)
	}
}

// goroutineCodec is a StringCodec that records the goroutine each Unmarshal
// runs on.
type goroutineCodec struct {
	StringCodec
	ran chan uint64
}

func (g goroutineCodec) Unmarshal(b []byte) (string, error) {
	g.ran <- goroutineID()
	return g.StringCodec.Unmarshal(b)
}

// goroutineID parses the current goroutine's id from its stack header
// ("goroutine 42 [running]:").
func goroutineID() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	id, _ := strconv.ParseUint(f[1], 10, 64)
	return id
}

// TestLeaderRunsInline checks where a flight's L2 read runs: on the
// caller's goroutine when its ctx can never end (no goroutine hand-off), on
// another one otherwise (DoChan), for single keys and batches alike.
func TestLeaderRunsInline(t *testing.T) {
	codec := goroutineCodec{ran: make(chan uint64, 8)}
	mr := miniredis.RunT(t)
	w := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "inl"})
	if err := w.SetMany(context.Background(), map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"}); err != nil {
		t.Fatal(err)
	}
	r := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "inl", Codec: codec})
	// A client that does not apply ctx deadlines to its connections: a
	// read's RedisTimeout would not bound it, so nobody leads inline.
	plainClient := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = plainClient.Close() })
	plain := newCache(t, Config[string]{Redis: plainClient, Namespace: "inl", Codec: codec})
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	tests := []struct {
		name   string
		ctx    context.Context
		read   func(ctx context.Context) error
		inline bool
	}{
		{"Get/Background", context.Background(), func(ctx context.Context) error { _, err := r.Get(ctx, "a"); return err }, true},
		{"Get/cancellable", cancellable, func(ctx context.Context) error { _, err := r.Get(ctx, "b"); return err }, false},
		{"GetMany/Background", context.Background(), func(ctx context.Context) error { _, err := r.GetMany(ctx, []string{"c"}); return err }, true},
		{"GetMany/cancellable", cancellable, func(ctx context.Context) error { _, err := r.GetMany(ctx, []string{"d"}); return err }, false},
		{"Get/Background/plain-client", context.Background(), func(ctx context.Context) error { _, err := plain.Get(ctx, "a"); return err }, false},
		{"GetMany/Background/plain-client", context.Background(), func(ctx context.Context) error { _, err := plain.GetMany(ctx, []string{"c"}); return err }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			caller := goroutineID()
			if err := tc.read(tc.ctx); err != nil {
				t.Fatal(err)
			}
			if ran := <-codec.ran; (ran == caller) != tc.inline {
				t.Errorf("decoded on goroutine %d, caller %d: inline = %v, want %v", ran, caller, ran == caller, tc.inline)
			}
		})
	}
}

// silentServer accepts TCP connections and never answers: a Redis that
// hangs. It stops when the test ends.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestHungRedisPlainClient: with a client that applies no ctx deadline and
// no read timeout of its own, and a Redis that never answers, every caller
// (the leader and a follower, with ctx that can or cannot end) still
// returns an error within LoadTimeout + abortGrace.
func TestHungRedisPlainClient(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) {
			rc := redis.NewClient(&redis.Options{Addr: silentServer(t), ReadTimeout: -1, WriteTimeout: -1, MaxRetries: -1})
			c, err := New(Config[string]{Redis: rc, Namespace: "hung", StartTimeout: 50 * time.Millisecond, LoadTimeout: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = rc.Close() }) // after the Close below: unblocks the hung read
			load := func(context.Context, string) (string, error) { return "v", nil }
			errs := make(chan error, 2)
			start := time.Now()
			go func() { _, err := c.GetOrLoad(lc.ctx, "k", load); errs <- err }()
			eventually(t, "the leader to start", func() bool { return c.Stats().Loads.Callers == 1 })
			go func() { _, err := c.GetOrLoad(context.Background(), "k", load); errs <- err }()
			for i := 0; i < 2; i++ {
				select {
				case err := <-errs:
					if err == nil {
						t.Errorf("caller %d: nil error from a Redis that never answers", i)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("caller %d still waiting after 5s; LoadTimeout+abortGrace is 200ms", i)
				}
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("callers returned after %v, want about 200ms", d)
			}
			// Close does not wait for the hung calls past its bounds
			// (LoadTimeout + grace for loads, invalidation.CloseWait for
			// the subscription), and says so.
			start = time.Now()
			if err := c.Close(); err == nil || !strings.Contains(err.Error(), "still") {
				t.Errorf("Close with hung Redis calls: %v, want an error saying they are still running", err)
			}
			if d := time.Since(start); d > invalidation.CloseWait+2*time.Second {
				t.Errorf("Close returned after %v", d)
			}
		})
	}
}

// TestBatchRepeatedKeys: a key repeated in one batch is loaded once, and
// its error is reported once.
func TestBatchRepeatedKeys(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) {
			c := newCache(t, Config[string]{Redis: newClient(t, miniredis.RunT(t).Addr()), Namespace: "rep"})
			var loaded [][]string
			load := func(_ context.Context, keys []string) (map[string]string, error) {
				loaded = append(loaded, slices.Clone(keys))
				return map[string]string{"a": "A", "b": "B"}, nil
			}
			got, err := c.GetManyOrLoad(lc.ctx, []string{"a", "b", "a", "a"}, load)
			if err != nil || len(got) != 2 || got["a"] != "A" || got["b"] != "B" {
				t.Fatalf("GetManyOrLoad = %v, %v; want a and b", got, err)
			}
			if len(loaded) != 1 || !slices.Equal(loaded[0], []string{"a", "b"}) {
				t.Fatalf("loader calls %v, want one with [a b]", loaded)
			}
			boom := errors.New("boom")
			_, err = c.GetManyOrLoad(lc.ctx, []string{"x", "x", "x"}, func(context.Context, []string) (map[string]string, error) {
				return nil, boom
			})
			if !errors.Is(err, boom) || strings.Count(err.Error(), "boom") != 1 {
				t.Fatalf("error = %v, want boom once", err)
			}
		})
	}
}
