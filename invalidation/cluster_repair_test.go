package invalidation_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// Redis Cluster repairs within the documented bound, however many slots
// are in use.

// publishAllSlots publishes one delete of key on every hash slot, pipelined.
func publishAllSlots(t *testing.T, c *redis.ClusterClient, a *invalidation.Bus, key string) {
	t.Helper()
	ctx := context.Background()
	pipe := c.Pipeline()
	for p := 0; p < hashslot.Count; p++ {
		a.PublishPipelined(ctx, pipe, p, a.EncodeDelete(p, []string{key}))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("publishing on every slot: %v", err)
	}
}

// waitRounds waits until b has completed n more anti-entropy rounds.
func waitRounds(t *testing.T, b *invalidation.Bus, n uint64) {
	t.Helper()
	r0 := b.Stats().AERounds
	waitFor(t, 30*time.Second, "anti-entropy rounds", func() bool { return b.Stats().AERounds >= r0+n })
}

// publishEachApplied publishes a delete of each key of want through a on
// partition p (one message per key, in order) and waits until rb has been
// handed every one of them.
func publishEachApplied(t *testing.T, a *invalidation.Bus, p int, rb *recorder, what string, want []string) {
	t.Helper()
	for _, k := range want {
		publishDelete(t, a, p, k)
	}
	waitFor(t, 5*time.Second, what, func() bool {
		keys := rb.Keys()
		for _, k := range want {
			if !slices.Contains(keys, k) {
				return false
			}
		}
		return true
	})
}

// TestRedisClusterSeqResetAmongAllSlots: with all 16384 slots tracked, the
// sequence key of one slot is deleted (as an eviction or a flush would) and
// that slot gets a write. Its invalidation is applied at once (not dropped
// as a copy), and the reset is repaired within 2 anti-entropy intervals
// (rounds used to take turns over 1024 keys: up to 16 intervals).
func TestRedisClusterSeqResetAmongAllSlots(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	const iv = 300 * time.Millisecond
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: iv, BufferSize: 1 << 17, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1, BufferSize: 1 << 17}, newRecorder())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v", b.Stats(), rb.Alls())
		}
	})
	const p = 12345
	publishAllSlots(t, c, a, "w")
	for i := 0; i < 3; i++ {
		publishDelete(t, a, p, "w") // so that the reset goes visibly backwards
	}
	waitFor(t, 30*time.Second, "B to apply one message per slot", func() bool { return b.Stats().Applied == hashslot.Count+3 })
	waitRounds(t, b, 2)
	if rb.HasAll(invalidation.CauseSeqReset) {
		t.Fatalf("reset repair before any reset: %v", rb.Alls())
	}

	if err := c.Del(context.Background(), b.SeqKey(p)).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	publishDelete(t, a, p, "after-reset") // sequence 1 again, below B's last (4)
	waitFor(t, 30*time.Second, "the reset repair", func() bool { return rb.HasAll(invalidation.CauseSeqReset) })
	took := time.Since(start)
	t.Logf("reset of 1 slot among %d tracked: repaired after %v (interval %v)", hashslot.Count, took, iv)
	if took > 2*iv {
		t.Errorf("reset repaired after %v, want within 2 intervals (%v)", took, 2*iv)
	}
	if !slices.Contains(rb.Keys(), "after-reset") {
		t.Errorf("the write after the reset was not applied (dropped as a copy)")
	}
	// Tracking follows the new numbering: the next write is applied once.
	before := b.Stats()
	publishDelete(t, a, p, "next")
	waitFor(t, 5*time.Second, "the next write", func() bool { return slices.Contains(rb.Keys(), "next") })
	waitRounds(t, b, 2)
	if st := b.Stats(); st.Applied != before.Applied+1 || st.Gaps != before.Gaps {
		t.Errorf("after the repair: applied %d -> %d, gaps %d -> %d; want one more applied, no gap", before.Applied, st.Applied, before.Gaps, st.Gaps)
	}
}

// TestRedisClusterFlushOtherMaster: FLUSHALL on a master that does not
// own slot 0 (where the single epoch key used to live) is found by that
// master's own epoch key within 2 anti-entropy intervals, and a write on
// one of its slots right after the flush is applied.
func TestRedisClusterFlushOtherMaster(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	ctx := context.Background()
	const iv = 300 * time.Millisecond
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: iv, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v", b.Stats(), rb.Alls())
		}
	})
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var victim *redistest.Server
	var p int
	for _, r := range slots {
		if r.Start <= 0 && 0 <= r.End {
			continue // the owner of slot 0
		}
		for _, m := range cl.Masters {
			if m.Addr() == r.Nodes[0].Addr {
				victim, p = m, r.Start+7
			}
		}
	}
	if victim == nil {
		t.Fatalf("no master without slot 0 in %v", slots)
	}
	for i := 0; i < 5; i++ {
		publishDelete(t, a, p, "k")
	}
	waitFor(t, 5*time.Second, "B to apply", func() bool { return b.Stats().Applied == 5 })
	waitRounds(t, b, 2) // every master's epoch key read at least once
	if _, err := victim.Do(ctx, "FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	publishDelete(t, a, p, "after-flush") // sequence 1 again
	waitFor(t, 30*time.Second, "the flush to be found", func() bool { return rb.HasAll(invalidation.CauseEpoch) })
	took := time.Since(start)
	t.Logf("FLUSHALL on %s (not slot 0's owner): epoch repair after %v (interval %v)", victim.Addr(), took, iv)
	if took > 2*iv {
		t.Errorf("flush found after %v, want within 2 intervals (%v)", took, 2*iv)
	}
	waitFor(t, 5*time.Second, "the write after the flush", func() bool { return slices.Contains(rb.Keys(), "after-flush") })
}

// TestRedisClusterReplayKeepsNothingStale: a captured signed body replayed
// with a sequence far ahead makes B repair (a gap), and the genuine
// messages numbered below it are still applied at once, not dropped as
// copies until anti-entropy (here off in effect) reads the key.
func TestRedisClusterReplayKeepsNothingStale(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	ctx := context.Background()
	key := []byte("shared secret")
	p := masterPartitions(t, c)[1]
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", HMACKey: key, AntiEntropyInterval: time.Hour, Logger: zaptest.NewLogger(t)}, rb)
	a := startBus(t, c, invalidation.Config{Namespace: "t", HMACKey: key, AntiEntropyInterval: -1}, newRecorder())
	for i := 0; i < 3; i++ {
		publishDelete(t, a, p, "k")
	}
	waitFor(t, 5*time.Second, "B to apply", func() bool { return b.Stats().Applied == 3 })
	// The first anti-entropy round (at Start) is over; the next is an hour away.
	waitFor(t, 5*time.Second, "the first anti-entropy round", func() bool { return b.Stats().AERounds >= 1 })
	captured := a.EncodeDelete(p, []string{"replayed"})
	if err := c.Publish(ctx, b.Channel(), string(captured)+"1000000").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v", b.Stats(), rb.Alls())
		}
	})
	waitFor(t, 5*time.Second, "the replay's gap repair", func() bool { return rb.HasAll(invalidation.CauseGap) })
	want := []string{"real-0", "real-1", "real-2"}
	publishEachApplied(t, a, p, rb, "the genuine writes after the replay", want)
}

// TestRedisClusterSeqResetOvertaken: a slot's sequence key is reset and
// new writes climb past the old number before any round reads the key, so
// Redis never shows a value below what was applied. The writes numbered
// at or below the old last go backwards on their subscriptions: they are
// applied, and the next round repairs (CauseSeqReset) and tracks afresh.
func TestRedisClusterSeqResetOvertaken(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	p := masterPartitions(t, c)[0]
	const iv = 300 * time.Millisecond
	rb := newRecorder()
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: iv, Logger: zaptest.NewLogger(t)}, rb)
	// Plain messages: each reaches B on every master's subscription, the
	// case where a reset looks like a copy by its number.
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1, DisableShardedPubSub: true}, newRecorder())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("B's stats: %+v; InvalidateAll causes: %v", b.Stats(), rb.Alls())
		}
	})
	publishDelete(t, a, p, "w")
	publishDelete(t, a, p, "w")
	waitFor(t, 5*time.Second, "B to apply", func() bool { return b.Stats().Applied == 2 })
	if err := c.Del(context.Background(), b.SeqKey(p)).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	want := []string{"r1", "r2", "r3"} // sequences 1, 2 (at or below the old last) and 3
	publishEachApplied(t, a, p, rb, "the writes after the reset", want)
	waitFor(t, 30*time.Second, "the reset repair", func() bool { return rb.HasAll(invalidation.CauseSeqReset) })
	if took := time.Since(start); took > 2*iv {
		t.Errorf("reset repaired after %v, want within 2 intervals (%v)", took, 2*iv)
	}
	// Tracked afresh (at the latest one round later, once every copy of the
	// backwards writes has arrived): the next write is applied once, its
	// copies are duplicates.
	waitRounds(t, b, 2)
	before := b.Stats()
	publishDelete(t, a, p, "next")
	waitFor(t, 5*time.Second, "the next write and its copies", func() bool {
		return b.Stats().Duplicates == before.Duplicates+2
	})
	if st := b.Stats(); st.Applied != before.Applied+1 {
		t.Errorf("after the repair: applied %d -> %d, want one more", before.Applied, st.Applied)
	}
}
