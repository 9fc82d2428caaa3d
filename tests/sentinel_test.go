package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// resubscribeBound is how soon after a Sentinel failover every instance
// must have moved its subscription to the new master. go-redis alone
// leaves it on the old master for about 10 s; the bus's route check moves
// it within a few hundred milliseconds. The bound leaves room for the race
// detector on a loaded machine.
const resubscribeBound = 5 * time.Second

// TestConsistencySentinelFailover runs the consistency checker on three
// instances over failover clients through a SENTINEL FAILOVER under load.
// Reads are held to propagationBound for every operation acknowledged
// after every instance's bus has moved its subscription to the new master
// (and had it confirmed); every instance converges to the new master after
// the writers stop.
func TestConsistencySentinelFailover(t *testing.T) {
	st := redistest.StartSentinel(t)
	fault := checkerFault{run: func(t *testing.T, caches []*tiered.Cache[int64], since func() time.Duration) time.Duration {
		type counts struct{ reroutes, reconnects uint64 }
		before := make([]counts, len(caches))
		for i, c := range caches {
			s := c.Stats().Invalidation
			before[i] = counts{s.Reroutes, s.Reconnects}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		old := st.Master()
		asked := since()
		next, err := st.Failover(ctx)
		if err != nil {
			t.Fatalf("Failover: %v", err)
		}
		switched := since()
		// Resubscribed: each bus has replaced its subscription at least
		// once since the failover, and each replacement has been
		// confirmed (a reroute is confirmed as a reconnect).
		var state string
		took, err := waitUntil(resubscribeBound, func() error {
			for i, c := range caches {
				s := c.Stats().Invalidation
				rr, rc := s.Reroutes-before[i].reroutes, s.Reconnects-before[i].reconnects
				if rr == 0 || rc < rr {
					state = fmt.Sprintf("instance %d: %d reroutes, %d reconnects since the failover", i, rr, rc)
					return fmt.Errorf("%s", state)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("not every instance resubscribed within %v of the failover: %v", resubscribeBound, err)
		}
		from := since()
		t.Logf("failover %s -> %s: SENTINEL FAILOVER at %v, switch seen by the harness %v later, every bus resubscribed %v after the switch (%v after SENTINEL FAILOVER)",
			old.Addr(), next.Addr(), asked, switched-asked, took, from-asked)
		for i, c := range caches {
			s := c.Stats().Invalidation
			t.Logf("instance %d: reroutes %d, reconnects %d, InvalidateAll %v", i, s.Reroutes, s.Reconnects, s.InvalidateAll)
		}
		return from
	}}
	runChecker(t, "chk", checkerDuration(t, 10*time.Second), propagationBound, func(t *testing.T) redis.UniversalClient {
		return st.FailoverClient()
	}, fault)
}
