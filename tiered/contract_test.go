package tiered

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// Tests of consistency-contract claims (README "The consistency contract in
// plain words", and the package documentation) that no other test asserted
// on its own. docs/DESIGN.md, "The contract and its tests", maps every
// claim to its tests.

// blockedLoad is a loader that reports when it has read the "database"
// (the value old) and returns it only once release is closed, so that a
// test can run a write between the load's read and its return.
type blockedLoad struct {
	read    chan struct{} // closed by the loader once it has read old
	release chan struct{} // closed by the test to let the loader return
}

func newBlockedLoad() *blockedLoad {
	return &blockedLoad{read: make(chan struct{}), release: make(chan struct{})}
}

func (b *blockedLoad) load(context.Context, string) (string, error) {
	close(b.read)
	<-b.release
	return "old", nil
}

// startLoad runs c.GetOrLoad(ctx, key, bl.load) on a goroutine, waits until
// the loader has read the old value, and returns a function that releases
// the loader and returns the call's result.
func startLoad(t *testing.T, ctx context.Context, c *Cache[string], key string, bl *blockedLoad) func() (string, error) {
	t.Helper()
	type result struct {
		v   string
		err error
	}
	res := make(chan result, 1)
	go func() {
		v, err := c.GetOrLoad(ctx, key, bl.load)
		res <- result{v, err}
	}()
	select {
	case <-bl.read:
	case <-time.After(5 * time.Second):
		t.Fatalf("the loader of %q was not called within 5s", key)
	}
	return func() (string, error) {
		close(bl.release)
		select {
		case r := <-res:
			return r.v, r.err
		case <-time.After(5 * time.Second):
			t.Fatalf("GetOrLoad(%q) did not return within 5s of its loader's release", key)
			return "", nil
		}
	}
}

// TestContractLoadRacingWriteNotKept: "A load that races with an update
// cannot bring the old value back." A load reads the old value from the
// database; a write or delete of the key lands before the load returns. The
// three mechanisms each get a case in which the other two cannot help:
//
//   - fill ticket: the load hears the write's invalidation, and the written
//     value has expired from Redis by the time the load returns, so a
//     write-back into the absent key would succeed;
//   - compare-and-set: the load never hears the write (its instance rejects
//     the writer's messages: another HMAC key, anti-entropy off), so its
//     ticket stays valid; Redis holds the newer value;
//   - tombstone: as above, but the write is a Delete of a key that was
//     absent when the load read it.
//
// In every case the loaded old value may be returned to the load's own
// caller, but is kept neither in the loading instance's L1 nor in Redis.
func TestContractLoadRacingWriteNotKept(t *testing.T) {
	for _, lc := range leaderContexts(t) {
		t.Run(lc.name, func(t *testing.T) {
			t.Run("ticket", func(t *testing.T) {
				ctx := context.Background()
				mr := miniredis.RunT(t)
				a := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "race"})
				b := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "race"})
				bl := newBlockedLoad()
				finish := startLoad(t, lc.ctx, b, "k", bl)
				if err := a.Set(ctx, "k", "new", WithTTL(time.Second)); err != nil {
					t.Fatal(err)
				}
				eventually(t, "B to apply A's invalidation", func() bool { return b.Stats().Invalidation.Applied >= 1 })
				mr.FastForward(2 * time.Second) // "new" expires: the key is absent again
				if mr.Exists("race:k") {
					t.Fatalf("race:k still in Redis after its TTL")
				}
				if v, err := finish(); err != nil || v != "old" {
					t.Fatalf("the racing load's own caller: %q %v, want the loaded value old", v, err)
				}
				if mr.Exists("race:k") {
					t.Errorf("the overtaken load wrote its value back into Redis: %q", mustGet(mr, "race:k"))
				}
				if v, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
					t.Errorf("B after the overtaken load: %q %v, want ErrNotFound (the old value kept nowhere)", v, err)
				}
				if n := b.Stats().Loads.Conflicts; n != 1 {
					t.Errorf("B's conflicts: %d, want 1", n)
				}
			})

			deaf := func(t *testing.T, ns string) (a, b *Cache[string], mr *miniredis.Miniredis) {
				mr = miniredis.RunT(t)
				a = newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: ns, HMACKey: []byte("writer's key")})
				b = newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: ns, HMACKey: []byte("loader's key"),
					AntiEntropyInterval: -1})
				return a, b, mr
			}
			// noRepair checks that B heard A's message only as a reject: no
			// invalidation or repair touched B's L1, so its fill ticket stayed
			// valid and only Redis could refuse the load.
			noRepair := func(t *testing.T, b *Cache[string]) {
				t.Helper()
				st := b.Stats()
				if st.Invalidation.Applied != 0 || st.L1.Invalidated != 0 || st.L1.EpochBumps != 0 {
					t.Fatalf("B applied %d invalidations, invalidated %d keys, bumped its epoch %d times; want none (the test needs a valid ticket)",
						st.Invalidation.Applied, st.L1.Invalidated, st.L1.EpochBumps)
				}
			}

			t.Run("compare-and-set", func(t *testing.T) {
				ctx := context.Background()
				a, b, _ := deaf(t, "cas")
				bl := newBlockedLoad()
				finish := startLoad(t, lc.ctx, b, "k", bl)
				if err := a.Set(ctx, "k", "new"); err != nil {
					t.Fatal(err)
				}
				eventually(t, "B to reject A's message", func() bool { return b.Stats().Invalidation.AuthRejects >= 1 })
				if v, err := finish(); err != nil || v != "old" {
					t.Fatalf("the racing load's own caller: %q %v, want the loaded value old", v, err)
				}
				noRepair(t, b)
				if v, err := b.Get(ctx, "k"); err != nil || v != "new" {
					t.Errorf("B after the overtaken load: %q %v, want new", v, err)
				}
				if v, err := a.Get(ctx, "k"); err != nil || v != "new" {
					t.Errorf("A after B's overtaken load: %q %v, want new", v, err)
				}
				if n := b.Stats().Loads.Conflicts; n != 1 {
					t.Errorf("B's conflicts: %d, want 1", n)
				}
			})

			t.Run("tombstone", func(t *testing.T) {
				ctx := context.Background()
				a, b, mr := deaf(t, "tomb")
				bl := newBlockedLoad()
				finish := startLoad(t, lc.ctx, b, "k", bl)
				if err := a.Delete(ctx, "k"); err != nil {
					t.Fatal(err)
				}
				eventually(t, "B to reject A's message", func() bool { return b.Stats().Invalidation.AuthRejects >= 1 })
				if v, err := finish(); err != nil || v != "old" {
					t.Fatalf("the racing load's own caller: %q %v, want the loaded value old", v, err)
				}
				noRepair(t, b)
				if v, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
					t.Errorf("B after the overtaken load: %q %v, want ErrNotFound", v, err)
				}
				if v, err := a.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
					t.Errorf("A after B's overtaken load: %q %v, want ErrNotFound", v, err)
				}
				if !mr.Exists("tomb:k") {
					t.Errorf("the tombstone is gone")
				}
				if n := b.Stats().Loads.Conflicts; n != 1 {
					t.Errorf("B's conflicts: %d, want 1", n)
				}
			})
		})
	}
}

func mustGet(mr *miniredis.Miniredis, key string) string {
	v, _ := mr.Get(key)
	return v
}

// TestContractFailSafeOnlyFromRedis: "With FailSafeMaxStale set, a recently
// expired value that Redis still holds is served if the loader fails
// (nothing stale is served while Redis is down)." An instance that has read
// the value while it was fresh, and so could have kept it, returns the
// loader's error once Redis is down; with Redis up, the same stale value is
// served.
func TestContractFailSafeOnlyFromRedis(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "fs", FailSafeMaxStale: time.Hour,
			RedisTimeout: 100 * time.Millisecond}
	}
	w, r, s := newCache(t, cfg()), newCache(t, cfg()), newCache(t, cfg())
	errDB := errors.New("database down")
	failing := func(context.Context, string) (string, error) { return "", errDB }

	const fresh = 2 * time.Second // long enough for a busy machine to read it fresh
	written := time.Now()
	if err := w.Set(ctx, "k", "old", WithTTL(fresh)); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(ctx, "k"); err != nil || v != "old" {
		t.Fatalf("R while the value is fresh: %q %v", v, err)
	}
	if time.Since(written) >= fresh {
		t.Fatalf("the machine took %v to read a value fresh for %v; the test needs R to have read it fresh", time.Since(written), fresh)
	}
	for time.Since(written) < fresh+50*time.Millisecond { // the wall clock passing the soft expiry, not a wait for an event
		time.Sleep(10 * time.Millisecond)
	}
	// Redis up: the stale value is served instead of the loader's error.
	if v, err := s.GetOrLoad(ctx, "k", failing); err != nil || v != "old" {
		t.Fatalf("S with Redis up and a failing loader: %q %v, want the stale value old", v, err)
	}
	if n := s.Stats().Loads.StaleServed; n != 1 {
		t.Fatalf("S stale served: %d, want 1", n)
	}

	mr.Close() // Redis down
	v, err := r.GetOrLoad(ctx, "k", failing)
	if !errors.Is(err, errDB) || v != "" {
		t.Errorf("R with Redis down and a failing loader: %q %v, want the loader's error and no value", v, err)
	}
	if n := r.Stats().Loads.StaleServed; n != 0 {
		t.Errorf("R stale served while Redis is down: %d, want 0", n)
	}
}

// TestContractMaxL1TTLBoundsUndetectedChange: "If every detector failed, a
// local copy would still live at most MaxL1TTL." B never hears A's write
// (it rejects A's messages, and its anti-entropy is off), yet stops serving
// its copy once MaxL1TTL has passed, though the Redis TTL is an hour.
func TestContractMaxL1TTLBoundsUndetectedChange(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	const maxL1 = 300 * time.Millisecond
	a := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "max", TTL: time.Hour, HMACKey: []byte("a")})
	b := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "max", TTL: time.Hour, HMACKey: []byte("b"),
		MaxL1TTL: maxL1, AntiEntropyInterval: -1})
	if err := a.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	filled := time.Now()
	if v, err := b.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("B: %q %v", v, err)
	}
	b.local.(interface{ Wait() }).Wait()
	if it, ok := b.local.Get("k"); !ok || it.v != "v1" {
		t.Fatalf("B's L1 does not hold v1 after the read (the test needs a local copy)")
	}
	if err := a.Set(ctx, "k", "v2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B to reject A's message", func() bool { return b.Stats().Invalidation.AuthRejects >= 1 })
	const slack = 2 * time.Second // the coarse clock's tick and a loaded machine
	for {
		v, err := b.Get(ctx, "k")
		if err == nil && v == "v2" {
			break
		}
		if time.Since(filled) > maxL1+slack {
			t.Fatalf("B still serves %q (%v) %v after its fill; MaxL1TTL is %v", v, err, time.Since(filled), maxL1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := b.Stats(); st.Invalidation.Applied != 0 || st.L1.EpochBumps != 0 {
		t.Errorf("B applied %d invalidations and bumped its epoch %d times; want none (no detector may end the copy here)",
			st.Invalidation.Applied, st.L1.EpochBumps)
	}
}

// TestContractUnhealthyL1TTL: "While the stream is unhealthy, local copies
// live at most UnhealthyL1TTL" (negative: no local copies). B's Redis user
// may not subscribe to any channel, so B's stream never becomes healthy and
// B never hears A's writes; B's copies still end within UnhealthyL1TTL,
// though MaxL1TTL is a minute.
func TestContractUnhealthyL1TTL(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	t.Cleanup(func() { _ = admin.Close() })
	if err := admin.Do(ctx, "ACL", "SETUSER", "nochannels", "on", ">pw", "~*", "resetchannels", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	deafClient := func(t *testing.T) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nochannels", Password: "pw", ContextTimeoutEnabled: true,
			MaxRetries: 1, DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	for _, tc := range []struct {
		name      string
		unhealthy time.Duration
	}{{"capped", 300 * time.Millisecond}, {"skipped", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := "unh-" + tc.name
			a := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: ns, TTL: time.Hour})
			b := newCache(t, Config[string]{Redis: deafClient(t), Namespace: ns, TTL: time.Hour, MaxL1TTL: time.Minute,
				UnhealthyL1TTL: tc.unhealthy, StartTimeout: 100 * time.Millisecond})
			if err := a.Set(ctx, "k", "v1"); err != nil {
				t.Fatal(err)
			}
			filled := time.Now()
			if v, err := b.Get(ctx, "k"); err != nil || v != "v1" {
				t.Fatalf("B: %q %v", v, err)
			}
			if b.bus.Health().Healthy {
				t.Fatalf("B's stream is healthy; the test needs a user that may not subscribe")
			}
			b.local.(interface{ Wait() }).Wait()
			_, held := b.local.Get("k")
			if tc.unhealthy < 0 {
				if held || b.Stats().L1.Fills != 0 {
					t.Fatalf("B filled its L1 while unhealthy with UnhealthyL1TTL < 0 (held %v, fills %d)", held, b.Stats().L1.Fills)
				}
			} else if !held && time.Since(filled) < tc.unhealthy {
				t.Fatalf("B's L1 does not hold v1 after the read (the test needs a local copy)")
			}
			if err := a.Set(ctx, "k", "v2"); err != nil {
				t.Fatal(err)
			}
			const slack = 2 * time.Second
			for {
				v, err := b.Get(ctx, "k")
				if err == nil && v == "v2" {
					break
				}
				if time.Since(filled) > max(tc.unhealthy, 0)+slack {
					t.Fatalf("B still serves %q (%v) %v after its fill; UnhealthyL1TTL is %v", v, err, time.Since(filled), tc.unhealthy)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if b.bus.Health().Healthy || b.Stats().Invalidation.Applied != 0 {
				t.Errorf("B's stream became healthy or applied an invalidation; the copy had to end by its TTL")
			}
		})
	}
}

// TestContractControlKeysCarryNoTTL: "The cache's own control keys
// (sequence and epoch keys) never carry a TTL; every value and tombstone it
// writes does." After every kind of write and an anti-entropy round, every
// key under the data prefix "NS:" has a TTL and every other key the Cache
// made has none.
func TestContractControlKeysCarryNoTTL(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "ctl", NegativeTTL: time.Minute,
		AntiEntropyInterval: 20 * time.Millisecond})
	load := func(_ context.Context, k string) (string, error) {
		if strings.HasPrefix(k, "missing") {
			return "", ErrNotFound
		}
		return "loaded", nil
	}
	steps := []func() error{
		func() error { return c.Set(ctx, "set", "v") },
		func() error { return c.SetMany(ctx, map[string]string{"v1": "a", "v2": "b"}, WithVersion(7)) },
		func() error { return c.Delete(ctx, "set") },
		func() error { return c.DeleteMany(ctx, []string{"v1"}, WithVersion(8)) },
		func() error { _, err := c.GetOrLoad(ctx, "loaded", load); return err },
		func() error {
			_, err := c.GetOrLoad(ctx, "missing", load)
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			return err
		},
		func() error { _, err := c.GetManyOrLoad(ctx, []string{"b1", "b2"}, batchOf(load)); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	eventually(t, "an anti-entropy round", func() bool { return c.Stats().Invalidation.AERounds >= 1 })
	var data, control int
	for _, k := range mr.Keys() {
		ttl := mr.TTL(k)
		if strings.HasPrefix(k, "ctl:") {
			data++
			if ttl <= 0 {
				t.Errorf("data key %q has no TTL", k)
			}
			continue
		}
		control++
		if ttl != 0 {
			t.Errorf("control key %q has TTL %v, want none", k, ttl)
		}
	}
	if data < 7 || control < 2 {
		t.Fatalf("found %d data keys and %d control keys in %v; want at least 7 and 2 (sequence and epoch keys)", data, control, mr.Keys())
	}
}

// batchOf turns a single-key loader into a BatchLoader.
func batchOf(load Loader[string]) BatchLoader[string] {
	return func(ctx context.Context, keys []string) (map[string]string, error) {
		out := make(map[string]string, len(keys))
		for _, k := range keys {
			v, err := load(ctx, k)
			if err == nil {
				out[k] = v
			} else if !errors.Is(err, ErrNotFound) {
				return nil, err
			}
		}
		return out, nil
	}
}
