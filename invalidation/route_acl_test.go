package invalidation_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
)

// aclClient creates the ACL user nc with the given channel grants and
// returns a client logged in as nc.
func aclClient(t *testing.T, srv *redistest.Server, grants ...string) *redis.Client {
	t.Helper()
	args := []any{"ACL", "SETUSER", "nc", "on", ">pw", "~*", "resetchannels"}
	for _, g := range grants {
		args = append(args, g)
	}
	args = append(args, "+@all")
	if err := srv.Client().Do(context.Background(), args...).Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nc", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// publisher is an unstarted bus of another instance: its messages are not
// the subscriber's own.
func publisher(t *testing.T, c *redis.Client, ns string) *invalidation.Bus {
	t.Helper()
	p, err := invalidation.New(c, invalidation.Config{Namespace: ns}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func numSub(t *testing.T, c *redis.Client, ch string) int64 {
	t.Helper()
	n, err := c.PubSubNumSub(context.Background(), ch).Result()
	if err != nil {
		return -1
	}
	return n[ch]
}

// TestRouteChannelRefusedByACL: with the route check on, a user granted
// the invalidation channel only keeps its subscription across reconnects
// (go-redis must not resend the refused route channel), receives
// invalidations, and the bus says once which channel to grant.
func TestRouteChannelRefusedByACL(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := aclClient(t, srv, "&acl:inv")
	core, logs := observer.New(zapcore.WarnLevel)
	rec := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "acl", RouteCheckInterval: 5 * time.Millisecond, Logger: zap.New(core)}, rec)
	routeWarns := func() int {
		return logs.FilterMessageSnippet("route channel").FilterField(zap.String("grant", "&acl:inv:route:*")).Len()
	}
	waitFor(t, 5*time.Second, "the route channel refusal logged", func() bool { return routeWarns() == 1 })
	for i := range 3 {
		waitFor(t, 5*time.Second, "healthy and subscribed", func() bool {
			return b.Health().Healthy && numSub(t, admin, "acl:inv") == 1
		})
		publishDelete(t, publisher(t, admin, "acl"), 0, "k"+string(rune('0'+i)))
		want := "k" + string(rune('0'+i))
		waitFor(t, 5*time.Second, "invalidation "+want, func() bool { return strings.Contains(strings.Join(rec.Keys(), ","), want) })
		if _, err := srv.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "healthy and subscribed after the last kill", func() bool {
		return b.Health().Healthy && numSub(t, admin, "acl:inv") == 1
	})
	if n := routeWarns(); n != 1 {
		t.Errorf("%d warnings naming the grant, want 1: %v", n, logs.All())
	}
	if st := b.Stats(); st.Reroutes != 0 {
		t.Errorf("Reroutes %d, want 0", st.Reroutes)
	}
}

// TestRouteChannelGrantRevoked: the route channel was granted, then the
// grant is revoked; Redis closes the subscription, and go-redis's
// resubscription names both channels in one refused SUBSCRIBE. The bus
// must subscribe the invalidation channel again on its own.
func TestRouteChannelGrantRevoked(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := aclClient(t, srv, "&acl:inv", "&acl:inv:route:*")
	rec := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "acl", RouteCheckInterval: 5 * time.Millisecond}, rec)
	id := b.InstanceID()
	route := wire.RouteChannel("acl", id)
	waitFor(t, 5*time.Second, "both channels subscribed", func() bool {
		return numSub(t, admin, "acl:inv") == 1 && numSub(t, admin, route) == 1
	})
	if err := admin.Do(context.Background(), "ACL", "SETUSER", "nc", "resetchannels", "&acl:inv").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the invalidation channel subscribed again, the route channel not", func() bool {
		return b.Health().Healthy && numSub(t, admin, "acl:inv") == 1 && numSub(t, admin, route) == 0
	})
	publishDelete(t, publisher(t, admin, "acl"), 0, "after")
	waitFor(t, 5*time.Second, "the invalidation after the revocation", func() bool { return strings.Contains(strings.Join(rec.Keys(), ","), "after") })
}
