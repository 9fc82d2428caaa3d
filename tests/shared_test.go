package tests

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// sharedInstance is one process holding three Caches of different value
// types on one Redis client: they share one invalidation transport.
type sharedInstance struct {
	rc  *redis.Client
	str *tiered.Cache[string]
	num *tiered.Cache[int]
	rec *tiered.Cache[record]
}

func newSharedInstance(t *testing.T, addr string) *sharedInstance {
	base := faultConfig(addr, t)
	rc := base.Redis.(*redis.Client)
	in := &sharedInstance{rc: rc, str: newCache(t, base)}
	in.num = newCache(t, tiered.Config[int]{Redis: rc, Namespace: "fault-num", MaxL1TTL: base.MaxL1TTL, UnhealthyL1TTL: base.UnhealthyL1TTL,
		RedisTimeout: base.RedisTimeout, LoadTimeout: base.LoadTimeout, StartTimeout: base.StartTimeout, BreakerFailures: base.BreakerFailures,
		BreakerCooldown: base.BreakerCooldown, AntiEntropyInterval: base.AntiEntropyInterval})
	in.rec = newCache(t, tiered.Config[record]{Redis: rc, Namespace: "fault-rec", MaxL1TTL: base.MaxL1TTL, UnhealthyL1TTL: base.UnhealthyL1TTL,
		RedisTimeout: base.RedisTimeout, LoadTimeout: base.LoadTimeout, StartTimeout: base.StartTimeout, BreakerFailures: base.BreakerFailures,
		BreakerCooldown: base.BreakerCooldown, AntiEntropyInterval: base.AntiEntropyInterval})
	return in
}

// set writes version v of key k in all three namespaces.
func (in *sharedInstance) set(ctx context.Context, k string, v int) error {
	if err := in.str.Set(ctx, k, "v"+strconv.Itoa(v)); err != nil {
		return err
	}
	if err := in.num.Set(ctx, k, v); err != nil {
		return err
	}
	return in.rec.Set(ctx, k, record{Ver: int64(v), Note: "v" + strconv.Itoa(v)})
}

// check reports whether every namespace of in serves version v of k.
func (in *sharedInstance) check(ctx context.Context, k string, v int) error {
	s, err := in.str.Get(ctx, k)
	if err != nil || s != "v"+strconv.Itoa(v) {
		return fmt.Errorf("string cache: %q, %v", s, err)
	}
	n, err := in.num.Get(ctx, k)
	if err != nil || n != v {
		return fmt.Errorf("int cache: %d, %v", n, err)
	}
	r, err := in.rec.Get(ctx, k)
	if err != nil || r.Ver != int64(v) {
		return fmt.Errorf("struct cache: %+v, %v", r, err)
	}
	return nil
}

// hold waits until every namespace of in holds version v of k in L1.
func (in *sharedInstance) hold(t *testing.T, ctx context.Context, k string, v int) {
	t.Helper()
	waitFor(t, repairBound, fmt.Sprintf("version %d of %s in every L1", v, k), func() bool {
		s, ok1 := inL1(ctx, in.str, k)
		n, ok2 := inL1(ctx, in.num, k)
		r, ok3 := inL1(ctx, in.rec, k)
		return ok1 && ok2 && ok3 && s == "v"+strconv.Itoa(v) && n == v && r.Ver == int64(v)
	})
}

// pubsubConns counts the server's pub/sub connections.
func pubsubConns(t *testing.T, srv *redistest.Server) int {
	list, err := srv.Client().ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return redisinfo.PubSubClients(list)
}

// TestSharedTransportFaults: two instances, each with three Caches of
// different value types on one client, so one subscription connection per
// instance carries the three namespaces. A killed subscription, a lost
// invalidation and a restart of Redis without persistence are repaired
// in every namespace of the instance that missed them.
func TestSharedTransportFaults(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	a := newSharedInstance(t, srv.Addr())
	b := newSharedInstance(t, srv.Addr())
	if n := pubsubConns(t, srv); n != 2 {
		t.Fatalf("%d pub/sub connections for two instances of three Caches each, want 2", n)
	}
	faults := []struct {
		name string
		do   func(t *testing.T)
	}{
		{"subscription killed before the write", func(t *testing.T) {
			if _, err := srv.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
				t.Fatal(err)
			}
		}},
		{"Redis restarted without persistence", func(t *testing.T) { srv.Restart() }},
	}
	v := 1
	if err := a.set(ctx, "k", v); err != nil {
		t.Fatal(err)
	}
	for _, f := range faults {
		b.hold(t, ctx, "k", v)
		f.do(t)
		v++
		waitFor(t, repairBound, "A's write after the fault", func() bool { return a.set(ctx, "k", v) == nil })
		acked := time.Now()
		var last error
		waitFor(t, repairBound, "B to serve the new version in every namespace after: "+f.name, func() bool {
			last = b.check(ctx, "k", v)
			return last == nil
		})
		t.Logf("%s: B served version %d in all three namespaces %v after the write; B's int cache: disconnects %d, reconnects %d, InvalidateAll %v",
			f.name, v, time.Since(acked), b.num.Stats().Invalidation.Disconnects, b.num.Stats().Invalidation.Reconnects, b.num.Stats().Invalidation.InvalidateAll)
	}
	waitFor(t, repairBound, "one subscription connection per instance again", func() bool { return pubsubConns(t, srv) == 2 })
	// Closing one Cache of an instance leaves the others subscribed: B's
	// string cache goes, its int and struct caches still hear A.
	b.hold(t, ctx, "k", v)
	if err := b.str.Close(); err != nil {
		t.Fatal(err)
	}
	v++
	if err := a.set(ctx, "k", v); err != nil {
		t.Fatal(err)
	}
	waitFor(t, repairBound, "B's remaining caches to serve the new version", func() bool {
		n, err1 := b.num.Get(ctx, "k")
		r, err2 := b.rec.Get(ctx, "k")
		return err1 == nil && err2 == nil && n == v && r.Ver == int64(v)
	})
}
