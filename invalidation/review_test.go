package invalidation_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// Tests from the review of issue 11's fixes: each failed before its fix.

// TestReviewACLChannelGrant: a deployment whose ACL user may use exactly the
// invalidation channel (&NS:inv; Redis 7 users start with no channels)
// subscribed fine before the route check. Now the one SUBSCRIBE also names
// "NS:inv:route:<id>", Redis refuses the whole command (NOPERM), and the
// bus never subscribes: no invalidation reaches it. The docs name no ACL
// requirement for the route channel; a refused route channel should cost
// the route check only, not the subscription.
func TestReviewACLChannelGrant(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", "nc", "on", ">pw", "~*", "resetchannels", "&acl:inv", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nc", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	// The grant is enough for the invalidation channel itself.
	ps := c.Subscribe(ctx, "acl:inv")
	if _, err := ps.ReceiveTimeout(ctx, 2*time.Second); err != nil {
		t.Fatalf("SUBSCRIBE acl:inv as the restricted user: %v", err)
	}
	_ = ps.Close()

	// With the route check on (default) and off (negative: the route
	// channel is still subscribed).
	for _, iv := range []time.Duration{0, -1} {
		t.Run(fmt.Sprintf("RouteCheckInterval=%v", iv), func(t *testing.T) {
			b, err := invalidation.New(c, invalidation.Config{Namespace: "acl", RouteCheckInterval: iv}, newRecorder())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err = b.Start(sctx)
			cancel()
			if err != nil {
				t.Errorf("RouteCheckInterval %v: Start with a user granted &acl:inv: %v", iv, err)
			}
			waitFor(t, 5*time.Second, fmt.Sprintf("RouteCheckInterval %v: the bus to subscribe acl:inv with a user granted that channel", iv), func() bool {
				n, err := admin.PubSubNumSub(ctx, "acl:inv").Result()
				return err == nil && n["acl:inv"] == 1
			})
		})
	}
}
