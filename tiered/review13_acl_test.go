package tiered

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/internal/redistest"
)

// readmeACLCommands is README's list ("Redis ACLs") of the commands the
// Cache's user needs on a standalone Redis.
var readmeACLCommands = []string{"GET", "MGET", "SET", "SCAN", "UNLINK", "EVALSHA", "EVAL", "PTTL",
	"PUBLISH", "INFO", "ROLE", "SUBSCRIBE", "UNSUBSCRIBE", "PING", "PUBSUB"}

// TestACLGrantsSuffice: README says which keys, channels and
// commands the Cache's Redis user needs. A user granted exactly those (and
// not INCR, which no script or call uses since the wire frame stores the
// sequence with SET) runs every operation of a Cache without an error, and
// the bus neither warns nor stays unhealthy.
func TestACLGrantsSuffice(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	admin := srv.Client()
	t.Cleanup(func() { _ = admin.Close() })
	args := []any{"ACL", "SETUSER", "nc", "on", ">pw", "resetkeys", "~acl:*", "~*acl:inv:*",
		"resetchannels", "&acl:inv", "&acl:inv:route:*", "-@all"}
	for _, c := range readmeACLCommands {
		args = append(args, "+"+strings.ToLower(c))
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	client := func(t *testing.T) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nc", Password: "pw", ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	core, logs := observer.New(zap.WarnLevel)
	a := newCache(t, Config[string]{Redis: client(t), Namespace: "acl", Logger: zap.New(core)})
	b := newCache(t, Config[string]{Redis: client(t), Namespace: "acl", Logger: zap.New(core)})
	load := func(_ context.Context, k string) (string, error) { return "loaded-" + k, nil }
	steps := []struct {
		name string
		fn   func() error
	}{
		{"GetOrLoad", func() error { _, err := a.GetOrLoad(ctx, "k", load); return err }},
		{"Get", func() error { _, err := b.Get(ctx, "k"); return err }},
		{"Set", func() error { return a.Set(ctx, "k", "v") }},
		{"SetMany versioned", func() error { return a.SetMany(ctx, map[string]string{"x": "1", "y": "2"}, WithVersion(3)) }},
		{"GetMany", func() error { _, err := b.GetMany(ctx, []string{"x", "y", "missing"}); return err }},
		{"GetManyOrLoad", func() error {
			_, err := b.GetManyOrLoad(ctx, []string{"p", "q"}, func(_ context.Context, ks []string) (map[string]string, error) {
				m := map[string]string{}
				for _, k := range ks {
					m[k] = k
				}
				return m, nil
			})
			return err
		}},
		{"Delete", func() error { return a.Delete(ctx, "k") }},
		{"DeleteMany versioned", func() error { return a.DeleteMany(ctx, []string{"x"}, WithVersion(4)) }},
		{"Clear", func() error { return a.Clear(ctx) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("%s as a user with README's grants: %v", s.name, err)
		}
	}
	eventually(t, "B to apply A's invalidations and run an anti-entropy round", func() bool {
		st := b.Stats().Invalidation
		return st.Applied >= 4 && st.AERounds >= 1
	})
	if st := b.Stats(); st.L2.Errors != 0 || st.Invalidation.AEErrors != 0 {
		t.Errorf("B: %d L2 errors, %d anti-entropy errors; want none", st.L2.Errors, st.Invalidation.AEErrors)
	}
	for _, e := range logs.All() {
		t.Errorf("logged with README's grants: %s %v", e.Message, e.ContextMap())
	}
	if !a.bus.Health().Healthy || !b.bus.Health().Healthy {
		t.Errorf("a bus is unhealthy with README's grants")
	}
}
