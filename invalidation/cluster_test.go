package invalidation_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// Redis Cluster: one subscription per master, deduplicated by sequence.

// masterPartitions returns one slot owned by each master, in CLUSTER SLOTS
// order.
func masterPartitions(t *testing.T, c *redis.ClusterClient) []int {
	t.Helper()
	slots, err := c.ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLUSTER SLOTS: %v", err)
	}
	var parts []int
	for _, r := range slots {
		parts = append(parts, r.Start+7)
	}
	if len(parts) != 3 {
		t.Fatalf("want 3 slot ranges, got %v", slots)
	}
	return parts
}

// TestRedisClusterPropagation: a message published on any master reaches a
// subscriber directly from that master (not over the cluster bus, which adds
// up to ~40 ms). A sharded message (SPUBLISH, the default) arrives once; a
// plain one (PUBLISH) also arrives from the other masters, and those copies
// are counted duplicates, never gaps or resets.
func TestRedisClusterPropagation(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	parts := masterPartitions(t, c)
	for _, plain := range []bool{false, true} {
		t.Run(map[bool]string{false: "sharded", true: "plain"}[plain], func(t *testing.T) {
			copies := 0
			if plain {
				copies = 2
			}
			clusterPropagation(t, c, parts, fmt.Sprintf("t%v", plain), plain, copies)
		})
	}
}

func clusterPropagation(t *testing.T, c *redis.ClusterClient, parts []int, ns string, plain bool, copies int) {
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: ns, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: ns, DisableShardedPubSub: plain}, newRecorder())
	const perMaster = 150
	n := 0
	for _, p := range parts { // the publisher's master in turn
		for i := 0; i < perMaster; i++ {
			publishDelete(t, a, p, fmt.Sprintf("p%d-%d", p, i))
			n++
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(t, 10*time.Second, "B to apply every message", func() bool { return b.Stats().Applied == uint64(n) })
	// A plain message also arrives from the two other masters.
	waitFor(t, 10*time.Second, "the forwarded copies", func() bool { return b.Stats().Duplicates == uint64(copies*n) })
	st := b.Stats()
	lag := st.Lag
	t.Logf("cluster propagation, %d msgs over 3 masters: p50 %v, p90 %v, p99 %v, max %v; received %d, duplicates %d",
		lag.Count, lag.P50, lag.P90, lag.P99, lag.Max, st.Received, st.Duplicates)
	if lag.P99 > 20*time.Millisecond {
		t.Errorf("p99 %v: want well under 20ms (the cluster bus alone is ~38ms)", lag.P99)
	}
	if st.Received != uint64((1+copies)*n) || st.Gaps != 0 || st.SeqResets != 0 || st.LostTails != 0 || len(rb.Alls()) != 0 {
		t.Errorf("received %d (want %d), gaps %d, resets %d, lost tails %d, InvalidateAll %v; want no repair",
			st.Received, (1+copies)*n, st.Gaps, st.SeqResets, st.LostTails, rb.Alls())
	}
	if got := rb.Keys(); len(got) != n {
		t.Errorf("B invalidated %d keys, want %d (each once)", len(got), n)
	}
	if !b.Health().Healthy {
		t.Errorf("Health: %+v", b.Health())
	}
}

// TestRedisClusterDropHook: a message lost on every path is a gap (after
// the grace); a message lost on one path only is filled by another copy and
// is no gap.
func TestRedisClusterDropHook(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	parts := masterPartitions(t, c)
	cfg := invalidation.Config{Namespace: "t", Logger: zaptest.NewLogger(t)}
	var mu sync.Mutex
	copies := map[[2]uint64]int{}
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		k := [2]uint64{uint64(p), seq}
		copies[k]++
		switch seq % 10 {
		case 5:
			return true // every copy: lost
		case 8:
			return copies[k] == 1 // the first copy only: another path fills it
		}
		return false
	})
	rb := newRecorder()
	b := startBus(t, c, cfg, rb)
	// Plain messages, which reach B on every master's subscription.
	a := startBus(t, c, invalidation.Config{Namespace: "t", DisableShardedPubSub: true}, newRecorder())
	const per = 40 // 4 lost and 4 half-lost per partition; the last is not lost
	for _, p := range parts {
		for i := 0; i < per; i++ {
			publishDelete(t, a, p, "k")
		}
	}
	want := uint64(3 * (per - 4))
	waitFor(t, 10*time.Second, "B to apply all but the lost", func() bool { return b.Stats().Applied == want })
	waitFor(t, 10*time.Second, "12 gaps", func() bool { return b.Stats().Gaps == 12 })
	time.Sleep(500 * time.Millisecond) // more than the grace: nothing else may follow
	st := b.Stats()
	if st.Gaps != 12 || st.Applied != want || st.SeqResets != 0 || st.LostTails != 0 {
		t.Errorf("gaps %d, applied %d, resets %d, lost tails %d; want 12, %d, 0, 0", st.Gaps, st.Applied, st.SeqResets, st.LostTails, want)
	}
	for _, cause := range rb.Alls() {
		if cause != invalidation.CauseGap {
			t.Errorf("InvalidateAll causes %v: want only gap", rb.Alls())
			break
		}
	}
	t.Logf("drops: gaps %d, duplicates %d, InvalidateAll %d", st.Gaps, st.Duplicates, len(rb.Alls()))
}

// TestRedisClusterOneMasterFails: the pub/sub connections of one master are
// killed, then that master is paused: the bus repairs, is unhealthy while
// that master's subscription is down, and recovers.
func TestRedisClusterOneMasterFails(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	parts := masterPartitions(t, c)
	rb := newRecorder()
	const ping = 50 * time.Millisecond
	b := startBus(t, c, invalidation.Config{Namespace: "t", PingInterval: ping, AntiEntropyInterval: 200 * time.Millisecond}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	m := cl.Masters[1]
	ctx := context.Background()
	if _, err := m.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatalf("CLIENT KILL: %v", err)
	}
	waitFor(t, 5*time.Second, "the repair", func() bool {
		return rb.HasAll(invalidation.CauseDisconnect) && rb.HasAll(invalidation.CauseResubscribe) && b.Health().Healthy
	})
	// A stall of the pause, not one before it (a 50 ms ping on a loaded
	// machine can stall before the pause): count them.
	stalls := b.Stats().Stalls
	m.Pause()
	waitFor(t, 5*time.Second, "the stall of one master", func() bool { return b.Stats().Stalls > stalls })
	if b.Health().Healthy {
		t.Errorf("healthy while one master's subscription is stalled")
	}
	m.Resume()
	waitFor(t, 10*time.Second, "health after resume", func() bool { return b.Health().Healthy })
	before := b.Stats()
	for _, p := range parts {
		for i := 0; i < 20; i++ {
			publishDelete(t, a, p, "k")
		}
	}
	waitFor(t, 10*time.Second, "traffic after recovery", func() bool { return b.Stats().Applied == before.Applied+60 })
	if st := b.Stats(); st.Gaps != before.Gaps || st.SeqResets != 0 {
		t.Errorf("after recovery: gaps %d -> %d, resets %d", before.Gaps, st.Gaps, st.SeqResets)
	}
	t.Logf("InvalidateAll causes: %v", rb.Alls())
}

// TestRedisClusterSeqReset: on Cluster a smaller sequence in the stream
// cannot be told from a late copy; anti-entropy, which reads the sequence
// key, finds the reset.
func TestRedisClusterSeqReset(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	p := masterPartitions(t, c)[2]
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: 100 * time.Millisecond}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v", b.Stats(), rb.Alls())
		}
	})
	for i := 0; i < 10; i++ {
		publishDelete(t, a, p, "k")
	}
	waitFor(t, 5*time.Second, "B to apply", func() bool { return b.Stats().Applied == 10 })
	if err := c.Del(context.Background(), b.SeqKey(p)).Err(); err != nil {
		t.Fatal(err)
	}
	publishDelete(t, a, p, "after-reset") // seq 1 again
	waitFor(t, 5*time.Second, "the reset", func() bool { return rb.HasAll(invalidation.CauseSeqReset) })
	if st := b.Stats(); st.SeqResets < 1 || st.Gaps != 0 {
		t.Errorf("resets %d, gaps %d; want >= 1, 0", st.SeqResets, st.Gaps)
	}
	// Tracking follows the new sequence: the next messages apply.
	for i := 0; i < 3; i++ {
		publishDelete(t, a, p, "k")
	}
	waitFor(t, 5*time.Second, "B to apply after the reset", func() bool { return b.Stats().Applied >= 13 })
}

// TestRedisClusterStartUnreachable: no master can be listed; Start gives
// up, the bus keeps trying, Close stops it.
func TestRedisClusterStartUnreachable(t *testing.T) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer c.Close()
	b, err := invalidation.New(c, invalidation.Config{}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Start(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start: got %v, want DeadlineExceeded", err)
	}
	if h := b.Health(); h.Healthy {
		t.Errorf("Health: got healthy without a subscription")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
