package tiered

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestHungRedisInlineBoundedByLoadTimeout: LoadTimeout bounds a shared
// load, its L2 read included, whoever runs it. A caller on a ctx that can
// never end leads its flight inline; with a client that applies ctx
// deadlines, a RedisTimeout longer than LoadTimeout and a Redis that never
// answers, it must still get its error within LoadTimeout + abortGrace, as
// a caller with a cancellable ctx (whose flight runs under DoChan) does.
func TestHungRedisInlineBoundedByLoadTimeout(t *testing.T) {
	const loadTimeout = 100 * time.Millisecond
	const redisTimeout = 3 * time.Second
	load := func(context.Context, string) (string, error) { return "v", nil }
	loadMany := func(_ context.Context, keys []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range keys {
			m[k] = "v"
		}
		return m, nil
	}
	// A read without a loader fails; a load goes on to its loader once the
	// L2 read has failed, and may succeed.
	reads := []struct {
		name    string
		wantErr bool
		read    func(c *Cache[string], ctx context.Context) error
	}{
		{"Get", true, func(c *Cache[string], ctx context.Context) error { _, err := c.Get(ctx, "k"); return err }},
		{"GetOrLoad", false, func(c *Cache[string], ctx context.Context) error { _, err := c.GetOrLoad(ctx, "k", load); return err }},
		{"GetMany", true, func(c *Cache[string], ctx context.Context) error {
			_, err := c.GetMany(ctx, []string{"k", "l"})
			return err
		}},
		{"GetManyOrLoad", false, func(c *Cache[string], ctx context.Context) error {
			_, err := c.GetManyOrLoad(ctx, []string{"k", "l"}, loadMany)
			return err
		}},
	}
	for _, lc := range leaderContexts(t) {
		for _, rd := range reads {
			t.Run(lc.name+"/"+rd.name, func(t *testing.T) {
				rc := redis.NewClient(&redis.Options{Addr: silentServer(t), ContextTimeoutEnabled: true, MaxRetries: -1})
				t.Cleanup(func() { _ = rc.Close() })
				c := newCache(t, Config[string]{Redis: rc, Namespace: "hunginline", StartTimeout: 50 * time.Millisecond,
					LoadTimeout: loadTimeout, RedisTimeout: redisTimeout, BreakerFailures: NoBreaker})
				res := make(chan error, 1)
				start := time.Now()
				go func() { res <- rd.read(c, lc.ctx) }()
				select {
				case err := <-res:
					if err == nil && rd.wantErr {
						t.Errorf("nil error from a Redis that never answers")
					}
				case <-time.After(10 * time.Second):
					t.Fatal("still waiting after 10 s")
				}
				// Far above LoadTimeout + abortGrace (200 ms), far below
				// RedisTimeout (3 s).
				if d := time.Since(start); d > 1500*time.Millisecond {
					t.Errorf("returned after %v: the read ran to RedisTimeout (%v) instead of ending at LoadTimeout (%v)", d, redisTimeout, loadTimeout)
				}
			})
		}
	}
}
