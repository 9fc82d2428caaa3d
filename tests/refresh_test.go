package tests

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// TestRefreshAheadFleet runs a steady read load on one hot key from three
// instances while its TTL keeps running out, with refresh-ahead on: after
// the first load no reader waits for the loader (the slowest read stays far
// below the loader's duration), and the loader runs about once per refresh
// period for the whole fleet, not once per instance.
func TestRefreshAheadFleet(t *testing.T) {
	srv := redistest.StartServer(t)
	const (
		instances  = 3
		readers    = 2 // per instance
		ttl        = 2 * time.Second
		ahead      = 0.5 // due 1 s after each write
		loaderTime = 400 * time.Millisecond
		run        = 8 * time.Second
	)
	var calls atomic.Int64
	load := func(ctx context.Context, key string) (int64, error) {
		n := calls.Add(1)
		select {
		case <-time.After(loaderTime):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return n, nil
	}
	caches := make([]*tiered.Cache[int64], instances)
	for i := range caches {
		caches[i] = newCache(t, tiered.Config[int64]{
			Redis: newClient(t, srv.Addr(), healthyTimeouts), Namespace: "fleet",
			TTL: ttl, RefreshAhead: ahead, FailSafeRetryAfter: 200 * time.Millisecond,
		})
	}
	ctx := context.Background()
	for _, c := range caches { // warm-up: one load, then Redis hits
		if _, err := c.GetOrLoad(ctx, "hot", load); err != nil {
			t.Fatal(err)
		}
	}
	warm := calls.Load()
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		slowest atomic.Int64
		reads   atomic.Int64
		mu      sync.Mutex
		seen    = map[int64]bool{}
	)
	start := time.Now()
	for _, c := range caches {
		for range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					t0 := time.Now()
					v, err := c.GetOrLoad(ctx, "hot", load)
					d := int64(time.Since(t0))
					if err != nil {
						t.Errorf("GetOrLoad: %v", err)
						return
					}
					reads.Add(1)
					for s := slowest.Load(); d > s && !slowest.CompareAndSwap(s, d); s = slowest.Load() {
					}
					mu.Lock()
					seen[v] = true
					mu.Unlock()
					time.Sleep(time.Millisecond)
				}
			}()
		}
	}
	time.Sleep(run)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	loads := calls.Load() - warm
	var st [instances]tiered.RefreshStats
	for i, c := range caches {
		st[i] = c.Stats().Loads.Refreshes
	}
	t.Logf("%d reads in %v on %d instances; slowest %v (loader %v); loader calls %d (after %d for warm-up), values seen %d; refreshes per instance %+v",
		reads.Load(), elapsed, instances, time.Duration(slowest.Load()), loaderTime, loads, warm, len(seen), st)
	if s := time.Duration(slowest.Load()); s >= loaderTime/2 {
		t.Errorf("slowest read %v: a reader waited for the loader (%v)", s, loaderTime)
	}
	period := time.Duration(ahead * float64(ttl))
	if most := int64(elapsed/period) + 2; loads > most {
		t.Errorf("loader called %d times in %v: more than once per refresh period (%v) for the fleet (at most %d)", loads, elapsed, period, most)
	}
	if least := int64(elapsed / (period + loaderTime + ttl/2)); loads < least {
		t.Errorf("loader called %d times in %v, want at least %d: the key was not refreshed", loads, elapsed, least)
	}
	if len(seen) < 3 {
		t.Errorf("readers saw %d values, want the refreshed ones too", len(seen))
	}
}
