package tiered

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wait"
)

// Review tests of the soft timeout (Config.SoftTimeout) and of
// loader-chosen TTLs (SetTTL, SetKeyTTL, SetL1TTL).

// stubbornLoader blocks until its gate opens, whatever its ctx says (a
// loader that ignores its ctx), then returns "new-"+key.
type stubbornLoader struct {
	started chan string
	gate    chan struct{}
	once    sync.Once
}

func newStubbornLoader(t *testing.T) *stubbornLoader {
	s := &stubbornLoader{started: make(chan string, 16), gate: make(chan struct{})}
	t.Cleanup(s.open) // before the Caches' Close (registered earlier)
	return s
}

func (s *stubbornLoader) open() { s.once.Do(func() { close(s.gate) }) }

func (s *stubbornLoader) load(_ context.Context, key string) (string, error) {
	select {
	case s.started <- key:
	default:
	}
	<-s.gate
	return "new-" + key, nil
}

func (s *stubbornLoader) loadMany(_ context.Context, keys []string) (map[string]string, error) {
	select {
	case s.started <- strings.Join(keys, ","):
	default:
	}
	<-s.gate
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = "new-" + k
	}
	return out, nil
}

// Config.SoftTimeout says it "has no effect ... at or above LoadTimeout".
// With SoftTimeout equal to LoadTimeout and a loader that ignores its ctx,
// callers must get what they get without a SoftTimeout (the overrun
// error, since the soft timer starts when the loader is called, after the
// flight's start, and would otherwise fire between LoadTimeout and
// LoadTimeout+abortGrace), and no soft-timeout serve is counted.
func TestReviewSoftTimeoutAtLoadTimeoutHasNoEffect(t *testing.T) {
	rc := servers()[1].client(t)
	const loadTimeout = 300 * time.Millisecond
	for _, soft := range []time.Duration{loadTimeout, loadTimeout + 20*time.Millisecond} {
		for _, mode := range softModes() {
			for _, batch := range []bool{false, true} {
				name := fmt.Sprintf("soft=%v/%s/batch=%t", soft, mode.name, batch)
				t.Run(name, func(t *testing.T) {
					cfg := softConfig()
					cfg.LoadTimeout, cfg.SoftTimeout = loadTimeout, soft
					e := newSoftEnv(t, rc, fmt.Sprintf("soft-lt-%d-%t-%t", soft/time.Millisecond, mode.inline, batch), cfg)
					ctx := mode.ctx(t)
					e.putStale(t, map[string]string{"k": "old"})
					g := newStubbornLoader(t)
					var err error
					var v string
					if batch {
						var m map[string]string
						m, err = e.c.GetManyOrLoad(ctx, []string{"k"}, g.loadMany)
						v = m["k"]
					} else {
						v, err = e.c.GetOrLoad(ctx, "k", g.load)
					}
					if !errors.Is(err, errLoadOverran) || v != "" {
						t.Errorf("SoftTimeout %v >= LoadTimeout %v, loader ignoring its ctx: got %q, %v; want the overrun error, as without SoftTimeout", soft, loadTimeout, v, err)
					}
					if n := e.c.Stats().Loads.StaleServedSoftTimeout; n != 0 || len(e.events.all()) != 0 {
						t.Errorf("StaleServedSoftTimeout %d, events %+v; want none (SoftTimeout at or above LoadTimeout has no effect)", n, e.events.all())
					}
					g.open()
					flightEnded(t, e.c, "k")
				})
			}
		}
	}
}

// A stress of the soft timeout across every way a caller waits: single-key
// callers (inline and DoChan), GetManyOrLoad with mixed, repeated and
// joined keys, callers whose ctx ends around the soft timeout, in rounds
// where some keys' loads are slow (blocked until every caller of the round
// has returned) and the others answer at once. Every value a caller gets
// is the round's stale or loaded value; the keys of slow loads are always
// served stale; the stale values callers got (one per caller and key) are
// exactly Stats.Loads.StaleServedSoftTimeout and the Observer's events;
// nothing is counted as classic fail-safe, and nothing is logged. Run
// under -race: it exercises the pooled batch state that an early settle
// must not let anyone touch after its batch returned it.
func TestReviewSoftTimeoutStress(t *testing.T) {
	cfg := softConfig()
	cfg.SoftTimeout = 50 * time.Millisecond
	e := newSoftEnv(t, servers()[1].client(t), "soft-stress", cfg)
	keys := []string{"s0", "s1", "f0", "f1", "f2", "f3"}
	slow := func(k string) bool { return strings.HasPrefix(k, "s") }
	var round atomic.Int64
	var gate atomic.Pointer[chan struct{}]
	value := func(k string) string { return fmt.Sprintf("new-%s-%d", k, round.Load()) }
	wait := func(ctx context.Context, ks []string) {
		for _, k := range ks {
			if slow(k) {
				select { // ignores ctx: the gate opens after the round
				case <-*gate.Load():
				case <-time.After(10 * time.Second): // a caller kept waiting: reported by check
				}
				return
			}
		}
	}
	load := func(ctx context.Context, k string) (string, error) {
		wait(ctx, []string{k})
		return value(k), nil
	}
	loadMany := func(ctx context.Context, ks []string) (map[string]string, error) {
		wait(ctx, ks)
		m := make(map[string]string, len(ks))
		for _, k := range ks {
			m[k] = value(k)
		}
		return m, nil
	}
	t.Cleanup(func() {
		if g := gate.Load(); g != nil {
			select {
			case <-*g:
			default:
				close(*g)
			}
		}
	})

	var soft atomic.Int64 // stale values callers got, per caller and key
	for r := range 6 {
		round.Store(int64(r))
		g := make(chan struct{})
		gate.Store(&g)
		stale := map[string]string{}
		for _, k := range keys {
			stale[k] = fmt.Sprintf("old-%s-%d", k, r)
		}
		e.putStale(t, stale)
		check := func(k, v string) {
			switch {
			case v == stale[k]:
				soft.Add(1)
			case slow(k):
				t.Errorf("round %d: %s = %q; want its stale value %q (its load is held)", r, k, v, stale[k])
			case v != value(k):
				t.Errorf("round %d: %s = %q; want %q or %q", r, k, v, stale[k], value(k))
			}
		}
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				if i%2 == 1 {
					var cancel context.CancelFunc
					// Some leave well before the soft timeout, some around it.
					ctx, cancel = context.WithTimeout(ctx, time.Duration(i*10)*time.Millisecond+time.Millisecond)
					defer cancel()
				}
				switch i % 4 {
				case 0, 1:
					ks := []string{keys[i%len(keys)], keys[(i+1)%len(keys)], keys[i%len(keys)], keys[(i+3)%len(keys)]}
					m, err := e.c.GetManyOrLoad(ctx, ks, loadMany)
					if err != nil && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("round %d: GetManyOrLoad %v: %v", r, ks, err)
					}
					for k, v := range m {
						check(k, v)
					}
				default:
					k := keys[i%len(keys)]
					v, err := e.c.GetOrLoad(ctx, k, load)
					switch {
					case errors.Is(err, context.DeadlineExceeded):
					case err != nil:
						t.Errorf("round %d: GetOrLoad %s: %v", r, k, err)
					default:
						check(k, v)
					}
				}
			}()
		}
		wg.Wait()
		close(g)
		for _, k := range keys {
			flightEnded(t, e.c, k)
		}
		runtime.Gosched()
	}
	st := e.c.Stats().Loads
	if got := int64(st.StaleServedSoftTimeout); got != soft.Load() || len(e.events.all()) != int(got) {
		t.Errorf("StaleServedSoftTimeout %d, %d events; want %d, the stale values callers got", got, len(e.events.all()), soft.Load())
	}
	if st.StaleServed != 0 || st.LoaderErrors != 0 {
		t.Errorf("StaleServed %d, LoaderErrors %d; want 0 (no loader failed)", st.StaleServed, st.LoaderErrors)
	}
	if l := e.loudLogs(); len(l) > 0 {
		t.Errorf("logged at Warn or above: %+v; want nothing", l)
	}
	if soft.Load() == 0 {
		t.Error("no caller was served a stale value; the test exercised nothing")
	}
}

// Close while a load whose callers were served the stale value still runs:
// a loader that honours its ctx is cancelled and Close returns at once;
// one that ignores it holds Close for LoadTimeout+abortGrace (which says
// so), and when it finally returns, after Close, its work ends without a
// panic, without writing to Redis and without logging a failure of Redis.
// goleak (TestMain) checks that nothing is left running.
func TestReviewSoftTimeoutCloseDuringLoad(t *testing.T) {
	rc := servers()[1].client(t)
	for _, stubborn := range []bool{false, true} {
		for _, mode := range softModes() {
			for _, batch := range []bool{false, true} {
				name := fmt.Sprintf("stubborn=%t/%s/batch=%t", stubborn, mode.name, batch)
				t.Run(name, func(t *testing.T) {
					cfg := softConfig()
					cfg.LoadTimeout = 600 * time.Millisecond
					ns := fmt.Sprintf("soft-close-%t-%t-%t", stubborn, mode.inline, batch)
					e := newSoftEnv(t, rc, ns, cfg)
					ctx := mode.ctx(t)
					e.putStale(t, map[string]string{"k": "old"})
					var load Loader[string]
					var loadMany BatchLoader[string]
					var started <-chan string
					var open func()
					var returned atomic.Bool
					if stubborn {
						g := newStubbornLoader(t)
						load, loadMany, started, open = g.load, g.loadMany, g.started, g.open
					} else {
						g := newHeldLoader(t)
						load, loadMany, started, open = g.load, g.loadMany, g.started, g.open
					}
					inner, innerMany := load, loadMany
					load = func(ctx context.Context, k string) (string, error) {
						defer returned.Store(true)
						return inner(ctx, k)
					}
					loadMany = func(ctx context.Context, ks []string) (map[string]string, error) {
						defer returned.Store(true)
						return innerMany(ctx, ks)
					}
					var v string
					var err error
					if batch {
						var m map[string]string
						m, err = e.c.GetManyOrLoad(ctx, []string{"k"}, loadMany)
						v = m["k"]
					} else {
						v, err = e.c.GetOrLoad(ctx, "k", load)
					}
					if err != nil || v != "old" {
						t.Fatalf("read with a slow loader: %q, %v; want the stale value", v, err)
					}
					<-started
					start := time.Now()
					cerr := e.c.Close()
					elapsed := time.Since(start)
					switch {
					case !stubborn && (cerr != nil || elapsed > cfg.LoadTimeout/2):
						t.Fatalf("Close with a loader that honours its ctx: %v after %v; want nil at once", cerr, elapsed)
					case stubborn && (cerr == nil || elapsed < cfg.LoadTimeout):
						t.Fatalf("Close with a loader that ignores its ctx: %v after %v; want an error after LoadTimeout", cerr, elapsed)
					}
					if _, err := e.c.GetOrLoad(ctx, "k", load); !errors.Is(err, ErrClosed) {
						t.Fatalf("GetOrLoad after Close: %v; want ErrClosed", err)
					}
					open()
					eventually(t, "the loader to return", returned.Load)
					// Let the detached work run to its end, then look.
					time.Sleep(100 * time.Millisecond)
					// Redis's value is stale, which the peer's Get does not
					// return: read the envelope itself.
					raw, _ := rc.Get(context.Background(), ns+":k").Bytes()
					if strings.Contains(string(raw), "new-k") {
						t.Fatalf("Redis holds the value of a load that returned after Close: %q", raw)
					}
					if l := e.loudLogs(); len(l) > 0 {
						t.Fatalf("logged at Warn or above: %+v; want nothing", l)
					}
				})
			}
		}
	}
}

// A loader that panics, exits through runtime.Goexit, or reports the key
// not found after the soft timeout served its callers changes nothing for
// them; the flight ends (the next caller loads afresh rather than hang or
// join it), nothing is kept locally, and only the panic is logged (as any
// loader panic).
func TestReviewSoftTimeoutLoaderEndsBadlyLate(t *testing.T) {
	rc := servers()[1].client(t)
	for _, how := range []string{"panic", "goexit", "notfound"} {
		for _, mode := range softModes() {
			for _, batch := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/batch=%t", how, mode.name, batch), func(t *testing.T) {
					e := newSoftEnv(t, rc, fmt.Sprintf("soft-bad-%s-%t-%t", how, mode.inline, batch), softConfig())
					ctx := mode.ctx(t)
					e.putStale(t, map[string]string{"k": "old"})
					served := make(chan struct{})
					ended := make(chan struct{})
					t.Cleanup(func() {
						select {
						case <-served:
						default:
							close(served)
						}
					})
					end := func() {
						<-served
						close(ended)
						switch how {
						case "panic":
							panic("late loader panic")
						case "goexit":
							runtime.Goexit()
						}
					}
					load := func(context.Context, string) (string, error) {
						end()
						return "", ErrNotFound
					}
					loadMany := func(context.Context, []string) (map[string]string, error) {
						end()
						return map[string]string{}, nil
					}
					var v string
					var err error
					if batch {
						var m map[string]string
						m, err = e.c.GetManyOrLoad(ctx, []string{"k"}, loadMany)
						v = m["k"]
					} else {
						v, err = e.c.GetOrLoad(ctx, "k", load)
					}
					close(served)
					if err != nil || v != "old" {
						t.Fatalf("read with a slow loader: %q, %v; want the stale value", v, err)
					}
					<-ended
					flightEnded(t, e.c, "k")
					var calls atomic.Int64
					fresh := func(context.Context, string) (string, error) {
						calls.Add(1)
						return "fresh", nil
					}
					if v, err := e.c.GetOrLoad(ctx, "k", fresh); err != nil || v != "fresh" || calls.Load() != 1 {
						t.Fatalf("next GetOrLoad: %q, %v, %d loader calls; want the loaded value from a new load", v, err, calls.Load())
					}
					st := e.c.Stats().Loads
					if wantPanics := map[bool]uint64{true: 1}[how == "panic"]; st.Panics != wantPanics {
						t.Errorf("Panics %d, want %d", st.Panics, wantPanics)
					}
					checkSoftEvents(t, e, "k")
					for _, le := range e.loudLogs() {
						if how != "panic" || le.Message != "nearcache: loader panicked" {
							t.Errorf("logged %q at %v; want nothing but a loader panic", le.Message, le.Level)
						}
					}
				})
			}
		}
	}
}

// An invalidate-all (Invalidator.InvalidateAll, the repair after a lost
// message, a Clear) that reaches the Cache after the loader was called and
// before the soft timeout makes the stale value unservable: the caller
// waits for the loader, whose value is not kept. One that comes after the
// soft timeout served the stale value makes the next caller start a load
// of its own, not join the one that served it.
func TestReviewSoftTimeoutInvalidateAll(t *testing.T) {
	rc := servers()[1].client(t)
	for _, mode := range softModes() {
		t.Run("before/"+mode.name, func(t *testing.T) {
			cfg := softConfig()
			cfg.SoftTimeout = 400 * time.Millisecond
			ns := "soft-ia-before-" + mode.name
			e := newSoftEnv(t, rc, ns, cfg)
			inv, err := NewInvalidator(rc, InvalidatorConfig{Namespace: ns})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = inv.Close() })
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
			if err := inv.InvalidateAll(context.Background()); err != nil {
				t.Fatal(err)
			}
			flightEnded(t, e.c, "k") // the Cache heard it
			if d := time.Since(called); d > cfg.SoftTimeout/2 {
				g.open()
				<-done
				t.Skipf("the invalidate-all took %v to arrive: too slow to come before the soft timeout (%v)", d, cfg.SoftTimeout)
			}
			select {
			case r := <-done:
				t.Fatalf("GetOrLoad returned %q, %v before the loader; want it to wait (an invalidate-all overtook the stale value)", r.v, r.err)
			case <-time.After(3 * cfg.SoftTimeout):
			}
			g.open()
			if r := <-done; r.err != nil || r.v != "new-k" {
				t.Fatalf("GetOrLoad: %q, %v; want the loaded value", r.v, r.err)
			}
			eventually(t, "the overtaken load refused", func() bool { return e.c.Stats().Loads.Conflicts == 1 })
			checkSoftEvents(t, e)
		})
		t.Run("after/"+mode.name, func(t *testing.T) {
			e := newSoftEnv(t, rc, "soft-ia-after-"+mode.name, softConfig())
			ctx := mode.ctx(t)
			e.putStale(t, map[string]string{"k": "old"})
			g := newHeldLoader(t)
			e.getSoft(t, ctx, "k", g.load, "old")
			g.awaitStart(t)
			e.c.dropAll() // what the repair of a lost message does
			var calls atomic.Int64
			fresh := func(context.Context, string) (string, error) {
				calls.Add(1)
				return "fresh", nil
			}
			if v, err := e.c.GetOrLoad(ctx, "k", fresh); err != nil || v != "fresh" || calls.Load() != 1 {
				t.Fatalf("GetOrLoad after the invalidate-all: %q, %v, %d loader calls; want a load of its own", v, err, calls.Load())
			}
			g.open()
			flightEnded(t, e.c, "k")
			eventually(t, "the overtaken load refused", func() bool { return e.c.Stats().Loads.Conflicts == 1 })
			if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "fresh" {
				t.Fatalf("GetOrLoad after both loads: %q, %v; want the value of the load after the invalidate-all", v, err)
			}
		})
	}
}

// A refresh-ahead's loader that calls SetTTL sets the refreshed value's
// TTL in Redis (PTTL, with fail-safe's grace), its freshness, and its
// next refresh time (RefreshAhead × that TTL), in Redis and in L1: here
// the first load sets 600 ms (due 300 ms after it), the refresh 1200 ms
// (due 600 ms after it), while Config.TTL is a minute.
func TestReviewSetTTLRefreshAhead(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	for _, fs := range []time.Duration{0, time.Hour} {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("failsafe=%v/batch=%t", fs, batch), func(t *testing.T) {
				ns := fmt.Sprintf("rttl%d%t", fs/time.Hour, batch)
				c := newCache(t, Config[string]{Redis: rc, Namespace: ns, TTL: time.Minute, MaxL1TTL: time.Minute,
					RefreshAhead: 0.5, FailSafeMaxStale: fs, L1TTLJitter: NoJitter, FailSafeRetryAfter: 50 * time.Millisecond})
				ttls := []time.Duration{600 * time.Millisecond, 1200 * time.Millisecond, 1200 * time.Millisecond}
				var calls atomic.Int64
				var refreshed atomic.Int64 // UnixNano when the second load returned
				pick := func(ctx context.Context) error {
					n := calls.Add(1)
					if n == 2 {
						defer func() { refreshed.Store(time.Now().UnixNano()) }()
					}
					return SetTTL(ctx, ttls[min(int(n), len(ttls))-1])
				}
				get := func() (string, error) {
					if batch {
						m, err := c.GetManyOrLoad(context.Background(), []string{"k"}, func(ctx context.Context, keys []string) (map[string]string, error) {
							return map[string]string{"k": fmt.Sprintf("v%d", calls.Load()+1)}, pick(ctx)
						})
						return m["k"], err
					}
					return c.GetOrLoad(context.Background(), "k", func(ctx context.Context, _ string) (string, error) {
						return fmt.Sprintf("v%d", calls.Load()+1), pick(ctx)
					})
				}
				if v, err := get(); err != nil || v != "v1" {
					t.Fatalf("first read: %q, %v", v, err)
				}
				checkPTTL(t, rc, ns, "k", 400*time.Millisecond+fs, 600*time.Millisecond+fs)
				redistest.WaitFor(t, 10*time.Second, "the refresh of k", func() bool {
					if _, err := get(); err != nil {
						t.Fatalf("read: %v", err)
					}
					return c.Stats().Loads.Refreshes.FromLoader == 1
				})
				after := time.Since(time.Unix(0, refreshed.Load()))
				checkPTTL(t, rc, ns, "k", time.Second-after+fs-100*time.Millisecond, 1200*time.Millisecond+fs)
				e, err := c.l2.Read(context.Background(), "k")
				if err != nil {
					t.Fatal(err)
				}
				if d := time.Until(e.RefreshAt); d <= 300*time.Millisecond || d > 600*time.Millisecond {
					t.Fatalf("the refreshed value is due in Redis in %v; want in (300ms, 600ms] (RefreshAhead × the loader's 1200 ms)", d)
				}
				if fs > 0 {
					if d := time.Until(e.StaleAt); d <= 900*time.Millisecond || d > 1200*time.Millisecond {
						t.Fatalf("the refreshed value is fresh for %v more; want in (900ms, 1200ms]", d)
					}
				}
				// In L1: not due again before 600 ms after the refresh.
				settleL1(c)
				started := c.Stats().Loads.Refreshes.Started
				redistest.WaitFor(t, 10*time.Second, "the second refresh", func() bool {
					if _, err := get(); err != nil {
						t.Fatalf("read: %v", err)
					}
					return c.Stats().Loads.Refreshes.Started > started
				})
				// The L1 copy's due time is on the coarse clock, which may
				// lag a tick: allow 20 ms.
				if d := time.Since(time.Unix(0, refreshed.Load())); d < 580*time.Millisecond {
					t.Fatalf("the refreshed value was due again %v after its refresh; want RefreshAhead × its loader's TTL (600ms)", d)
				}
			})
		}
	}
}

// A loader that calls SetTTL after the soft timeout served its callers the
// stale value still sets the TTL of what it returns.
func TestReviewSetTTLAfterSoftTimeout(t *testing.T) {
	rc := servers()[1].client(t)
	for _, mode := range softModes() {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/batch=%t", mode.name, batch), func(t *testing.T) {
				ns := fmt.Sprintf("soft-ttl-%t-%t", mode.inline, batch)
				e := newSoftEnv(t, rc, ns, softConfig())
				ctx := mode.ctx(t)
				e.putStale(t, map[string]string{"k": "old"})
				served, done := make(chan struct{}), make(chan error, 1)
				set := func(ctx context.Context) {
					<-served
					done <- errors.Join(SetTTL(ctx, 3*time.Second), SetL1TTL(ctx, time.Second))
				}
				var v string
				var err error
				if batch {
					var m map[string]string
					m, err = e.c.GetManyOrLoad(ctx, []string{"k"}, func(ctx context.Context, keys []string) (map[string]string, error) {
						set(ctx)
						return map[string]string{"k": "new"}, nil
					})
					v = m["k"]
				} else {
					v, err = e.c.GetOrLoad(ctx, "k", func(ctx context.Context, _ string) (string, error) {
						set(ctx)
						return "new", nil
					})
				}
				close(served)
				if err != nil || v != "old" {
					t.Fatalf("read: %q, %v; want the stale value", v, err)
				}
				if err := <-done; err != nil {
					t.Fatalf("setters after the soft timeout: %v", err)
				}
				flightEnded(t, e.c, "k")
				checkPTTL(t, rc, ns, "k", 2*time.Second+time.Hour, 3*time.Second+time.Hour)
				checkFreshFor(t, e.c, "k", 2*time.Second, 3*time.Second)
				if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "new" {
					t.Fatalf("GetOrLoad after the load: %q, %v; want its value", v, err)
				}
			})
		}
	}
}

// TTLs too large for the arithmetic: SetTTL(math.MaxInt64), what
// time.Until returns for an expiry in the year 9999, with and without
// fail-safe (whose grace is added to the TTL) and refresh-ahead (a fraction
// of it): the value is stored, fresh, served from L1 and from Redis to
// another instance, and never due for refresh.
func TestReviewSetTTLHuge(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	for i, ttl := range []time.Duration{math.MaxInt64, time.Until(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)), math.MaxInt64 - time.Minute} {
		for _, fs := range []time.Duration{0, time.Hour} {
			for _, ra := range []float64{0, 0.9} {
				t.Run(fmt.Sprintf("ttl=%v/failsafe=%v/refresh=%v", ttl, fs, ra), func(t *testing.T) {
					ns := fmt.Sprintf("huge%d%d%d", i, fs/time.Hour, int(ra*10))
					cfg := Config[string]{Redis: rc, Namespace: ns, FailSafeMaxStale: fs, RefreshAhead: ra}
					c := newCache(t, cfg)
					var calls atomic.Int64
					load := func(ctx context.Context, key string) (string, error) {
						calls.Add(1)
						return "v", SetTTL(ctx, ttl)
					}
					for range 3 {
						if v, err := c.GetOrLoad(context.Background(), "k", load); err != nil || v != "v" {
							t.Fatalf("GetOrLoad: %q, %v", v, err)
						}
						settleL1(c)
					}
					if n := calls.Load(); n != 1 {
						t.Fatalf("%d loader calls for 3 reads; want 1", n)
					}
					if st := c.Stats().Loads.Refreshes.Started; st != 0 {
						t.Fatalf("%d refreshes started; want none", st)
					}
					d, err := rc.PTTL(context.Background(), ns+":k").Result()
					if err != nil || (d != -1 && d < 100*365*24*time.Hour) {
						t.Fatalf("PTTL %v, %v; want no expiry or more than a century", d, err)
					}
					other := newCache(t, cfg)
					if v, err := other.GetOrLoad(context.Background(), "k", load); err != nil || v != "v" || calls.Load() != 1 {
						t.Fatalf("another instance: %q, %v after %d loader calls; want the value from Redis", v, err, calls.Load())
					}
				})
			}
		}
	}
}

// A BatchLoader asked for a key that GetManyOrLoad repeats sets its TTL
// once; a key the call joined from another caller's load is not the
// loader's to set; an Observer whose LoadStart derives the batch loader's
// ctx leaves the setters working.
func TestReviewSetKeyTTLRepeatedAndJoined(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	obs := &Observer{LoadStart: func(ctx context.Context, _ LoadStartEvent) context.Context {
		return context.WithValue(ctx, struct{ span int }{}, "span")
	}}
	c := newCache(t, Config[string]{Redis: rc, Namespace: "skrep", Observer: obs})
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) {
			p := lc.name + "-"
			a, b, j := p+"a", p+"b", p+"j"
			// j is being loaded by another caller.
			gate, jStarted := make(chan struct{}), make(chan struct{})
			jDone := make(chan error, 1)
			go func() {
				_, err := c.GetOrLoad(context.Background(), j, func(ctx context.Context, _ string) (string, error) {
					close(jStarted)
					<-gate
					return "J", SetTTL(ctx, 5*time.Second)
				})
				jDone <- err
			}()
			<-jStarted
			var setErr error
			var asked []string
			got, err := c.GetManyOrLoad(lc.ctx, []string{a, j, b, a, j}, func(ctx context.Context, keys []string) (map[string]string, error) {
				asked = slices.Clone(keys)
				if ctx.Value(struct{ span int }{}) != "span" {
					return nil, errors.New("the loader's ctx lacks the Observer's value")
				}
				setErr = SetKeyTTL(ctx, j, time.Hour)
				close(gate)
				return map[string]string{a: "A", b: "B"}, errors.Join(SetKeyTTL(ctx, a, 2*time.Second), SetTTL(ctx, 3*time.Second))
			})
			if err != nil || fmt.Sprint(got) != fmt.Sprintf("map[%s:A %s:B %s:J]", a, b, j) {
				t.Fatalf("GetManyOrLoad: %v, %v", got, err)
			}
			if fmt.Sprint(asked) != fmt.Sprint([]string{a, b}) {
				t.Fatalf("the batch loader was asked for %v; want [%s %s]", asked, a, b)
			}
			if !errors.Is(setErr, errNotLoadKey) {
				t.Fatalf("SetKeyTTL of a joined key: %v; want errNotLoadKey", setErr)
			}
			if err := <-jDone; err != nil {
				t.Fatal(err)
			}
			checkPTTL(t, rc, "skrep", a, time.Second, 2*time.Second)
			checkPTTL(t, rc, "skrep", b, 2*time.Second, 3*time.Second)
			checkPTTL(t, rc, "skrep", j, 4*time.Second, 5*time.Second)
		})
	}
}

// A loader may hand its ctx to code that runs inside another Cache's
// loader: SetTTL there sets the TTL of the load whose ctx it is given, and
// each Cache's key gets its own loader's TTL.
func TestReviewSetTTLOtherCacheLoadCtx(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	a := newCache(t, Config[string]{Redis: rc, Namespace: "octa"})
	b := newCache(t, Config[string]{Redis: rc, Namespace: "octb"})
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) {
			k := "k-" + lc.name
			v, err := a.GetOrLoad(lc.ctx, k, func(actx context.Context, key string) (string, error) {
				// b's load runs on its own goroutine (a fresh ctx): it
				// sets a's TTL through actx, and its own through bctx.
				inner, err := b.GetOrLoad(context.Background(), key, func(bctx context.Context, _ string) (string, error) {
					return "B", errors.Join(SetTTL(actx, 2*time.Second), SetTTL(bctx, 7*time.Second))
				})
				return "A" + inner, err
			})
			if err != nil || v != "AB" {
				t.Fatalf("GetOrLoad: %q, %v", v, err)
			}
			checkPTTL(t, rc, "octa", k, time.Second, 2*time.Second)
			checkPTTL(t, rc, "octb", k, 6*time.Second, 7*time.Second)
		})
	}
}

// A value whose loader set a short TTL goes stale after it and is then
// served by fail-safe (within FailSafeMaxStale) when the loader fails, and
// by the soft timeout when it is slow.
func TestReviewSetTTLFailSafe(t *testing.T) {
	rc := servers()[1].client(t)
	e := newSoftEnv(t, rc, "ttl-fs", softConfig())
	ctx := context.Background()
	if v, err := e.c.GetOrLoad(ctx, "k", func(ctx context.Context, _ string) (string, error) {
		return "v1", SetTTL(ctx, 200*time.Millisecond)
	}); err != nil || v != "v1" {
		t.Fatalf("GetOrLoad: %q, %v", v, err)
	}
	checkPTTL(t, rc, "ttl-fs", "k", time.Hour, time.Hour+200*time.Millisecond)
	redistest.WaitFor(t, 5*time.Second, "the value to go stale", func() bool {
		e, err := e.c.l2.Read(ctx, "k")
		return err == nil && time.Now().After(e.StaleAt)
	})
	e.c.dropAll() // no local copy (it lived 200 ms at most anyway)
	down := errors.New("database down")
	if v, err := e.c.GetOrLoad(ctx, "k", func(ctx context.Context, _ string) (string, error) {
		return "", errors.Join(SetTTL(ctx, time.Hour), down) // a TTL with an error is ignored
	}); err != nil || v != "v1" {
		t.Fatalf("GetOrLoad with a failing loader: %q, %v; want the stale value", v, err)
	}
	checkPTTL(t, rc, "ttl-fs", "k", 0, time.Hour+200*time.Millisecond)
	e.c.dropAll() // drop fail-safe's local copy
	g := newHeldLoader(t)
	e.getSoft(t, ctx, "k", g.load, "v1")
}

// Loaders that ignore their ctx and return after LoadTimeout (their
// callers served the stale value long before) say nothing about Redis:
// their write-backs, attempted on a ctx that has already ended, must not
// count as Redis errors, feed the circuit breaker, or log "redis writes
// failing". Here three such loads (a database that stalled) return
// together: with BreakerFailures 2 they would open the breaker, and every
// instance's reads would skip a healthy Redis for BreakerCooldown.
func TestReviewSoftTimeoutLateLoaderBlamesNotRedis(t *testing.T) {
	for _, mode := range softModes() {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/batch=%t", mode.name, batch), func(t *testing.T) {
				cfg := softConfig()
				cfg.LoadTimeout = 300 * time.Millisecond
				cfg.BreakerFailures = 2
				e := newSoftEnv(t, servers()[1].client(t), fmt.Sprintf("soft-late-redis-%t-%t", mode.inline, batch), cfg)
				ctx := mode.ctx(t)
				keys := []string{"k0", "k1", "k2"}
				stale := map[string]string{}
				for _, k := range keys {
					stale[k] = "old"
				}
				e.putStale(t, stale)
				g := newStubbornLoader(t)
				var wg sync.WaitGroup
				for _, key := range keys {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var v string
						var err error
						if batch {
							var m map[string]string
							m, err = e.c.GetManyOrLoad(ctx, []string{key}, g.loadMany)
							v = m[key]
						} else {
							v, err = e.c.GetOrLoad(ctx, key, g.load)
						}
						if err != nil || v != "old" {
							t.Errorf("read %s: %q, %v; want the stale value", key, v, err)
						}
					}()
				}
				wg.Wait()
				for _, key := range keys {
					flightEnded(t, e.c, key) // LoadTimeout+abortGrace passed
				}
				time.Sleep(50 * time.Millisecond)
				g.open()
				if !wait.Within(&e.c.work, 5*time.Second) {
					t.Fatal("the late loads did not end within 5s of their loaders' return")
				}
				st := e.c.Stats()
				if st.L2.Errors != 0 || st.L2.BreakerOpened != 0 || st.L2.Breaker != BreakerClosed {
					t.Errorf("after late loads: L2 errors %d, breaker opened %d times, now %v; want 0, 0, closed (Redis never failed)",
						st.L2.Errors, st.L2.BreakerOpened, st.L2.Breaker)
				}
				if l := e.loudLogs(); len(l) > 0 {
					t.Errorf("logged at Warn or above: %+v; want nothing (Redis never failed)", l)
				}
			})
		}
	}
}

// A refresh decides whether the value it read from Redis was refreshed
// already by another instance (notDue) with a slack of at most half the
// refresh period. The period is the value's own, RefreshAhead × the TTL it
// was written with, which a loader chooses with SetTTL: here 60 ms (a
// 30 ms period, a 15 ms slack), while the call's TTL is a minute (a 30 s
// period, so a 50 ms slack). A value written 5 ms ago, due in 25 ms, was
// just refreshed: the instance that reads it must take it, not call the
// loader again in the same period.
func TestReviewRefreshSlackFollowsLoaderTTL(t *testing.T) {
	c := newCache(t, Config[string]{TTL: time.Minute, RefreshAhead: 0.5})
	o := c.options(nil)
	now := time.Now()
	written := now.Add(-5 * time.Millisecond)
	look := lookup[string]{it: item[string]{v: "v"}, fresh: true, at: now,
		refreshAt: written.Add(30 * time.Millisecond), until: written.Add(60 * time.Millisecond)}
	if !c.notDue(look, o) {
		t.Errorf("a value written 5 ms ago with a 60 ms TTL (due in 25 ms) counts as due; want it taken as refreshed (slack at most half its 30 ms period)")
	}
	// One truly due (2 ms away, period 30 ms) still is.
	look.refreshAt, look.until = now.Add(2*time.Millisecond), now.Add(32*time.Millisecond)
	if c.notDue(look, o) {
		t.Errorf("a value due in 2 ms counts as not due")
	}
	// A value written with the call's TTL keeps the 50 ms slack: due in
	// 40 ms of a 30 s period is due.
	look.refreshAt, look.until = now.Add(40*time.Millisecond), now.Add(30*time.Second+40*time.Millisecond)
	if c.notDue(look, o) {
		t.Errorf("a value due in 40 ms (a 30 s period) counts as not due; want due (within refreshSlack)")
	}
}

// The stale value the soft timeout serves is one Redis keeps for
// FailSafeMaxStale past its TTL; once that has passed (Redis has dropped
// it), it must not be served any more: not by a timer that fires after it,
// and not to callers that join the load after it, for the rest of the
// load (up to LoadTimeout, 10 s here).
func TestReviewSoftTimeoutStaleExpires(t *testing.T) {
	rc := servers()[1].client(t)
	for _, mode := range softModes() {
		for _, batch := range []bool{false, true} {
			read := func(e *softEnv, ctx context.Context, load Loader[string]) (string, error) {
				if batch {
					m, err := e.c.GetManyOrLoad(ctx, []string{"k"}, func(ctx context.Context, keys []string) (map[string]string, error) {
						v, err := load(ctx, keys[0])
						return map[string]string{keys[0]: v}, err
					})
					return m["k"], err
				}
				return e.c.GetOrLoad(ctx, "k", load)
			}
			t.Run(fmt.Sprintf("joiners/%s/batch=%t", mode.name, batch), func(t *testing.T) {
				cfg := softConfig()
				cfg.FailSafeMaxStale = 500 * time.Millisecond
				ns := fmt.Sprintf("soft-exp-j-%t-%t", mode.inline, batch)
				e := newSoftEnv(t, rc, ns, cfg)
				ctx := mode.ctx(t)
				if err := e.c.Set(ctx, "k", "old", WithTTL(time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				written := time.Now()
				time.Sleep(5 * time.Millisecond)
				g := newHeldLoader(t)
				v, err := read(e, ctx, g.load)
				if time.Since(written) > cfg.FailSafeMaxStale-50*time.Millisecond {
					t.Skipf("the first read took until %v after the write: too slow for a stale value within FailSafeMaxStale (%v)", time.Since(written), cfg.FailSafeMaxStale)
				}
				if err != nil || v != "old" {
					t.Fatalf("read with a slow loader: %q, %v; want the stale value", v, err)
				}
				redistest.WaitFor(t, 5*time.Second, "Redis to drop the stale value", func() bool {
					n, err := rc.Exists(context.Background(), ns+":k").Result()
					return err == nil && n == 0
				})
				var calls atomic.Int64
				fresh := func(context.Context, string) (string, error) {
					calls.Add(1)
					return "fresh", nil
				}
				if v, err := read(e, ctx, fresh); err != nil || v != "fresh" || calls.Load() != 1 {
					t.Fatalf("read after the stale value expired: %q, %v with %d loader calls; want a load of its own, not the expired value", v, err, calls.Load())
				}
			})
			t.Run(fmt.Sprintf("timer/%s/batch=%t", mode.name, batch), func(t *testing.T) {
				cfg := softConfig()
				cfg.FailSafeMaxStale = 300 * time.Millisecond
				cfg.SoftTimeout = 600 * time.Millisecond
				e := newSoftEnv(t, rc, fmt.Sprintf("soft-exp-t-%t-%t", mode.inline, batch), cfg)
				ctx := mode.ctx(t)
				if err := e.c.Set(ctx, "k", "old", WithTTL(time.Millisecond)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(5 * time.Millisecond)
				g := newHeldLoader(t)
				type result struct {
					v   string
					err error
				}
				done := make(chan result, 1)
				go func() {
					v, err := read(e, ctx, g.load)
					done <- result{v, err}
				}()
				g.awaitStart(t)
				select {
				case r := <-done:
					t.Fatalf("read returned %q, %v before the loader; want it to wait (the stale value expired before the soft timeout)", r.v, r.err)
				case <-time.After(cfg.SoftTimeout + 500*time.Millisecond):
				}
				g.open()
				if r := <-done; r.err != nil || r.v != "new-k" {
					t.Fatalf("read: %q, %v; want the loaded value", r.v, r.err)
				}
				checkSoftEvents(t, e)
			})
		}
	}
}

// A load that overran LoadTimeout (its loader ignored its ctx; its callers
// were served the stale value and released) while a later load of the key
// stored a newer value must not, when its loader finally returns, put its
// older value in this instance's L1 over the newer one: the instance would
// serve it, while Redis and every other instance have the newer value,
// until the copy expires (MaxL1TTL).
func TestReviewSoftTimeoutOverranLoadKeepsNothing(t *testing.T) {
	rc := servers()[1].client(t)
	for _, mode := range softModes() {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/batch=%t", mode.name, batch), func(t *testing.T) {
				cfg := softConfig()
				cfg.LoadTimeout = 300 * time.Millisecond
				e := newSoftEnv(t, rc, fmt.Sprintf("soft-overran-%t-%t", mode.inline, batch), cfg)
				ctx := mode.ctx(t)
				e.putStale(t, map[string]string{"k": "old"})
				g := newStubbornLoader(t)
				read := func(load Loader[string]) (string, error) {
					if batch {
						m, err := e.c.GetManyOrLoad(ctx, []string{"k"}, func(ctx context.Context, keys []string) (map[string]string, error) {
							v, err := load(ctx, keys[0])
							return map[string]string{keys[0]: v}, err
						})
						return m["k"], err
					}
					return e.c.GetOrLoad(ctx, "k", load)
				}
				if v, err := read(g.load); err != nil || v != "old" {
					t.Fatalf("read with a stubborn loader: %q, %v; want the stale value", v, err)
				}
				<-g.started
				flightEnded(t, e.c, "k") // the overrun released it
				if v, err := read(func(context.Context, string) (string, error) { return "newer", nil }); err != nil || v != "newer" {
					t.Fatalf("read after the overrun: %q, %v; want the value of its own load", v, err)
				}
				settleL1(e.c)
				g.open()
				if !wait.Within(&e.c.work, 5*time.Second) {
					t.Fatal("the overran load did not end within 5s of its loader's return")
				}
				settleL1(e.c)
				if v, err := e.c.GetOrLoad(ctx, "k", notCalled(t)); err != nil || v != "newer" {
					t.Fatalf("GetOrLoad after the overran load returned: %q, %v; want %q, the newer value Redis holds", v, err, "newer")
				}
				if !e.redisHolds("k", "newer") {
					t.Fatal("Redis does not hold the newer value")
				}
			})
		}
	}
}

// A refresh whose loader ignores its ctx and returns after LoadTimeout
// stores nothing (see overran), so it is a failed refresh, with the
// overrun as its error, not one "from the loader" (RefreshFromLoader: "the
// loader was called and its value stored"); the current value stays, in
// L1 and in Redis.
func TestReviewRefreshOverranIsFailed(t *testing.T) {
	for _, withRedis := range []bool{false, true} {
		t.Run(fmt.Sprintf("redis=%t", withRedis), func(t *testing.T) {
			var rec refreshRecorder
			cfg := Config[string]{Namespace: "rover", TTL: 4 * time.Second, RefreshAhead: 0.1, LoadTimeout: 300 * time.Millisecond,
				FailSafeRetryAfter: time.Minute, L1TTLJitter: NoJitter, Observer: rec.observer()}
			if withRedis {
				cfg.Redis = servers()[1].client(t)
			}
			c := newCache(t, cfg)
			stuck := make(chan struct{})
			t.Cleanup(func() {
				select {
				case <-stuck:
				default:
					close(stuck)
				}
			})
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
			settleL1(c)
			waitRefreshStarted(t, c, "k", load, 1)
			flightEnded(t, c, "k")
			close(stuck)
			evs := waitOutcomes(t, &rec, 1)
			if evs[0].Outcome != RefreshFailed || !errors.Is(evs[0].Err, errLoadOverran) {
				t.Fatalf("refresh that overran LoadTimeout: %v, %v; want failed with the overrun error", evs[0].Outcome, evs[0].Err)
			}
			if !wait.Within(&c.work, 5*time.Second) {
				t.Fatal("the refresh did not end")
			}
			settleL1(c)
			if v, err := c.GetOrLoad(ctx, "k", load); err != nil || v != "v1" {
				t.Fatalf("GetOrLoad after the overran refresh: %q, %v; want the current value v1", v, err)
			}
		})
	}
}
