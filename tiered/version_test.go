package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l2"
)

// TestVersionedTwoWriters: writer A commits v1, writer B commits v2, and
// their cache writes land in either order on separate instances; Redis and
// every instance end with v2, and the stale call (when it lands last) gets
// ErrStale and publishes nothing.
func TestVersionedTwoWriters(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			for _, staleLast := range []bool{true, false} {
				t.Run(fmt.Sprintf("staleLast=%v", staleLast), func(t *testing.T) {
					rc := srv.client(t)
					ctx := context.Background()
					ns := fmt.Sprintf("two%v", staleLast)
					a := newCache(t, Config[string]{Redis: rc, Namespace: ns})
					b := newCache(t, Config[string]{Redis: rc, Namespace: ns})
					r := newCache(t, Config[string]{Redis: rc, Namespace: ns})
					for _, c := range []*Cache[string]{a, b, r} { // every L1 holds the old value
						if _, err := c.GetOrLoad(ctx, "k", func(context.Context, string) (string, error) { return "v0", nil }); err != nil {
							t.Fatal(err)
						}
					}
					if staleLast {
						if err := b.Set(ctx, "k", "v2", WithVersion(2)); err != nil {
							t.Fatalf("B Set v2: %v", err)
						}
						seq := func() string { return rc.Get(ctx, a.bus.(*invalidation.Bus).SeqKey(0)).Val() }
						before := seq()
						err := a.Set(ctx, "k", "v1", WithVersion(1))
						var se *l2.StaleError
						if !errors.Is(err, ErrStale) || !errors.As(err, &se) || se.Stored["k"] != 2 || se.Offered["k"] != 1 {
							t.Fatalf("A Set v1 after v2: got %v, want ErrStale naming stored 2, offered 1", err)
						}
						if after := seq(); after != before {
							t.Errorf("a refused write published: sequence %s -> %s, want unchanged", before, after)
						}
					} else {
						if err := a.Set(ctx, "k", "v1", WithVersion(1)); err != nil {
							t.Fatalf("A Set v1: %v", err)
						}
						if err := b.Set(ctx, "k", "v2", WithVersion(2)); err != nil {
							t.Fatalf("B Set v2: %v", err)
						}
					}
					for name, c := range map[string]*Cache[string]{"A": a, "B": b, "reader": r} {
						eventually(t, name+" to hold v2", func() bool {
							v, err := c.Get(ctx, "k")
							return err == nil && v == "v2"
						})
					}
					e, err := a.l2.Read(ctx, "k")
					if err != nil || string(e.Value) != `v2` || e.Version != 2 {
						t.Fatalf("Redis holds %q version %d (%v), want v2 version 2", e.Value, e.Version, err)
					}
				})
			}
		})
	}
}

// TestVersionedRandomInterleavings: a "database" commits versioned sets and
// deletes of a few keys; each commit's cache call (Set or DeleteMany with
// WithVersion) is issued by a random instance on its own goroutine, so the
// calls land in random order, while readers load through the database on
// every instance. After the writers stop, every instance converges on the
// database's newest version of every key.
func TestVersionedRandomInterleavings(t *testing.T) {
	for _, srv := range servers() {
		t.Run(srv.name, func(t *testing.T) {
			runVersionedInterleavings(t, srv, Config[string]{Namespace: "prop"}, false)
		})
	}
}

// runVersionedInterleavings runs the scenario of
// TestVersionedRandomInterleavings against srv with three instances built
// from cfg (its Redis set to srv's client). With batch, readers alternate
// GetOrLoad with GetManyOrLoad over every key, and a deleted row may be left
// in Redis either as a tombstone or as the negative entry a load wrote back
// over it (keeping its version); without batch, readers use GetOrLoad only
// and a deleted row must be a tombstone.
func runVersionedInterleavings(t *testing.T, srv server, cfg Config[string], batch bool) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	rc := srv.client(t)
	ctx := context.Background()
	cfg.Redis = rc
	if cfg.RedisTimeout == 0 {
		// Up to 400 writes start at once: under -race on a busy machine
		// their queue at the server outlasts the default 250ms. This test
		// is about the order of versions, not about timeouts.
		cfg.RedisTimeout = 3 * time.Second
	}
	var caches []*Cache[string]
	for range 3 {
		caches = append(caches, newCache(t, cfg))
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
				if !batch || i%2 == 0 {
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
		if batch {
			// A deleted row is a tombstone, or the negative entry a load
			// wrote back over it (keeping its version).
			if gone := e.Tombstone || e.Negative; err != nil || e.Version != want.ver || gone != want.deleted {
				t.Errorf("Redis holds %s: version %d tombstone %v negative %v (%v), want version %d deleted %v", k, e.Version, e.Tombstone, e.Negative, err, want.ver, want.deleted)
			}
		} else if err != nil || e.Version != want.ver || e.Tombstone != want.deleted {
			t.Errorf("Redis holds %s: version %d tombstone %v (%v), want version %d tombstone %v", k, e.Version, e.Tombstone, err, want.ver, want.deleted)
		}
	}
}

// TestVersionedL1Only: without Redis, versions are compared with what L1
// holds.
func TestVersionedL1Only(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, Config[string]{})
	if err := c.Set(ctx, "k", "v2", WithVersion(2)); err != nil {
		t.Fatal(err)
	}
	c.local.(interface{ Wait() }).Wait()
	if err := c.Set(ctx, "k", "v1", WithVersion(1)); !errors.Is(err, ErrStale) {
		t.Fatalf("Set v1 over v2 in L1-only mode: %v, want ErrStale", err)
	}
	if v, err := c.Get(ctx, "k"); err != nil || v != "v2" {
		t.Fatalf("Get: %q %v, want v2", v, err)
	}
	if err := c.Set(ctx, "k", "v3", WithVersion(3)); err != nil {
		t.Fatal(err)
	}
	c.local.(interface{ Wait() }).Wait()
	if v, err := c.Get(ctx, "k"); err != nil || v != "v3" {
		t.Fatalf("Get: %q %v, want v3", v, err)
	}
}
