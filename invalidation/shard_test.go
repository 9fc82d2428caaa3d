package invalidation_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// migrateSlot moves slot from one master to another as redis-cli --cluster
// reshard does: IMPORTING on the target, MIGRATING on the source, MIGRATE
// of the slot's keys, then SETSLOT NODE on every master.
func migrateSlot(t *testing.T, cl *redistest.Cluster, slot int, from, to *redistest.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id := func(s *redistest.Server) string {
		v, err := s.Client().ClusterMyID(ctx).Result()
		if err != nil {
			t.Fatalf("CLUSTER MYID: %v", err)
		}
		return v
	}
	fromID, toID := id(from), id(to)
	do := func(s *redistest.Server, args ...any) {
		t.Helper()
		if err := s.Client().Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v on %s: %v", args, s.Addr(), err)
		}
	}
	do(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	do(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	keys, err := from.Client().ClusterGetKeysInSlot(ctx, slot, 1000).Result()
	if err != nil {
		t.Fatalf("CLUSTER GETKEYSINSLOT: %v", err)
	}
	if len(keys) > 0 {
		args := []any{"MIGRATE", "127.0.0.1", strconv.Itoa(to.Port()), "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		do(from, args...)
	}
	for _, s := range []*redistest.Server{to, from} {
		do(s, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	}
	for _, s := range cl.Masters {
		if s != to && s != from {
			do(s, "CLUSTER", "SETSLOT", slot, "NODE", toID)
		}
	}
}

// slotToMove picks slot off of the first master's range in CLUSTER SLOTS
// order, that master, and the master of the second range, to move it to.
func slotToMove(t *testing.T, cl *redistest.Cluster, off int) (slot int, from, to *redistest.Server) {
	t.Helper()
	slots, err := cl.Client().ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	byAddr := map[string]*redistest.Server{}
	for _, m := range cl.Masters {
		byAddr[m.Addr()] = m
	}
	return slots[0].Start + off, byAddr[slots[0].Nodes[0].Addr], byAddr[slots[1].Nodes[0].Addr]
}

// publishEachPartition publishes one key per partition from a and waits
// until b's recorder has them all.
func publishEachPartition(t *testing.T, a *invalidation.Bus, rb *recorder, parts []int) {
	t.Helper()
	var want []string
	for _, p := range parts {
		k := "k" + strconv.Itoa(p)
		want = append(want, k)
		publishDelete(t, a, p, k)
	}
	waitFor(t, 5*time.Second, "B to apply a message of every partition", func() bool {
		got := rb.Keys()
		for _, k := range want {
			if !slices.Contains(got, k) {
				return false
			}
		}
		return true
	})
}

// TestShardSubscriptionFollowsSlot: when a slot moves to another master,
// its old master drops its shard channels; the bus repairs at once, and
// follows the slot to its new master, whose messages then arrive, long
// before anti-entropy (an hour here) or the masters watcher's next look
// could find it.
func TestShardSubscriptionFollowsSlot(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	p, from, to := slotToMove(t, cl, 7)
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishDelete(t, a, p, "before")
	waitFor(t, 5*time.Second, "B to apply the first message", func() bool { return slices.Contains(rb.Keys(), "before") })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v; health %+v", b.Stats(), rb.Alls(), b.Health())
		}
	})

	start := time.Now()
	migrateSlot(t, cl, p, from, to)
	waitFor(t, 5*time.Second, "B to repair after the slot moved", func() bool { return rb.HasAll(invalidation.CauseServerChanged) })
	repaired := time.Since(start)
	// Healthy once the new master has confirmed the slot's channel (a
	// message published before that is covered by that confirmation's
	// repair).
	waitFor(t, 5*time.Second, "B to be healthy again", func() bool { return b.Health().Healthy })
	healthy := time.Since(start)
	if !rb.HasAll(invalidation.CauseResubscribe) {
		t.Errorf("healthy again without the repair of the new master's confirmation: InvalidateAll %v", rb.Alls())
	}
	publishDelete(t, a, p, "after") // on the new master, over SPUBLISH
	waitFor(t, 5*time.Second, "B to apply the new master's message", func() bool { return slices.Contains(rb.Keys(), "after") })
	t.Logf("slot %d moved %s -> %s: B repaired %v after the move began, healthy after %v, applied the new master's message after %v",
		p, from.Addr(), to.Addr(), repaired, healthy, time.Since(start))
	if st := b.Stats(); st.Duplicates != 0 {
		t.Errorf("duplicates %d, want 0 (sharded messages arrive once)", st.Duplicates)
	}
}

// TestShardChannelsRefused: a user whose ACL allows the namespace channel
// but not its shard channels still gets every invalidation: SSUBSCRIBE is
// refused once (a Warn names the grant), the subscriptions keep the plain
// channel, and the publisher's script falls back to PUBLISH when SPUBLISH
// is refused.
func TestShardChannelsRefused(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	for _, m := range cl.Masters {
		if err := m.Client().Do(ctx, "ACL", "SETUSER", "plain", "on", ">pw", "~*", "+@all", "resetchannels", "&t:inv").Err(); err != nil {
			t.Fatal(err)
		}
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), Username: "plain", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	parts := masterPartitions(t, cl.Client())
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishEachPartition(t, a, rb, parts)
	waitFor(t, 5*time.Second, "B to be healthy", func() bool { return b.Health().Healthy })
	if st := b.Stats(); st.Gaps != 0 || st.LostTails != 0 {
		t.Errorf("gaps %d, lost tails %d: want none (every message heard on the plain channel)", st.Gaps, st.LostTails)
	}
}

// TestShardFollowsFailover: a manual failover (CLUSTER FAILOVER on a
// replica) hands a master's slots to its replica; the bus repairs,
// subscribes the slots' shard channels on the new master, and hears its
// messages, long before anti-entropy (an hour here) would look.
func TestShardFollowsFailover(t *testing.T) {
	cl := redistest.StartClusterReplicas(t)
	c := cl.Client()
	ctx := context.Background()
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var p int
	found := false
	for _, r := range slots {
		if r.Nodes[0].Addr == cl.Masters[0].Addr() {
			p, found = r.Start+3, true
		}
	}
	if !found {
		t.Fatalf("no slot range of %s in %v", cl.Masters[0].Addr(), slots)
	}
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishDelete(t, a, p, "before")
	waitFor(t, 5*time.Second, "B to apply the first message", func() bool { return slices.Contains(rb.Keys(), "before") })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v; health %+v", b.Stats(), rb.Alls(), b.Health())
		}
	})

	start := time.Now()
	if err := cl.Replicas[0].Client().Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatalf("CLUSTER FAILOVER: %v", err)
	}
	waitFor(t, 20*time.Second, "the replica to become master", func() bool {
		info, err := cl.Replicas[0].Client().Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "role:master")
	})
	promoted := time.Since(start)
	waitFor(t, 10*time.Second, "B to repair after the failover", func() bool { return rb.HasAll(invalidation.CauseServerChanged) })
	waitFor(t, 10*time.Second, "B to be healthy again", func() bool { return b.Health().Healthy })
	healthy := time.Since(start)
	n := len(rb.Alls())
	// The write goes to the new master (the client follows MOVED) and is
	// published there with SPUBLISH.
	waitFor(t, 10*time.Second, "a write on the new master", func() bool {
		return a.Publish(ctx, p, a.EncodeDelete(p, []string{"after"})) == nil
	})
	waitFor(t, 5*time.Second, "B to apply the new master's message", func() bool { return slices.Contains(rb.Keys(), "after") })
	t.Logf("failover of %s to %s: promoted %v after CLUSTER FAILOVER, B healthy %v after, applied the new master's message %v after; InvalidateAll %v",
		cl.Masters[0].Addr(), cl.Replicas[0].Addr(), promoted, healthy, time.Since(start), rb.Alls())
	if got := rb.Alls()[n:]; len(got) != 0 {
		t.Errorf("InvalidateAll after the stream was healthy again: %v (a message of the new master was missed?)", got)
	}
}

// TestShardMappedAddresses: a cluster client that reaches the masters at
// other addresses than CLUSTER SLOTS names (its own ClusterSlots, as
// behind NAT or a proxy per node) still gets its shard subscriptions: the
// bus finds each range's master among the client's own.
func TestShardMappedAddresses(t *testing.T) {
	cl := redistest.StartCluster(t)
	via := map[string]string{} // real address -> proxy address
	for _, m := range cl.Masters {
		via[m.Addr()] = redistest.StartProxy(t, m.Addr()).Addr()
	}
	real := cl.Client()
	mapped := redis.NewClusterClient(&redis.ClusterOptions{
		ClusterSlots: func(ctx context.Context) ([]redis.ClusterSlot, error) {
			slots, err := real.ClusterSlots(ctx).Result()
			if err != nil {
				return nil, err
			}
			for i := range slots {
				for j := range slots[i].Nodes {
					slots[i].Nodes[j].Addr = via[slots[i].Nodes[j].Addr]
				}
			}
			return slots, nil
		},
	})
	t.Cleanup(func() { _ = mapped.Close() })
	parts := masterPartitions(t, real)
	rb := newRecorder()
	b := startBus(t, mapped, invalidation.Config{Namespace: "t", Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, mapped, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	publishEachPartition(t, a, rb, parts)
	if st := b.Stats(); st.Duplicates != 0 || st.Gaps != 0 || len(rb.Alls()) != 0 {
		t.Errorf("duplicates %d, gaps %d, InvalidateAll %v: want none (each message once, on its master's shard channel)", st.Duplicates, st.Gaps, rb.Alls())
	}
}
