package tiered

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/l2"
)

// TestReviewClusterVersionedSetManyAndClear: on a Cluster, versioned
// SetMany over many slots from two instances in reversed order ends with
// the newer version in Redis and in every L1; the stale call is refused for
// every key; Clear then empties every L1 and Redis.
func TestReviewClusterVersionedSetManyAndClear(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	client := func() redis.UniversalClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true,
			DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	a := newCache(t, Config[string]{Redis: client(), Namespace: "cv"})
	b := newCache(t, Config[string]{Redis: client(), Namespace: "cv"})
	r := newCache(t, Config[string]{Redis: client(), Namespace: "cv"})
	v1, v2 := map[string]string{}, map[string]string{}
	var keys []string
	for i := 0; i < 100; i++ {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		v1[k], v2[k] = "v1", "v2"
	}
	load := func(context.Context, string) (string, error) { return "v0", nil }
	for _, c := range []*Cache[string]{a, b, r} {
		for _, k := range keys {
			if _, err := c.GetOrLoad(ctx, k, load); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.SetMany(ctx, v2, WithVersion(2)); err != nil {
		t.Fatalf("B SetMany v2: %v", err)
	}
	err := a.SetMany(ctx, v1, WithVersion(1))
	var se *l2.StaleError
	if !errors.Is(err, ErrStale) || !errors.As(err, &se) || len(se.Stored) != len(keys) {
		t.Fatalf("A SetMany v1 after v2: %v, want ErrStale for all %d keys", err, len(keys))
	}
	for name, c := range map[string]*Cache[string]{"A": a, "B": b, "reader": r} {
		for _, k := range keys {
			eventually(t, name+" to hold v2 for "+k, func() bool {
				v, err := c.Get(ctx, k)
				return err == nil && v == "v2"
			})
		}
	}
	if err := a.Clear(ctx); err != nil {
		t.Fatalf("Clear: %v", err)
	}
	for name, c := range map[string]*Cache[string]{"A": a, "B": b, "reader": r} {
		for _, k := range keys {
			eventually(t, name+" to drop "+k+" after Clear", func() bool {
				_, err := c.Get(ctx, k)
				return errors.Is(err, ErrNotFound)
			})
		}
	}
}
