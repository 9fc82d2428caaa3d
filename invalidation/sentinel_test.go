package invalidation_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// followBound is how soon after a Sentinel failover a message published on
// the new master must reach a bus over a failover client. go-redis leaves
// the subscription on the old master until Sentinel demotes it (about 10 s);
// the bus's route check (250 ms) must move it far sooner. The bound leaves
// room for the race detector on a loaded machine.
const followBound = 3 * time.Second

// TestSentinelFailoverResubscribes: after SENTINEL FAILOVER, B (over a
// failover client) moves its subscription to the new master at once and
// repairs: a message published on the new master reaches it within
// followBound. With the route check off, anti-entropy's run id check must
// move it.
func TestSentinelFailoverResubscribes(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  invalidation.Config
	}{
		{"route check", invalidation.Config{Namespace: "fo"}},
		{"run id check only", invalidation.Config{Namespace: "fo", RouteCheckInterval: -1}},
	} {
		t.Run(tt.name, func(t *testing.T) { testSentinelFailover(t, tt.cfg) })
	}
}

func testSentinelFailover(t *testing.T, cfg invalidation.Config) {
	st := redistest.StartSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rb := newRecorder()
	a := startBus(t, st.FailoverClient(), invalidation.Config{Namespace: cfg.Namespace}, newRecorder())
	b := startBus(t, st.FailoverClient(), cfg, rb)
	publishDelete(t, a, 0, "before")
	waitFor(t, 5*time.Second, "B to apply a message before the failover", func() bool {
		return slices.Contains(rb.Keys(), "before")
	})

	next, err := st.Failover(ctx)
	if err != nil {
		t.Fatalf("Failover: %v", err)
	}
	switched := time.Now()
	// P publishes on the new master only (a plain client of it), a fresh
	// key every few milliseconds: a message published while B is still
	// moving is lost by design (B repairs for it), a later one must arrive.
	p, err := invalidation.New(next.Client(), invalidation.Config{Namespace: cfg.Namespace}, newRecorder())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer p.Close()
	var arrived time.Duration
	for i := 0; ; i++ {
		if got := slices.ContainsFunc(rb.Keys(), func(k string) bool { return strings.HasPrefix(k, "after-") }); got {
			arrived = time.Since(switched)
			break
		}
		if time.Since(switched) > followBound {
			t.Fatalf("no message published on the new master reached B within %v of the failover (B stats %+v, InvalidateAll %v)",
				followBound, b.Stats(), rb.Alls())
		}
		if err := p.Publish(ctx, 0, p.EncodeDelete(0, []string{fmt.Sprint("after-", i)})); err != nil {
			t.Fatalf("Publish on the new master: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // the publishing pace, not a wait for an event
	}
	t.Logf("first message published on the new master reached B %v after the failover", arrived)
	if !rb.HasAll(invalidation.CauseServerChanged) {
		t.Errorf("B's InvalidateAll causes %v, want server_changed among them", rb.Alls())
	}
	waitFor(t, 5*time.Second, "B healthy on the new master", func() bool { return b.Health().Healthy })
	if sb := b.Stats(); sb.Reroutes == 0 {
		t.Errorf("B stats %+v: want Reroutes > 0", sb)
	}
}

// TestRouteCheckFollowsTheCommands mimics a failover without Sentinel: the
// client's dialer points at server A, the bus subscribes there, then the
// dialer points at B. Commands (which redial on every use here) go to B at
// once while the subscription stays on A; the route check must notice,
// repair and move the subscription to B.
func TestRouteCheckFollowsTheCommands(t *testing.T) {
	ma, _ := startMini(t)
	mb, cb := startMini(t)
	var target atomic.Pointer[string]
	target.Store(ptr(ma.Addr()))
	c := redis.NewClient(&redis.Options{
		Addr:            "switching",
		ConnMaxLifetime: time.Nanosecond, // every command dials anew, as after a failover
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *target.Load())
		},
	})
	t.Cleanup(func() { _ = c.Close() })
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "rt", RouteCheckInterval: 10 * time.Millisecond, AntiEntropyInterval: -1}, rb)
	// Commands reach A while the dialer points there: the subscription
	// and commands share a server, and checks pass without a repair.
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "route checks on A", func() bool { return ma.TotalConnectionCount() >= 4 }) // the subscription, the ping, two checks
	if st := b.Stats(); st.Reroutes != 0 || len(rb.Alls()) != 0 {
		t.Fatalf("before the switch: %+v, InvalidateAll %v; want no reroute and no repair", st, rb.Alls())
	}
	target.Store(ptr(mb.Addr()))
	waitFor(t, 5*time.Second, "the subscription on B", func() bool {
		n, err := cb.PubSubNumSub(context.Background(), b.Channel()).Result()
		return err == nil && n[b.Channel()] == 1
	})
	waitFor(t, 5*time.Second, "health", func() bool { return b.Health().Healthy })
	p, err := invalidation.New(cb, invalidation.Config{Namespace: "rt"}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	publishDelete(t, p, 0, "k")
	waitFor(t, 5*time.Second, "B's message to arrive", func() bool { return slices.Contains(rb.Keys(), "k") })
	if !rb.HasAll(invalidation.CauseServerChanged) || !rb.HasAll(invalidation.CauseResubscribe) {
		t.Errorf("InvalidateAll causes %v, want server_changed and resubscribe", rb.Alls())
	}
	if st := b.Stats(); st.Reroutes != 1 {
		t.Errorf("Reroutes %d, want 1 (the subscription is on B now)", st.Reroutes)
	}
}

func ptr[T any](v T) *T { return &v }
