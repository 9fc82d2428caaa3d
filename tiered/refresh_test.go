package tiered

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/l2"
)

// gatedLoader returns "<key>@<n>" for its n-th call; while gate is set, a
// call blocks until the gate is closed (or its ctx ends).
type gatedLoader struct {
	calls atomic.Int64
	mu    sync.Mutex
	gate  chan struct{}
	fail  atomic.Bool
}

func (l *gatedLoader) hold() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gate = make(chan struct{})
	return l.gate
}

func (l *gatedLoader) load(ctx context.Context, key string) (string, error) {
	n := l.calls.Add(1)
	l.mu.Lock()
	g := l.gate
	l.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if l.fail.Load() {
		return "", errors.New("database down")
	}
	return key + "@" + string(rune('0'+n)), nil
}

// refreshRecorder records Observer.Refreshed events.
type refreshRecorder struct {
	mu  sync.Mutex
	evs []RefreshEvent
}

func (r *refreshRecorder) observer() *Observer {
	return &Observer{Refreshed: func(ev RefreshEvent) {
		r.mu.Lock()
		r.evs = append(r.evs, ev)
		r.mu.Unlock()
	}}
}

func (r *refreshRecorder) outcomes() []RefreshOutcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []RefreshOutcome
	for _, ev := range r.evs {
		out = append(out, ev.Outcome)
	}
	return out
}

func refreshCache(t *testing.T, rc redis.UniversalClient, ns string, rec *refreshRecorder) *Cache[string] {
	t.Helper()
	// RedisTimeout is generous: these tests are about what a refresh does
	// with the answer Redis gives, and a read that times out on a busy
	// machine would send the refresh to the loader.
	return newCache(t, Config[string]{Redis: rc, Namespace: ns, TTL: 4 * time.Second, RefreshAhead: 0.25,
		FailSafeRetryAfter: 300 * time.Millisecond, L1TTLJitter: NoJitter, Observer: rec.observer(),
		RedisTimeout: 2 * time.Second})
}

// waitDue waits until a hit on key has started a refresh (Stats), reading
// it through GetOrLoad, and returns what those reads returned.
func waitRefreshStarted(t *testing.T, c *Cache[string], key string, load Loader[string], n uint64) []string {
	t.Helper()
	var got []string
	redistest.WaitFor(t, 10*time.Second, "a refresh to start", func() bool {
		v, err := c.GetOrLoad(context.Background(), key, load)
		if err != nil {
			t.Fatalf("GetOrLoad: %v", err)
		}
		got = append(got, v)
		return c.Stats().Loads.Refreshes.Started >= n
	})
	return got
}

// TestRefreshAheadServesAtOnce: a hit past the refresh time returns the
// current value at once while one background refresh runs (the loader is
// held), every read meanwhile gets the old value without waiting, and once
// the loader returns the new value is served, in L1 and in Redis.
func TestRefreshAheadServesAtOnce(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := refreshCache(t, rc, "ra", &rec)
	var l gatedLoader
	ctx := context.Background()
	if v, err := c.GetOrLoad(ctx, "k", l.load); err != nil || v != "k@1" {
		t.Fatalf("first GetOrLoad = %q, %v", v, err)
	}
	release := l.hold()
	seen := waitRefreshStarted(t, c, "k", l.load, 1)
	for _, v := range seen {
		if v != "k@1" {
			t.Fatalf("a read before the refresh ended returned %q, want the current k@1", v)
		}
	}
	redistest.WaitFor(t, 5*time.Second, "the refresh to call the loader", func() bool { return l.calls.Load() == 2 })
	for range 50 {
		start := time.Now()
		v, err := c.GetOrLoad(ctx, "k", l.load)
		if err != nil || v != "k@1" {
			t.Fatalf("GetOrLoad during the refresh = %q, %v; want k@1", v, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("GetOrLoad during the refresh took %v: it waited for the loader", d)
		}
	}
	if got := l.calls.Load(); got != 2 {
		t.Fatalf("loader called %d times, want 2 (one load, one refresh)", got)
	}
	close(release)
	redistest.WaitFor(t, 5*time.Second, "the refreshed value", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@2"
	})
	raw, err := rc.Get(ctx, "ra:k").Bytes()
	if err != nil {
		t.Fatalf("GET ra:k: %v", err)
	}
	if want := "k@2"; !bytesHasSuffix(raw, want) {
		t.Fatalf("Redis holds %q, want the refreshed %s", raw, want)
	}
	if pttl := rc.PTTL(ctx, "ra:k").Val(); pttl < 3*time.Second {
		t.Fatalf("refreshed value's PTTL %v, want a fresh TTL of about 4s", pttl)
	}
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) == 1 })
	st := c.Stats().Loads.Refreshes
	if st.Started != 1 || st.FromLoader != 1 || st.FromRedis+st.Skipped+st.Failed != 0 {
		t.Fatalf("RefreshStats %+v, want 1 started, 1 from the loader", st)
	}
	if got := rec.outcomes(); len(got) != 1 || got[0] != RefreshFromLoader {
		t.Fatalf("Refreshed events %v, want [loader]", got)
	}
	if _, err := rc.Get(ctx, wire.ClaimKey("ra:", "k")).Result(); err != redis.Nil {
		t.Fatalf("the claim is still held after a successful refresh: %v", err)
	}
}

func bytesHasSuffix(b []byte, s string) bool {
	return len(b) >= len(s) && string(b[len(b)-len(s):]) == s
}

// TestRefreshTakesFresherRedisValue: when Redis already holds a value
// another instance refreshed (written here without an invalidation, as if
// it were lost), the due hit's refresh takes it from Redis and does not
// call the loader.
func TestRefreshTakesFresherRedisValue(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := refreshCache(t, rc, "rr", &rec)
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // k@1 in L1: the hits below read it, not Redis's other@9
	other, err := l2.New(rc, l2.Config{KeyPrefix: "rr:"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// An hour: with the Cache's 4 s TTL the value could expire in Redis
	// before a late refresh (a busy machine) read it, which then loaded.
	if err := other.Set(ctx, "k", l2.Entry{Value: []byte("other@9"), TTL: time.Hour, RefreshAfter: time.Hour}); err != nil {
		t.Fatal(err)
	}
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) == 1 })
	if got := rec.outcomes(); got[0] != RefreshFromRedis {
		t.Fatalf("outcome %v, want redis (L2 errors %d)", got[0], c.Stats().L2.Errors)
	}
	// The fill is staged and replaces the old copy within a clock tick.
	redistest.WaitFor(t, 5*time.Second, "Redis's other@9 in L1", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "other@9"
	})
	if n := l.calls.Load(); n != 1 {
		t.Fatalf("loader called %d times, want 1 (the refresh took Redis's value)", n)
	}
}

// TestRefreshSkippedWhileClaimed: while another instance holds the key's
// claim, a due hit's refresh does not call the loader and the current value
// is served; once the claim is gone, a later hit (after
// FailSafeRetryAfter) refreshes from the loader.
func TestRefreshSkippedWhileClaimed(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := refreshCache(t, rc, "rs", &rec)
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // k@1 in L1: the hits below read it
	other, err := l2.New(rc, l2.Config{KeyPrefix: "rs:"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if ok, err := other.Claim(ctx, "k", "other-instance", time.Minute); !ok || err != nil {
		t.Fatalf("Claim = %v, %v", ok, err)
	}
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) == 1 })
	if got := rec.outcomes(); got[0] != RefreshSkipped {
		t.Fatalf("outcome %v, want skipped", got[0])
	}
	if v, _ := c.GetOrLoad(ctx, "k", l.load); v != "k@1" || l.calls.Load() != 1 {
		t.Fatalf("GetOrLoad = %q with %d loader calls; want k@1, 1", v, l.calls.Load())
	}
	if err := other.Release(ctx, "k", "other-instance", 0); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 10*time.Second, "a refresh from the loader after the claim was released", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@2"
	})
	redistest.WaitFor(t, 5*time.Second, "the second refresh to end", func() bool { return len(rec.outcomes()) == 2 })
	st := c.Stats().Loads.Refreshes
	if st.Skipped != 1 || st.FromLoader != 1 {
		t.Fatalf("RefreshStats %+v, want 1 skipped and 1 from the loader", st)
	}
}

// TestRefreshFailureKeepsValue: a refresh whose loader fails keeps serving
// the current value, reports the error, and holds the claim for
// FailSafeRetryAfter so that other instances do not retry at once.
func TestRefreshFailureKeepsValue(t *testing.T) {
	srv := redistest.StartServer(t)
	rc := newClient(t, srv.Addr())
	var rec refreshRecorder
	c := refreshCache(t, rc, "rf", &rec)
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	l.fail.Store(true)
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) >= 1 })
	rec.mu.Lock()
	ev := rec.evs[0]
	rec.mu.Unlock()
	if ev.Outcome != RefreshFailed || ev.Err == nil || ev.Key != "k" || ev.Namespace != "rf" {
		t.Fatalf("event %+v, want a failed refresh of k with its error", ev)
	}
	if pttl := rc.PTTL(ctx, wire.ClaimKey("rf:", "k")).Val(); pttl <= 0 || pttl > 300*time.Millisecond {
		t.Fatalf("claim PTTL after a failed refresh = %v, want at most FailSafeRetryAfter (300ms)", pttl)
	}
	if v, err := c.GetOrLoad(ctx, "k", l.load); v != "k@1" || err != nil {
		t.Fatalf("GetOrLoad after a failed refresh = %q, %v; want k@1", v, err)
	}
}

// TestRefreshRacingWrite: a refresh whose loader read the old row before a
// Set or Delete of the key (by this or another instance) must not leave its
// value anywhere once it returns: not in Redis, not in either L1.
func TestRefreshRacingWrite(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remote bool
		del    bool
	}{{"set-local", false, false}, {"set-remote", true, false}, {"delete-local", false, true}, {"delete-remote", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.StartServer(t)
			var rec refreshRecorder
			a := refreshCache(t, newClient(t, srv.Addr()), "rw", &rec)
			b := refreshCache(t, newClient(t, srv.Addr()), "rw", &refreshRecorder{})
			var l gatedLoader
			ctx := context.Background()
			if _, err := a.GetOrLoad(ctx, "k", l.load); err != nil {
				t.Fatal(err)
			}
			release := l.hold()
			waitRefreshStarted(t, a, "k", l.load, 1)
			redistest.WaitFor(t, 5*time.Second, "the refresh to call the loader", func() bool { return l.calls.Load() == 2 })
			// The loader has read the old row; now the row changes.
			writer := a
			if tc.remote {
				writer = b
			}
			var err error
			if tc.del {
				err = writer.Delete(ctx, "k")
			} else {
				err = writer.Set(ctx, "k", "new")
			}
			if err != nil {
				t.Fatal(err)
			}
			close(release)
			redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) == 1 })
			want, wantErr := "new", error(nil)
			if tc.del {
				want, wantErr = "", ErrNotFound
			}
			for _, c := range []*Cache[string]{a, b} {
				redistest.WaitFor(t, 5*time.Second, "the write everywhere", func() bool {
					v, err := c.Get(ctx, "k")
					return v == want && errors.Is(err, wantErr)
				})
				for range 20 {
					if v, err := c.Get(ctx, "k"); v != want || !errors.Is(err, wantErr) {
						t.Fatalf("Get after the refresh = %q, %v; want %q, %v", v, err, want, wantErr)
					}
				}
			}
			if v, _ := rc(t, srv).Get(ctx, "rw:k").Bytes(); bytesHasSuffix(v, "k@2") {
				t.Fatalf("Redis holds the refresh's overtaken value %q", v)
			}
		})
	}
}

func rc(t *testing.T, srv *redistest.Server) *redis.Client { return newClient(t, srv.Addr()) }

// TestRefreshAheadConfig checks the bounds of Config.RefreshAhead.
func TestRefreshAheadConfig(t *testing.T) {
	for _, f := range []float64{-0.1, 1, 1.5} {
		if _, err := New(Config[string]{RefreshAhead: f}); err == nil {
			t.Errorf("RefreshAhead %v: New succeeded", f)
		}
	}
}

// TestRefreshAheadL1Only: without Redis a due hit refreshes from the loader
// in the background (no claim), and the new value replaces the old.
func TestRefreshAheadL1Only(t *testing.T) {
	var rec refreshRecorder
	c := newCache(t, Config[string]{TTL: 2 * time.Second, RefreshAhead: 0.2, L1TTLJitter: NoJitter, Observer: rec.observer()})
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	c.hot.Wait() // a new key can miss until ristretto has applied its fill: that miss would load
	redistest.WaitFor(t, 10*time.Second, "the refreshed value", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@2"
	})
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) == 1 })
	if st := c.Stats().Loads.Refreshes; st.FromLoader != 1 {
		t.Fatalf("RefreshStats %+v", st)
	}
}

// TestRefreshFindsKeyGone: a refresh whose loader reports the key not found
// (no negative caching) deletes the value Redis holds, leaving a tombstone,
// and every instance stops serving it, instead of serving the deleted value
// until it expires while calling the loader at every retry.
func TestRefreshFindsKeyGone(t *testing.T) {
	srv := redistest.StartServer(t)
	var rec refreshRecorder
	a := refreshCache(t, newClient(t, srv.Addr()), "rg", &rec)
	b := refreshCache(t, newClient(t, srv.Addr()), "rg", &refreshRecorder{})
	var gone atomic.Bool
	var calls atomic.Int64
	load := func(_ context.Context, key string) (string, error) {
		calls.Add(1)
		if gone.Load() {
			return "", ErrNotFound
		}
		return key + "@row", nil
	}
	ctx := context.Background()
	for _, c := range []*Cache[string]{a, b} {
		if v, err := c.GetOrLoad(ctx, "k", load); err != nil || v != "k@row" {
			t.Fatalf("GetOrLoad = %q, %v", v, err)
		}
	}
	gone.Store(true)
	waitRefreshStarted(t, a, "k", load, 1)
	for _, c := range []*Cache[string]{a, b} {
		redistest.WaitFor(t, 5*time.Second, "the deleted row gone everywhere", func() bool {
			_, err := c.Get(ctx, "k")
			return errors.Is(err, ErrNotFound)
		})
	}
	raw, err := newClient(t, srv.Addr()).Get(ctx, "rg:k").Bytes()
	if err != nil || len(raw) < 3 || raw[2]&0x10 == 0 {
		t.Fatalf("Redis holds %x (%v), want a tombstone", raw, err)
	}
	if n := calls.Load(); n > 4 {
		t.Fatalf("loader called %d times", n)
	}
}

// TestRefreshJoinersGetRedisValue: a caller that misses L1 while a
// refresh of the key runs (its local copy expired: MaxL1TTL is shorter than
// the TTL) joins the refresh and gets the fresh value Redis holds at once,
// not after the refresh's loader.
func TestRefreshJoinersGetRedisValue(t *testing.T) {
	srv := redistest.StartServer(t)
	var rec refreshRecorder
	c := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rj", TTL: 4 * time.Second,
		MaxL1TTL: 300 * time.Millisecond, RefreshAhead: 0.25, L1TTLJitter: NoJitter, Observer: rec.observer()})
	var l gatedLoader
	ctx := context.Background()
	if _, err := c.GetOrLoad(ctx, "k", l.load); err != nil {
		t.Fatal(err)
	}
	release := l.hold()
	defer close(release)
	waitRefreshStarted(t, c, "k", l.load, 1)
	redistest.WaitFor(t, 5*time.Second, "the refresh to call the loader", func() bool { return l.calls.Load() == 2 })
	// Within MaxL1TTL the local copy expires: the next reads miss L1 and
	// find the refresh's flight.
	joined := c.Stats().Loads.Callers
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Loads.Callers == joined {
		if time.Now().After(deadline) {
			t.Fatal("no read missed L1")
		}
		start := time.Now()
		v, err := c.GetOrLoad(ctx, "k", l.load)
		if d := time.Since(start); err != nil || v != "k@1" || d > time.Second {
			t.Fatalf("GetOrLoad during the refresh = %q, %v after %v; want Redis's k@1 at once", v, err, d)
		}
	}
	if n := l.calls.Load(); n != 2 {
		t.Fatalf("loader called %d times", n)
	}
}

// TestRefreshKeepsTags: a refresh started by a hit without WithTags keeps
// the tags of the entry it refreshes, so the refreshed value is still
// invalidated by InvalidateTag (it used to be stored untagged, and served
// after the tag was invalidated).
func TestRefreshKeepsTags(t *testing.T) {
	srv := redistest.StartServer(t)
	var rec refreshRecorder
	c := refreshCache(t, newClient(t, srv.Addr()), "rt", &rec)
	var l gatedLoader
	ctx := context.Background()
	if v, err := c.GetOrLoad(ctx, "k", l.load, WithTags("t")); err != nil || v != "k@1" {
		t.Fatalf("GetOrLoad = %q, %v", v, err)
	}
	c.hot.Wait()
	waitRefreshStarted(t, c, "k", l.load, 1) // hits without WithTags
	redistest.WaitFor(t, 5*time.Second, "the refresh to end", func() bool { return len(rec.outcomes()) == 1 })
	if got := rec.outcomes(); got[0] != RefreshFromLoader {
		t.Fatalf("outcome %v, want loader", got[0])
	}
	redistest.WaitFor(t, 5*time.Second, "the refreshed k@2 to be served", func() bool {
		v, _ := c.GetOrLoad(ctx, "k", l.load)
		return v == "k@2"
	})
	if err := c.InvalidateTag(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after InvalidateTag of the entry's tag = %q, %v; want ErrNotFound (the refresh dropped the tag)", v, err)
	}
}
