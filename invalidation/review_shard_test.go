package invalidation_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// TestShardMessageDuringSlotMigration: while a slot is being migrated
// (IMPORTING on the target, MIGRATING on the source, its keys already
// moved), a write of that slot is redirected (ASK) to the target and its
// script runs there. The target accepts SPUBLISH for a slot it imports,
// but no subscriber can SSUBSCRIBE that slot there before it owns it
// (MOVED): the message reaches no one, while every subscriber is still
// healthy on the source. With PUBLISH it would cross the cluster bus to
// every node. The invalidation must arrive (or the subscriber must turn
// unhealthy) while the migration is still open.
func TestShardMessageDuringSlotMigration(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	ctx := context.Background()
	p, from, to := slotToMove(t, cl, 11)
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishDelete(t, a, p, "before") // creates the slot's sequence key on its master
	waitFor(t, 5*time.Second, "B to apply the first message", func() bool { return slices.Contains(rb.Keys(), "before") })
	waitFor(t, 5*time.Second, "B healthy", func() bool { return b.Health().Healthy })

	// Open the migration and move the slot's keys, as redis-cli --cluster
	// reshard does before it hands the slot over.
	id := func(s *redistest.Server) string {
		v, err := s.Client().ClusterMyID(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	do := func(s *redistest.Server, args ...any) {
		t.Helper()
		if err := s.Client().Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v on %s: %v", args, s.Addr(), err)
		}
	}
	fromID, toID := id(from), id(to)
	do(to, "CLUSTER", "SETSLOT", p, "IMPORTING", fromID)
	do(from, "CLUSTER", "SETSLOT", p, "MIGRATING", toID)
	keys, err := from.Client().ClusterGetKeysInSlot(ctx, p, 1000).Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys in slot %d: %v %v", p, keys, err)
	}
	args := []any{"MIGRATE", "127.0.0.1", strconv.Itoa(to.Port()), "", 0, 5000, "KEYS"}
	for _, k := range keys {
		args = append(args, k)
	}
	do(from, args...)
	t.Cleanup(func() { // close the migration so the cluster stops cleanly
		for _, s := range cl.Masters {
			_ = s.Client().Do(ctx, "CLUSTER", "SETSLOT", p, "NODE", toID).Err()
		}
	})

	publishDelete(t, a, p, "during") // ASK: runs on the importing target
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if slices.Contains(rb.Keys(), "during") || !b.Health().Healthy {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("a write during the slot's migration: B neither applied its invalidation nor turned unhealthy within 3s (health %+v, InvalidateAll %v, stats %+v)",
		b.Health(), rb.Alls(), b.Stats())
}

// TestShardClusterSlotsOption: go-redis's ClusterOptions.ClusterSlots
// builds a cluster client over servers that are not a Redis Cluster (each
// serves the slots the function assigns it; CLUSTER SLOTS is refused).
// The bus started on such a client before sharded pub/sub (its masters
// watcher lists the client's masters); it must still start.
func TestShardClusterSlotsOption(t *testing.T) {
	s1, s2 := redistest.StartServer(t), redistest.StartServer(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{
		ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
			return []redis.ClusterSlot{
				{Start: 0, End: 8191, Nodes: []redis.ClusterNode{{Addr: s1.Addr()}}},
				{Start: 8192, End: 16383, Nodes: []redis.ClusterNode{{Addr: s2.Addr()}}},
			}, nil
		},
	})
	t.Cleanup(func() { _ = c.Close() })
	rb := newRecorder()
	b, err := invalidation.New(c, invalidation.Config{Namespace: "t", Logger: zaptest.NewLogger(t)}, rb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatalf("Start on a client with ClusterOptions.ClusterSlots: %v", err)
	}
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishDelete(t, a, 100, "k1")
	publishDelete(t, a, 9000, "k2")
	waitFor(t, 5*time.Second, "both messages", func() bool {
		k := rb.Keys()
		return slices.Contains(k, "k1") && slices.Contains(k, "k2")
	})
}

// TestShardRefusedInstanceMissesShardedWrites: in a fleet where one
// instance's ACL refuses the shard channels and another's allows them, the
// refused instance turns sharded subscriptions off, but the other's writes
// go out with SPUBLISH (its own subscription hears them, so the script does
// not fall back to PUBLISH): the refused instance must either hear them or
// not report healthy, and stay unhealthy while the other listens. (It used
// to report healthy; the wait for that health that stood here raced with
// the fix, which makes it unhealthy once it sees the other instance.)
func TestShardRefusedInstanceMissesShardedWrites(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	for _, m := range cl.Masters {
		if err := m.Client().Do(ctx, "ACL", "SETUSER", "plain", "on", ">pw", "~*", "+@all", "resetchannels", "&t:inv").Err(); err != nil {
			t.Fatal(err)
		}
	}
	pc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), Username: "plain", Password: "pw"})
	t.Cleanup(func() { _ = pc.Close() })
	parts := masterPartitions(t, cl.Client())
	rb := newRecorder()
	b := startBus(t, pc, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour}, rb)
	a := startBus(t, cl.Client(), invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishDelete(t, a, parts[0], "k")
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if slices.Contains(rb.Keys(), "k") {
			return
		}
		if !b.Health().Healthy {
			// Unhealthy while A listens: check that it lasts.
			for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				if b.Health().Healthy && !slices.Contains(rb.Keys(), "k") {
					t.Fatalf("B (shard channels refused) healthy again while A subscribes the shard channels, without A's write (InvalidateAll %v)", rb.Alls())
				}
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("B (shard channels refused) healthy for 2s without the invalidation another instance published with SPUBLISH (InvalidateAll %v)", rb.Alls())
}
