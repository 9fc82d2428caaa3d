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

// TestLoadClaimOneLoadForTheFleet: three instances with 300 goroutines each
// miss one cold key at once; with LoadClaim on, the loader runs exactly
// once in the whole fleet, and every caller gets its value.
func TestLoadClaimOneLoadForTheFleet(t *testing.T) {
	srv := redistest.StartServer(t)
	for round := range 3 {
		var calls atomic.Int64
		load := func(ctx context.Context, key string) (string, error) {
			calls.Add(1)
			time.Sleep(200 * time.Millisecond)
			return "row-" + key, nil
		}
		var caches [3]*tiered.Cache[string]
		for i := range caches {
			caches[i] = newCache(t, tiered.Config[string]{
				Redis: newClient(t, srv.Addr(), healthyTimeouts), Namespace: "claim",
				LoadClaim: time.Second, LoadClaimWait: 5 * time.Second,
			})
		}
		key := "cold-" + string(rune('a'+round))
		start := make(chan struct{})
		var wg sync.WaitGroup
		var bad atomic.Int64
		for _, c := range caches {
			for range 300 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					v, err := c.GetOrLoad(context.Background(), key, load)
					if err != nil || v != "row-"+key {
						bad.Add(1)
						t.Errorf("GetOrLoad = %q, %v", v, err)
					}
				}()
			}
		}
		close(start)
		wg.Wait()
		var st [3]tiered.ClaimStats
		for i, c := range caches {
			st[i] = c.Stats().Loads.Claims
		}
		t.Logf("round %d: loader calls %d; claims per instance %+v", round, calls.Load(), st)
		if n := calls.Load(); n != 1 {
			t.Fatalf("round %d: loader called %d times for 900 callers on 3 instances, want 1", round, n)
		}
	}
}

// TestLoadClaimOwnerDies: the instance that took the claim stops answering
// mid-load (its connection to Redis is cut, so it can neither renew nor
// release the claim); the claim expires after its lease, one of the others
// takes it over and loads, and every waiting caller gets a value within
// the wait bound.
func TestLoadClaimOwnerDies(t *testing.T) {
	srv := redistest.StartServer(t)
	proxy := redistest.StartProxy(t, srv.Addr())
	const lease = 500 * time.Millisecond
	cfg := func(addr string) tiered.Config[string] {
		return tiered.Config[string]{Redis: newClient(t, addr, faultTimeouts), Namespace: "claimdie",
			LoadClaim: lease, LoadClaimWait: 5 * time.Second, BreakerFailures: tiered.NoBreaker}
	}
	owner := newCache(t, cfg(proxy.Addr()))
	others := []*tiered.Cache[string]{newCache(t, cfg(srv.Addr())), newCache(t, cfg(srv.Addr()))}
	ownerLoading := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	go func() {
		_, _ = owner.GetOrLoad(context.Background(), "k", func(ctx context.Context, key string) (string, error) {
			close(ownerLoading)
			<-release
			return "from-owner", nil
		})
	}()
	<-ownerLoading
	if st := owner.Stats().Loads.Claims; st.Won != 1 {
		t.Fatalf("owner claims %+v, want it to hold the claim", st)
	}
	proxy.Close() // the owner is cut off: no renewal, no release
	cut := time.Now()
	var calls atomic.Int64
	var wg sync.WaitGroup
	for _, c := range others {
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.GetOrLoad(context.Background(), "k", func(ctx context.Context, key string) (string, error) {
					calls.Add(1)
					return "from-survivor", nil
				})
				if err != nil || v != "from-survivor" {
					t.Errorf("GetOrLoad = %q, %v", v, err)
				}
			}()
		}
	}
	wg.Wait()
	took := time.Since(cut)
	var st [2]tiered.ClaimStats
	for i, c := range others {
		st[i] = c.Stats().Loads.Claims
	}
	t.Logf("survivors served after %v (lease %v); loader calls %d; claims %+v", took, lease, calls.Load(), st)
	if n := calls.Load(); n != 1 {
		t.Errorf("survivors called the loader %d times, want 1 (one takes the expired claim over)", n)
	}
	if took > 5*time.Second {
		t.Errorf("survivors waited %v, beyond the wait bound", took)
	}
	if st[0].Expired+st[1].Expired != 1 {
		t.Errorf("take-overs %d, want 1", st[0].Expired+st[1].Expired)
	}
}

// TestLoadClaimBatches: three instances whose GetManyOrLoad callers ask for
// overlapping sets of 50 cold keys at once (and single-key callers among
// them): with LoadClaim on, every key is loaded exactly once in the fleet,
// and every caller gets every value.
func TestLoadClaimBatches(t *testing.T) {
	srv := redistest.StartServer(t)
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = "b" + string(rune('A'+i/26)) + string(rune('a'+i%26))
	}
	var mu sync.Mutex
	loads := map[string]int{}
	var calls atomic.Int64
	batchLoad := func(ctx context.Context, ks []string) (map[string]string, error) {
		calls.Add(1)
		time.Sleep(100 * time.Millisecond)
		out := make(map[string]string, len(ks))
		mu.Lock()
		for _, k := range ks {
			loads[k]++
			out[k] = "row-" + k
		}
		mu.Unlock()
		return out, nil
	}
	load := func(ctx context.Context, k string) (string, error) {
		m, err := batchLoad(ctx, []string{k})
		return m[k], err
	}
	var caches [3]*tiered.Cache[string]
	for i := range caches {
		caches[i] = newCache(t, tiered.Config[string]{
			Redis: newClient(t, srv.Addr(), healthyTimeouts), Namespace: "claimb",
			LoadClaim: time.Second, LoadClaimWait: 5 * time.Second,
		})
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for ci, c := range caches {
		want := keys[ci*10 : ci*10+30] // 0-29, 10-39, 20-49
		for g := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if g%5 == 0 { // some single-key callers among the batches
					k := want[g]
					if v, err := c.GetOrLoad(context.Background(), k, load); err != nil || v != "row-"+k {
						t.Errorf("GetOrLoad(%s) = %q, %v", k, v, err)
					}
					return
				}
				m, err := c.GetManyOrLoad(context.Background(), want, batchLoad)
				if err != nil {
					t.Errorf("GetManyOrLoad: %v", err)
					return
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
	var st [3]tiered.ClaimStats
	for i, c := range caches {
		st[i] = c.Stats().Loads.Claims
	}
	t.Logf("loader calls %d for %d keys; claims per instance %+v", calls.Load(), len(keys), st)
	for _, k := range keys {
		if loads[k] != 1 {
			t.Errorf("key %s loaded %d times in the fleet, want 1", k, loads[k])
		}
	}
}
