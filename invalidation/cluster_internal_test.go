package invalidation

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
)

type causeLog struct {
	mu   sync.Mutex
	alls []Cause
	keys int
}

func (h *causeLog) InvalidateKeys(k []string) { h.mu.Lock(); h.keys += len(k); h.mu.Unlock() }
func (h *causeLog) InvalidateAll(c Cause)     { h.mu.Lock(); h.alls = append(h.alls, c); h.mu.Unlock() }
func (h *causeLog) has(c Cause) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.alls, c)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, what, cond)
}

// TestSyncSubsFollowsMasters: when the set of masters changes, the bus
// closes the departed master's subscription, opens one on the new master,
// invalidates everything, and repairs again once the new one is confirmed.
func TestSyncSubsFollowsMasters(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	h := &causeLog{}
	// Long intervals: only this test changes the subscriptions.
	b, err := New(c, Config{Namespace: "t", AntiEntropyInterval: time.Minute}, h)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nsubs := func() int {
		h := b.hub.Load()
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.subs)
	}
	if n := nsubs(); n != 3 {
		t.Fatalf("subscriptions after Start: %d, want 3", n)
	}
	topo, err := b.hub.Load().look(ctx)
	if err != nil {
		t.Fatal(err)
	}
	less := topology{nodes: maps.Clone(topo.nodes), slots: topo.slots}
	for addr := range less.nodes {
		delete(less.nodes, addr)
		break
	}
	b.hub.Load().syncSubs(less) // a master left
	if n := nsubs(); n != 2 {
		t.Fatalf("subscriptions after a master left: %d, want 2", n)
	}
	eventually(t, "InvalidateAll(server_changed)", func() bool { return h.has(CauseServerChanged) })
	if !b.Health().Healthy {
		t.Errorf("unhealthy with every remaining subscription confirmed: %+v", b.Health())
	}
	b.hub.Load().syncSubs(topo) // and (re)joined
	if n := nsubs(); n != 3 {
		t.Fatalf("subscriptions after a master joined: %d, want 3", n)
	}
	eventually(t, "the new subscription's repair and health", func() bool {
		return h.has(CauseResubscribe) && b.Health().Healthy
	})
	// Messages from every master arrive again, each applied once: plain
	// ones from every master (two copies each), sharded ones from their
	// slot's master only.
	a, _ := New(c, Config{Namespace: "t", DisableShardedPubSub: true}, &causeLog{})
	for _, p := range []int{0, 8000, 16000} {
		if err := a.Publish(ctx, p, a.EncodeDelete(p, []string{"k"})); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "three messages", func() bool { return b.Stats().Applied == 3 })
	eventually(t, "their six copies", func() bool { return b.Stats().Duplicates == 6 })
	sh, _ := New(c, Config{Namespace: "t"}, &causeLog{})
	for _, p := range []int{1, 8001, 16001} {
		if err := sh.Publish(ctx, p, sh.EncodeDelete(p, []string{"k"})); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "three sharded messages", func() bool { return b.Stats().Applied == 6 })
	if d := b.Stats().Duplicates; d != 6 {
		t.Errorf("duplicates after three sharded messages: %d, want still 6 (a shard channel's message reaches one master's subscription)", d)
	}
}

// allSlotsBus starts a bus on the 3-master cluster whose every slot has had
// traffic (so every anti-entropy round reads 16384 sequence keys).
func allSlotsBus(tb testing.TB) (*Bus, *causeLog, []int) {
	cl := redistest.StartCluster(tb)
	c := cl.Client()
	h := &causeLog{}
	b, err := New(c, Config{Namespace: "t", AntiEntropyInterval: -1, BufferSize: 1 << 17}, h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	pipe := c.Pipeline()
	for p := 0; p < hashslot.Count; p++ {
		b.PublishPipelined(ctx, pipe, p, b.EncodeDelete(p, []string{"k"}))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		tb.Fatal(err)
	}
	tracked := func() int {
		b.trackMu.Lock()
		defer b.trackMu.Unlock()
		return len(b.last)
	}
	redistest.WaitFor(tb, 10*time.Second, "every slot tracked", func() bool { return tracked() == hashslot.Count })
	all := make([]int, hashslot.Count)
	for i := range all {
		all[i] = i
	}
	return b, h, all
}

// TestClusterAERoundAllSlots: an anti-entropy round in which every slot had
// traffic reads the sequence keys of all 16384 slots, and finds nothing to
// repair. (How long a round takes is BenchmarkClusterAERoundAllSlots's
// business: a timed unit test would fail on a busy machine.)
func TestClusterAERoundAllSlots(t *testing.T) {
	b, h, all := allSlotsBus(t)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		b.retouch(all)
		start := time.Now()
		n, err := b.checkSequences(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d over %d touched slots, 3 masters: %v", i, hashslot.Count, time.Since(start))
		if n != hashslot.Count {
			t.Fatalf("round %d read %d sequence keys, want %d", i, n, hashslot.Count)
		}
	}
	if h.has(CauseSeqReset) || h.has(CauseLostTail) {
		t.Errorf("repairs without a fault: reset %v, lost tail %v", h.has(CauseSeqReset), h.has(CauseLostTail))
	}
}

// BenchmarkClusterAERoundAllSlots times an anti-entropy round that reads all
// 16384 sequence keys on the 3-master cluster; compare with
// AntiEntropyInterval (1 s by default).
func BenchmarkClusterAERoundAllSlots(b *testing.B) {
	bus, _, all := allSlotsBus(b)
	ctx := context.Background()
	var n int
	b.ResetTimer()
	for range b.N {
		bus.retouch(all)
		var err error
		if n, err = bus.checkSequences(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "keys/round")
}

// pathFeed returns a function that hands b, as received on subscription
// path, an opDelete of key numbered seq on partition 0, published by another
// instance.
func pathFeed(t *testing.T, b *Bus) func(path int, seq uint64, key string) {
	other := InstanceID{7}
	return func(path int, seq uint64, key string) {
		t.Helper()
		body := encode(other, 0, opDelete, time.Now().UnixNano(), []string{key}, nil)
		b.handle(item{payload: string(wire.AppendSeq(body, seq)), recv: time.Now(), path: path}, nil)
	}
}

// multiPathBus is an unstarted bus on miniredis that tracks sequences as on
// Redis Cluster (one subscription per master, fed by pathFeed).
func multiPathBus(t *testing.T) (*Bus, *countingHandler, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	h := &countingHandler{}
	b, err := New(c, Config{}, h)
	if err != nil {
		t.Fatal(err)
	}
	b.multiPath = true
	return b, h, mr
}

// TestClusterResetAfterResetRepair: anti-entropy repairs a reset (Redis
// below what was applied) and tracks from Redis's value; the paths keep
// their memory, lowered to that value. A second reset before the next
// message on each path still goes backwards and is applied; messages of
// the new numbering pass as usual (first copy applied, the other a
// duplicate, no suspicion).
func TestClusterResetAfterResetRepair(t *testing.T) {
	// setup: ten messages on two paths, then the key is reset and three
	// messages of the new numbering are in flight: anti-entropy reads 3.
	setup := func(t *testing.T) (*Bus, *countingHandler, *miniredis.Miniredis, func(path int, seq uint64, key string)) {
		b, h, mr := multiPathBus(t)
		feed := pathFeed(t, b)
		for s := uint64(1); s <= 10; s++ {
			feed(1, s, "k")
			feed(2, s, "k")
		}
		mr.Set(b.SeqKey(0), "3")
		if _, err := b.checkSequences(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := b.Stats().SeqResets; n != 1 {
			t.Fatalf("SeqResets %d after the reset, want 1", n)
		}
		return b, h, mr, feed
	}
	t.Run("second reset", func(t *testing.T) {
		b, h, mr, feed := setup(t)
		mr.Del(b.SeqKey(0))
		before := h.keys
		feed(1, 1, "fresh")
		feed(2, 1, "fresh")
		if h.keys == before {
			t.Errorf("the first invalidation after a second reset (seq 1, last 3) was dropped as a copy (Duplicates %d)", b.Stats().Duplicates)
		}
	})
	t.Run("new numbering", func(t *testing.T) {
		b, h, _, feed := setup(t)
		for s := uint64(4); s <= 5; s++ {
			before, dups := h.keys, b.Stats().Duplicates
			feed(1, s, "n")
			feed(2, s, "n")
			if h.keys != before+1 || b.Stats().Duplicates != dups+1 {
				t.Fatalf("seq %d after the repair: %d applied, %d duplicates; want 1 and 1", s, h.keys-before, b.Stats().Duplicates-dups)
			}
		}
		if tr := b.last[0]; tr.suspect {
			t.Fatalf("suspect after the new numbering passed the repaired value: %+v", tr)
		}
	})
}
