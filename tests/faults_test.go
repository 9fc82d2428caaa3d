package tests

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/tiered"
)

// faultConfig is the configuration of the fault suites: short Redis
// timeouts and repairs, long L1 TTLs (so that only the repair mechanisms,
// not expiry, end stale local copies).
func faultConfig(addr string, t *testing.T) tiered.Config[string] {
	return tiered.Config[string]{
		Redis:               newClient(t, addr, faultTimeouts),
		Namespace:           "fault",
		MaxL1TTL:            time.Minute,
		UnhealthyL1TTL:      time.Second,
		RedisTimeout:        100 * time.Millisecond,
		LoadTimeout:         500 * time.Millisecond,
		StartTimeout:        time.Second,
		BreakerFailures:     3,
		BreakerCooldown:     300 * time.Millisecond,
		AntiEntropyInterval: 500 * time.Millisecond,
	}
}

// callBudget bounds every call in the fault suites: a flight is bounded by
// LoadTimeout (500ms); the slack covers the race detector and the machine.
const callBudget = time.Second

// latencies tracks the slowest call of a kind and the calls over budget.
type latencies struct {
	mu    sync.Mutex // guards the fields below
	calls int
	worst time.Duration
	over  []string
}

func (l *latencies) record(what string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	l.worst = max(l.worst, d)
	if d > callBudget && len(l.over) < 5 {
		l.over = append(l.over, fmt.Sprintf("%s took %v", what, d))
	}
}

// TestRedisKilledUnderLoad kills Redis for 5 s while two instances serve
// warm keys and misses, then restarts it (empty, new run id).
func TestRedisKilledUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("kills Redis for 5 s")
	}
	srv := redistest.StartServer(t)
	ctx := context.Background()
	var loaderCalls atomic.Int64
	load := func(_ context.Context, key string) (string, error) {
		loaderCalls.Add(1)
		return "loaded:" + key, nil
	}
	a := newCache(t, faultConfig(srv.Addr(), t))
	b := newCache(t, faultConfig(srv.Addr(), t))
	warm := make([]string, 20)
	for i := range warm {
		warm[i] = fmt.Sprintf("warm%02d", i)
		for _, c := range []*tiered.Cache[string]{a, b} {
			if v, err := c.GetOrLoad(ctx, warm[i], load); err != nil || v != "loaded:"+warm[i] {
				t.Fatalf("warm-up of %s: %q, %v", warm[i], v, err)
			}
			holdInL1(t, c, warm[i])
		}
	}

	srv.Kill()
	killed := time.Now()
	hitsBefore := a.Stats().L1.Hits + b.Stats().L1.Hits
	var (
		stop                        atomic.Bool
		wg                          sync.WaitGroup
		warmLat, missLat            latencies
		getLat, setLat              latencies
		failures                    atomic.Int64
		firstFailure                atomic.Value
		misses, writes, unavailable atomic.Int64
	)
	fail := func(format string, args ...any) {
		if failures.Add(1) == 1 {
			firstFailure.Store(fmt.Sprintf(format, args...))
		}
	}
	for ci, c := range []*tiered.Cache[string]{a, b} {
		for r := 0; r < 2; r++ { // readers of warm keys: must succeed
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					k := warm[(i+r)%len(warm)]
					start := time.Now()
					v, err := c.GetOrLoad(ctx, k, load)
					warmLat.record("GetOrLoad "+k, time.Since(start))
					if err != nil || v != "loaded:"+k {
						fail("instance %d GetOrLoad(%s) while Redis is down: %q, %v", ci, k, v, err)
					}
					time.Sleep(time.Millisecond)
				}
			}()
		}
		wg.Add(2)
		go func() { // misses: go to the loader
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k := fmt.Sprintf("miss-%d-%d", ci, i)
				start := time.Now()
				v, err := c.GetOrLoad(ctx, k, load)
				missLat.record("GetOrLoad "+k, time.Since(start))
				misses.Add(1)
				if err != nil || v != "loaded:"+k {
					fail("instance %d GetOrLoad(%s) of a miss while Redis is down: %q, %v", ci, k, v, err)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		go func() { // Get without a loader: a value or an error, never a hang
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k := warm[i%len(warm)]
				start := time.Now()
				v, err := c.Get(ctx, k)
				getLat.record("Get "+k, time.Since(start))
				if err == nil && v != "loaded:"+k {
					fail("instance %d Get(%s) = %q", ci, k, v)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	wg.Add(1)
	go func() { // writes: refused promptly, never acknowledged
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			start := time.Now()
			err := a.Set(ctx, fmt.Sprintf("w%d", i), "x")
			setLat.record("Set", time.Since(start))
			writes.Add(1)
			switch {
			case errors.Is(err, tiered.ErrUnavailable):
				unavailable.Add(1)
			case err == nil:
				fail("Set acknowledged while Redis is down")
			default:
				fail("Set while Redis is down: %v, want ErrUnavailable", err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(5 * time.Second) // the outage; the load runs meanwhile
	stop.Store(true)
	wg.Wait()
	outageHits := a.Stats().L1.Hits + b.Stats().L1.Hits - hitsBefore

	if n := failures.Load(); n > 0 {
		t.Errorf("%d failed calls while Redis was down; first: %v", n, firstFailure.Load())
	}
	for _, l := range []struct {
		name string
		l    *latencies
	}{{"warm GetOrLoad", &warmLat}, {"miss GetOrLoad", &missLat}, {"Get", &getLat}, {"Set", &setLat}} {
		t.Logf("outage: %d %s calls, slowest %v", l.l.calls, l.name, l.l.worst)
		if len(l.l.over) > 0 {
			t.Errorf("%s calls over the %v budget: %v", l.name, callBudget, l.l.over)
		}
	}
	if outageHits == 0 {
		t.Errorf("no L1 hits while Redis was down")
	}
	st := a.Stats()
	t.Logf("outage: %d L1 hits, %d misses loaded, %d/%d writes refused with ErrUnavailable; A: breaker opened %d times, %d L2 calls skipped, epoch bumps %d",
		outageHits, misses.Load(), unavailable.Load(), writes.Load(), st.L2.BreakerOpened, st.L2.Skipped, st.L1.EpochBumps)

	// Recovery.
	bumpsBefore := b.Stats().L1.EpochBumps
	aeBefore := restartDetections(b)
	srv.Restart()
	restarted := time.Now()
	t.Logf("Redis down for %v", restarted.Sub(killed))
	bump := waitFor(t, repairBound, "B to repair after the restart (epoch bump)", func() bool {
		return b.Stats().L1.EpochBumps > bumpsBefore
	})
	writeBack := waitFor(t, 10*time.Second, "a write to succeed after the restart", func() bool {
		return a.Set(ctx, warm[0], "after-restart") == nil
	})
	seen := waitFor(t, repairBound, "B to serve the value written after the restart", func() bool {
		v, err := b.Get(ctx, warm[0])
		return err == nil && v == "after-restart"
	})
	sinceRestart := time.Since(restarted)
	// Anti-entropy notices the restart by itself too (the namespace epoch
	// key is gone, the run id changed), which covers a restart that no
	// subscription noticed.
	waitFor(t, repairBound, "B's anti-entropy to detect the restart", func() bool {
		return restartDetections(b) > aeBefore
	})
	aeAfter := time.Since(restarted)
	// Healthy again: a second write propagates like any other.
	waitFor(t, repairBound, "B to hold the new value in L1", func() bool {
		_, ok := inL1(ctx, b, warm[0])
		return ok
	})
	if err := a.Set(ctx, warm[0], "second"); err != nil {
		t.Fatalf("Set after recovery: %v", err)
	}
	acked := time.Now()
	waitFor(t, repairBound, "B to serve the second write", func() bool {
		v, err := b.Get(ctx, warm[0])
		return err == nil && v == "second"
	})
	prop := time.Since(acked)
	inv := b.Stats().Invalidation
	t.Logf("recovery after restart: B's epoch bumped after %v; then a write was acknowledged after %v more, and B served it %v later (%v after the restart); B's anti-entropy saw the restart within %v; next write seen by B after %v; B's bus: %d disconnects, %d reconnects, invalidate-all by cause %v",
		bump, writeBack, seen, sinceRestart, aeAfter, prop, inv.Disconnects, inv.Reconnects, inv.InvalidateAll)
}

// restartDetections counts c's repairs caused by anti-entropy seeing a
// changed server: a lost epoch key or a new run id.
func restartDetections(c *tiered.Cache[string]) uint64 {
	n := c.Stats().Invalidation.InvalidateAll
	return n[invalidation.CauseEpoch] + n[invalidation.CauseServerChanged]
}

// TestPausedServer black-holes Redis (SIGSTOP) while A writes: every call
// stays bounded, and after the server resumes B serves what Redis holds
// within the repair bound.
func TestPausedServer(t *testing.T) {
	if testing.Short() {
		t.Skip("pauses Redis for 4 s")
	}
	srv := redistest.StartServer(t)
	ctx := context.Background()
	a := newCache(t, faultConfig(srv.Addr(), t))
	b := newCache(t, faultConfig(srv.Addr(), t))
	if err := a.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if v := holdInL1(t, b, "k"); v != "v1" {
		t.Fatalf("B holds %q, want v1", v)
	}
	stallsBefore := b.Stats().Invalidation.Stalls

	srv.Pause()
	paused := time.Now()
	start := time.Now()
	err := a.Set(ctx, "k", "v2") // reaches the paused server's socket; may run when it resumes
	if d := time.Since(start); d > callBudget {
		t.Errorf("Set on a paused server took %v, budget %v", d, callBudget)
	}
	if err == nil {
		t.Fatalf("Set acknowledged by a paused server")
	}
	var (
		lat        latencies
		stoppedOld time.Duration // when B stopped serving v1 from L1
	)
	for time.Since(paused) < 4*time.Second { // the pause; B is read meanwhile
		start := time.Now()
		v, err := b.Get(ctx, "k")
		lat.record("Get", time.Since(start))
		if stoppedOld == 0 && (err != nil || v != "v1") {
			stoppedOld = time.Since(paused)
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.Resume()
	resumed := time.Now()
	if len(lat.over) > 0 {
		t.Errorf("Get calls over the %v budget while Redis was paused: %v", callBudget, lat.over)
	}
	if s := b.Stats().Invalidation.Stalls; s == stallsBefore {
		t.Errorf("B's bus saw no stall in a 4 s black hole")
	}
	if stoppedOld == 0 || stoppedOld > repairBound {
		t.Errorf("B served its copy from before the black hole for %v of the pause, want at most %v", stoppedOld, repairBound)
	}

	// Whatever Redis holds now (v2 if the paused write ran on resume), B
	// converges to it; a fresh instance reads it from Redis.
	var truth string
	waitFor(t, repairBound, "a fresh instance to read Redis", func() bool {
		c, err := tiered.New(faultConfig(srv.Addr(), t))
		if err != nil {
			return false
		}
		defer c.Close()
		truth, err = c.Get(ctx, "k")
		return err == nil
	})
	waitFor(t, repairBound, "B to serve what Redis holds after the pause", func() bool {
		v, err := b.Get(ctx, "k")
		return err == nil && v == truth
	})
	conv := time.Since(resumed)
	// And writes propagate again.
	waitFor(t, repairBound, "a write to succeed after the pause", func() bool {
		return a.Set(ctx, "k", "v3") == nil
	})
	seen := waitFor(t, repairBound, "B to serve the write made after the pause", func() bool {
		v, err := b.Get(ctx, "k")
		return err == nil && v == "v3"
	})
	t.Logf("paused 4 s: slowest Get %v; B stopped serving its pre-pause copy %v into the pause; Redis held %q after resume; B converged %v after resume; next write seen after %v; B's bus: %d stalls, invalidate-all by cause %v",
		lat.worst, stoppedOld, truth, conv, seen, b.Stats().Invalidation.Stalls, b.Stats().Invalidation.InvalidateAll)
}

// TestLostInvalidation kills every pub/sub connection right before a write,
// so the write's invalidation reaches no subscriber: B must still stop
// serving the old value within the repair bound.
func TestLostInvalidation(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	a := newCache(t, faultConfig(srv.Addr(), t))
	b := newCache(t, faultConfig(srv.Addr(), t))
	for round := 1; round <= 3; round++ {
		old, next := fmt.Sprintf("v%d", round-1), fmt.Sprintf("v%d", round)
		if round == 1 {
			if err := a.Set(ctx, "k", old); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, repairBound, "B to hold "+old+" in L1", func() bool {
			v, ok := inL1(ctx, b, "k")
			return ok && v == old
		})
		if _, err := srv.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
			t.Fatalf("CLIENT KILL TYPE pubsub: %v", err)
		}
		if err := a.Set(ctx, "k", next); err != nil {
			t.Fatalf("Set: %v", err)
		}
		acked := time.Now()
		waitFor(t, repairBound, "B to serve the write whose invalidation was lost", func() bool {
			v, err := b.Get(ctx, "k")
			return err == nil && v == next
		})
		t.Logf("round %d: B served the new value %v after the write; B's bus: %d disconnects, %d reconnects, invalidate-all by cause %v",
			round, time.Since(acked), b.Stats().Invalidation.Disconnects, b.Stats().Invalidation.Reconnects, b.Stats().Invalidation.InvalidateAll)
	}
}

// TestForeignBytesRepaired has a foreign program overwrite a cached key in
// Redis with garbage: a new instance counts a decode error, calls its
// loader and repairs Redis, and its repair invalidates the other instances,
// which then read the repaired value.
func TestForeignBytesRepaired(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	a := newCache(t, faultConfig(srv.Addr(), t))
	b := newCache(t, faultConfig(srv.Addr(), t))
	var calls atomic.Int64
	loadAs := func(v string) tiered.Loader[string] {
		return func(context.Context, string) (string, error) {
			calls.Add(1)
			return v, nil
		}
	}
	if v, err := a.GetOrLoad(ctx, "k", loadAs("v1")); err != nil || v != "v1" {
		t.Fatalf("A: %q, %v", v, err)
	}
	if v, err := b.GetOrLoad(ctx, "k", loadAs("unused")); err != nil || v != "v1" {
		t.Fatalf("B: %q, %v", v, err)
	}
	holdInL1(t, b, "k")
	foreign := newClient(t, srv.Addr(), healthyTimeouts)
	if err := foreign.Set(ctx, "fault:k", "\x00not an envelope", 0).Err(); err != nil {
		t.Fatal(err)
	}
	calls.Store(0)
	c := newCache(t, faultConfig(srv.Addr(), t))
	if v, err := c.GetOrLoad(ctx, "k", loadAs("v2")); err != nil || v != "v2" {
		t.Fatalf("C over foreign bytes: %q, %v; want v2", v, err)
	}
	if st := c.Stats(); st.Loads.DecodeErrors != 1 || calls.Load() != 1 {
		t.Fatalf("C: decode errors %d, loader calls %d; want 1, 1", st.Loads.DecodeErrors, calls.Load())
	}
	// The repair was written with its invalidation: A and B drop v1 and
	// read v2 from Redis, without loading.
	for name, x := range map[string]*tiered.Cache[string]{"A": a, "B": b} {
		waitFor(t, repairBound, name+" to read the repaired value", func() bool {
			v, err := x.GetOrLoad(ctx, "k", loadAs("wrong"))
			return err == nil && v == "v2"
		})
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loader calls after the repair: %d, want 1", n)
	}
	raw, err := foreign.Get(ctx, "fault:k").Bytes()
	if err != nil || len(raw) == 0 || raw[0] == 0 {
		t.Errorf("Redis still holds the foreign bytes: %q, %v", raw, err)
	}
}
