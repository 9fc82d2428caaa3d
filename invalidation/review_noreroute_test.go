package invalidation_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// TestReviewKilledSubscriptionIsNotAReroute: on one plain redis-server the
// server closes the subscription connection (CLIENT KILL here; in
// production client-output-buffer-limit pubsub does it to a slow reader).
// Until the reader notices, the route check sees NUMSUB 0 while the
// subscription still counts as confirmed, and "moves" it: Stats.Reroutes
// counts a Sentinel-style reroute, the log says the subscription "is on
// another server than the commands", and the backoff streak grows (three
// in a row log the "commands sent to replicas, or a proxy?" warning) --
// though there is one server. A disconnect is already repaired as a
// disconnect.
func TestReviewKilledSubscriptionIsNotAReroute(t *testing.T) {
	srv := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	b := startBus(t, c, invalidation.Config{Namespace: "nr", RouteCheckInterval: time.Millisecond}, newRecorder())
	ctx := context.Background()
	for i := range 5 {
		waitFor(t, 5*time.Second, "healthy", func() bool { return b.Health().Healthy })
		if _, err := srv.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
			t.Fatalf("kill %d: %v", i, err)
		}
	}
	waitFor(t, 5*time.Second, "healthy", func() bool { return b.Health().Healthy })
	if st := b.Stats(); st.Reroutes != 0 {
		t.Errorf("one plain server, 5 killed subscriptions: Reroutes %d (Disconnects %d), want 0: nothing moved", st.Reroutes, st.Disconnects)
	}
}
