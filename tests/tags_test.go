package tests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// TestTagInvalidationFleet: 10,000 entries carrying one tag, loaded by three
// instances (a third each) and held in every instance's L1, beside 1,000
// untagged entries. One InvalidateTag makes every tagged entry a miss on
// every instance within the propagation bound (one message: the instances'
// copies check their tag's version on the next hit), and in Redis; the
// untagged entries stay local hits and are not reloaded.
func TestTagInvalidationFleet(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	const (
		tagged   = 10_000
		untagged = 1_000
		batch    = 500
	)
	tkeys := make([]string, tagged)
	for i := range tkeys {
		tkeys[i] = fmt.Sprintf("e:%05d", i)
	}
	ukeys := make([]string, untagged)
	for i := range ukeys {
		ukeys[i] = fmt.Sprintf("u:%04d", i)
	}
	var (
		gen                    atomic.Int64 // the database's generation: values are key@gen
		taggedLoads, ctrlLoads atomic.Int64
	)
	gen.Store(1)
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		out := make(map[string]string, len(keys))
		for _, k := range keys {
			if strings.HasPrefix(k, "u:") {
				ctrlLoads.Add(1)
			} else {
				taggedLoads.Add(1)
			}
			out[k] = fmt.Sprintf("%s@%d", k, gen.Load())
		}
		return out, nil
	}
	cfg := func() tiered.Config[string] {
		return tiered.Config[string]{
			Redis:        newClient(t, srv.Addr(), clientTimeouts{dial: time.Second, io: 5 * time.Second}),
			Namespace:    "tagfleet",
			TTL:          time.Hour,
			MaxL1TTL:     time.Hour, // only the invalidation can end these copies
			RedisTimeout: 5 * time.Second,
		}
	}
	caches := make([]*tiered.Cache[string], 3)
	for i := range caches {
		caches[i] = newCache(t, cfg())
	}
	inBatches := func(keys []string, fn func([]string) error) {
		t.Helper()
		for lo := 0; lo < len(keys); lo += batch {
			if err := fn(keys[lo:min(lo+batch, len(keys))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Each instance loads its third of the tagged entries.
	for i, c := range caches {
		part := tkeys[i*tagged/3 : (i+1)*tagged/3]
		inBatches(part, func(ks []string) error {
			_, err := c.GetManyOrLoad(ctx, ks, load, tiered.WithTags("fleet"))
			return err
		})
	}
	all := append(append([]string{}, tkeys...), ukeys...)
	for i, c := range caches {
		// Every instance holds every entry in L1: a sweep of all of them
		// is answered by L1 alone (fills reach ristretto asynchronously).
		waitFor(t, 30*time.Second, fmt.Sprintf("instance %d to hold all %d entries in L1", i, len(all)), func() bool {
			before := c.Stats().L1.Hits
			inBatches(all, func(ks []string) error {
				m, err := c.GetManyOrLoad(ctx, ks, load)
				if err == nil && len(m) != len(ks) {
					err = fmt.Errorf("GetManyOrLoad: %d of %d values", len(m), len(ks))
				}
				return err
			})
			return c.Stats().L1.Hits-before == uint64(len(all))
		})
	}
	if n := taggedLoads.Load(); n != tagged {
		t.Fatalf("tagged entries loaded %d times before the invalidation, want %d (each once, by one instance)", n, tagged)
	}
	ctrlBefore := ctrlLoads.Load()

	gen.Store(2) // the database changes; the cache is told by the tag alone
	if err := caches[0].InvalidateTag(ctx, "fleet"); err != nil {
		t.Fatal(err)
	}
	acked := time.Now()
	// The last tagged key stands for them all: once an instance has heard
	// the message, every copy it holds checks the tag's new version.
	probe := tkeys[tagged-1]
	took := make([]time.Duration, len(caches))
	for i, c := range caches {
		waitFor(t, repairBound, fmt.Sprintf("instance %d to stop serving %s@1", i, probe), func() bool {
			v, err := c.Get(ctx, probe)
			if errors.Is(err, tiered.ErrNotFound) || err == nil && v != probe+"@1" {
				took[i] = time.Since(acked)
				return true
			}
			return false
		})
	}
	t.Logf("InvalidateTag of %d entries on %d instances: a miss on each %v after it returned (bound %v)", tagged, len(caches), took, propagationBound)
	for i, d := range took {
		if d > propagationBound {
			t.Errorf("instance %d served the invalidated entries for %v, beyond the bound %v", i, d, propagationBound)
		}
	}
	// Now no instance serves any tagged entry's old value, and neither
	// does Redis (a new instance, with an empty L1); the untagged entries
	// are still local hits. (A reload below publishes invalidations of the
	// reloaded keys, which may cost other keys a local copy: see l1's
	// generation slots.)
	fresh := newCache(t, cfg())
	for i, c := range append(caches, fresh) {
		hits := c.Stats().L1.Hits
		stale := 0
		inBatches(tkeys, func(ks []string) error {
			m, err := c.GetMany(ctx, ks)
			for k, v := range m {
				if v != k+"@2" {
					stale++
				}
			}
			return err
		})
		if h := c.Stats().L1.Hits - hits; stale > 0 || h != 0 {
			t.Errorf("instance %d (3: a new one) after the invalidation: %d old values served, %d L1 hits of tagged entries; want none", i, stale, h)
		}
		if i == len(caches) {
			break
		}
		hits = c.Stats().L1.Hits
		inBatches(ukeys, func(ks []string) error {
			m, err := c.GetMany(ctx, ks)
			for k, v := range m {
				if v != k+"@1" {
					return fmt.Errorf("untagged %s = %q, want %s@1", k, v, k)
				}
			}
			if err == nil && len(m) != len(ks) {
				err = fmt.Errorf("untagged entries: %d of %d found", len(m), len(ks))
			}
			return err
		})
		if h := c.Stats().L1.Hits - hits; h != untagged {
			t.Errorf("instance %d: %d of the %d untagged entries were local hits after the invalidation; want all (L1 %+v)", i, h, untagged, c.Stats().L1)
		}
	}
	for i, c := range caches {
		got := 0
		inBatches(tkeys, func(ks []string) error {
			m, err := c.GetManyOrLoad(ctx, ks, load, tiered.WithTags("fleet"))
			for k, v := range m {
				if v == k+"@2" {
					got++
				}
			}
			return err
		})
		if got != tagged {
			t.Errorf("instance %d: GetManyOrLoad after the invalidation returned %d new values of %d", i, got, tagged)
		}
		inBatches(ukeys, func(ks []string) error {
			m, err := c.GetManyOrLoad(ctx, ks, load)
			for k, v := range m {
				if v != k+"@1" {
					return fmt.Errorf("untagged %s = %q after the reload, want %s@1", k, v, k)
				}
			}
			return err
		})
	}
	if n := ctrlLoads.Load() - ctrlBefore; n != 0 {
		t.Errorf("the untagged entries were loaded %d times after the invalidation; want 0", n)
	}
	t.Logf("tagged entries reloaded after the invalidation: %d loader calls over the fleet for %d entries", taggedLoads.Load()-tagged, tagged)
}
