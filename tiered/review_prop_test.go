package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestReviewVersionedInterleavingsFailSafeNegativeBatch is
// TestVersionedRandomInterleavings with FailSafeMaxStale and NegativeTTL set
// (envelopes with soft and hard expiries, negative entries from loads) and
// readers that also use GetManyOrLoad (the batch write-back path).
func TestReviewVersionedInterleavingsFailSafeNegativeBatch(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 1))
			rc := srv.client(t)
			ctx := context.Background()
			var caches []*Cache[string]
			for range 3 {
				caches = append(caches, newCache(t, Config[string]{Redis: rc, Namespace: "prop2", FailSafeMaxStale: time.Minute, NegativeTTL: time.Minute, TTL: 2 * time.Minute}))
			}
			type row struct {
				ver     uint64
				val     string
				deleted bool
			}
			var (
				dbMu sync.Mutex
				db   = map[string]row{}
				ver  uint64
			)
			load := func(_ context.Context, k string) (string, error) {
				dbMu.Lock()
				defer dbMu.Unlock()
				r, ok := db[k]
				if !ok || r.deleted {
					return "", ErrNotFound
				}
				return r.val, nil
			}
			keys := []string{"a", "b", "c", "d"}
			batchLoad := func(ctx context.Context, ks []string) (map[string]string, error) {
				out := map[string]string{}
				for _, k := range ks {
					if v, err := load(ctx, k); err == nil {
						out[k] = v
					}
				}
				return out, nil
			}
			stop := make(chan struct{})
			var readers sync.WaitGroup
			for _, c := range caches {
				readers.Add(1)
				go func() {
					defer readers.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						if i%2 == 0 {
							_, _ = c.GetOrLoad(ctx, keys[i%len(keys)], load)
						} else {
							_, _ = c.GetManyOrLoad(ctx, keys, batchLoad)
						}
					}
				}()
			}
			var writes sync.WaitGroup
			var stale, errs sync.Map
			for i := range 400 {
				k := keys[rng.IntN(len(keys))]
				c := caches[rng.IntN(len(caches))]
				del := rng.IntN(4) == 0
				dbMu.Lock()
				ver++
				r := row{ver: ver, val: fmt.Sprintf("%s@%d", k, ver), deleted: del}
				db[k] = r
				dbMu.Unlock()
				writes.Add(1)
				go func() {
					defer writes.Done()
					var err error
					if r.deleted {
						err = c.DeleteMany(ctx, []string{k}, WithVersion(r.ver))
					} else {
						err = c.Set(ctx, k, r.val, WithVersion(r.ver))
					}
					switch {
					case errors.Is(err, ErrStale):
						stale.Store(i, true)
					case err != nil:
						errs.Store(i, err)
					}
				}()
				if rng.IntN(8) == 0 {
					writes.Wait() // sometimes let the calls drain, to mix short and long races
				}
			}
			writes.Wait()
			close(stop)
			readers.Wait()
			errs.Range(func(k, v any) bool {
				t.Errorf("write %v failed: %v", k, v)
				return true
			})
			nStale := 0
			stale.Range(func(any, any) bool { nStale++; return true })
			t.Logf("%d writes, %d refused as stale", ver, nStale)
			for _, k := range keys {
				want := db[k]
				for i, c := range caches {
					eventually(t, fmt.Sprintf("instance %d to converge on %s version %d", i, k, want.ver), func() bool {
						v, err := c.GetOrLoad(ctx, k, load)
						if want.deleted {
							return errors.Is(err, ErrNotFound)
						}
						return err == nil && v == want.val
					})
				}
				e, err := caches[0].l2.Read(ctx, k)
				// A deleted row is a tombstone, or the negative entry a load
				// wrote back over it (keeping its version).
				if gone := e.Tombstone || e.Negative; err != nil || e.Version != want.ver || gone != want.deleted {
					t.Errorf("Redis holds %s: version %d tombstone %v negative %v (%v), want version %d deleted %v", k, e.Version, e.Tombstone, e.Negative, err, want.ver, want.deleted)
				}
			}
		})
	}
}
