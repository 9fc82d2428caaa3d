package tests

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/nearcache/nearcache/tiered"
)

func TestMain(m *testing.M) {
	// The fault suites make go-redis's pool log every failed dial to stderr;
	// the suites assert on outcomes instead.
	redis.SetLogger(discardRedisLog{})
	goleak.VerifyTestMain(m)
}

type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

// propagationBound is how long after a write or delete is acknowledged
// another instance may still serve the overtaken value. The contract's
// healthy figure is < 2 ms p99 on loopback; the bound leaves room for the
// race detector and a loaded 2-core machine, and the suites log what they
// measured.
const propagationBound = 100 * time.Millisecond

// repairBound is the contract's default bound on staleness under faults
// (lost message, dropped connection, black hole, restart).
const repairBound = 3 * time.Second

// clientTimeouts are the socket timeouts of every client in these suites:
// short, so that a dead or paused server is noticed quickly.
type clientTimeouts struct {
	dial, io time.Duration
}

var (
	healthyTimeouts = clientTimeouts{dial: time.Second, io: time.Second}
	faultTimeouts   = clientTimeouts{dial: 100 * time.Millisecond, io: 100 * time.Millisecond}
)

// newClient returns a client of one standalone server, closed when the test
// ends.
func newClient(t testing.TB, addr string, to clientTimeouts) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		DialTimeout:           to.dial,
		ReadTimeout:           to.io,
		WriteTimeout:          to.io,
		PoolTimeout:           to.io,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newClusterClient returns a client of a Cluster, closed when the test ends.
func newClusterClient(t testing.TB, addrs []string, to clientTimeouts) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 addrs,
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		DialTimeout:           to.dial,
		ReadTimeout:           to.io,
		WriteTimeout:          to.io,
		PoolTimeout:           to.io,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newCache builds a Cache that is closed when the test ends (before its
// client, since cleanups run last-in first-out).
func newCache[V any](t testing.TB, cfg tiered.Config[V]) *tiered.Cache[V] {
	t.Helper()
	c, err := tiered.New(cfg)
	if err != nil {
		t.Fatalf("tiered.New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// waitFor polls cond until it holds or within has passed, and returns how
// long it took. It is only for effects that cross a process boundary (a
// pub/sub delivery, a server restart), whose timing no gate in the test
// controls.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	took, err := waitUntil(within, func() error {
		if cond() {
			return nil
		}
		return errors.New("condition false")
	})
	if err != nil {
		t.Fatalf("%s: not done after %v", what, within)
	}
	return took
}

// waitUntil polls cond until it returns nil or within has passed; it
// returns how long it waited and cond's last error.
func waitUntil(within time.Duration, cond func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := cond()
		if err == nil || time.Since(start) > within {
			return time.Since(start), err
		}
		time.Sleep(time.Millisecond)
	}
}

// inL1 reports whether a Get of key was answered by c's L1, and what it
// returned. Nothing else may use c meanwhile.
func inL1[V any](ctx context.Context, c *tiered.Cache[V], key string) (V, bool) {
	before := c.Stats().L1.Hits
	v, err := c.Get(ctx, key)
	return v, err == nil && c.Stats().L1.Hits > before
}

// holdInL1 waits until key is served from c's L1 (fills reach ristretto
// asynchronously) and returns the value held.
func holdInL1[V any](t testing.TB, c *tiered.Cache[V], key string) V {
	t.Helper()
	var v V
	waitFor(t, 5*time.Second, "key "+key+" held in L1", func() bool {
		var ok bool
		v, ok = inL1(context.Background(), c, key)
		return ok
	})
	return v
}

// percentile returns the p-quantile (0..1) of ds, sorting ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(p*float64(len(ds)-1) + 0.5)
	return ds[i]
}
