package invalidation_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// Tests against real redis-server processes started by internal/redistest.

func TestRedisTwoBuses(t *testing.T) {
	s := redistest.StartServer(t)
	c := s.Client()
	ra, rb := newRecorder(), newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, ra)
	b := startBus(t, c, invalidation.Config{Namespace: "t"}, rb)
	for i := 0; i < 50; i++ {
		publishDelete(t, a, 0, fmt.Sprint("k", i))
	}
	waitFor(t, 5*time.Second, "B to apply 50 messages", func() bool { return b.Stats().Applied == 50 })
	waitFor(t, 5*time.Second, "A to see its 50 own messages", func() bool { return a.Stats().Own == 50 })
	if got := len(ra.Keys()); got != 0 {
		t.Errorf("A invalidated %d of its own keys, want 0", got)
	}
	if got := rb.Keys(); len(got) != 50 || got[0] != "k0" || got[49] != "k49" {
		t.Errorf("B invalidated %v, want k0..k49 in order", got)
	}
	if sb := b.Stats(); sb.Gaps != 0 || sb.InvalidateAllTotal() != 0 || sb.Disconnects != 0 {
		t.Errorf("B stats: %+v", sb)
	}
}

// TestRedisIdle: silences longer than the ping interval cost nothing.
func TestRedisIdle(t *testing.T) {
	s := redistest.StartServer(t)
	c := s.Client()
	rb := newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, invalidation.Config{Namespace: "t", PingInterval: 20 * time.Millisecond, AntiEntropyInterval: 50 * time.Millisecond}, rb)
	time.Sleep(300 * time.Millisecond) // idle on purpose: many ping cycles
	publishDelete(t, a, 0, "k")
	waitFor(t, 5*time.Second, "B to apply", func() bool { return b.Stats().Applied == 1 })
	if st := b.Stats(); st.Disconnects != 0 || st.Reconnects != 0 || st.Stalls != 0 || len(rb.Alls()) != 0 {
		t.Errorf("idle subscription: %+v, InvalidateAll %v; want no disconnect, reconnect, stall or repair", st, rb.Alls())
	}
}

// TestRedisClientKill: the server kills every pub/sub connection while A
// publishes; B notices, resubscribes, repairs twice and says why.
func TestRedisClientKill(t *testing.T) {
	s := redistest.StartServer(t)
	c := s.Client()
	rb := newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, invalidation.Config{Namespace: "t"}, rb)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			_ = a.Publish(ctx, 0, a.EncodeDelete(0, []string{fmt.Sprint("k", i)}))
			time.Sleep(200 * time.Microsecond)
		}
	}()
	waitFor(t, 5*time.Second, "traffic", func() bool { return b.Stats().Applied > 20 })
	if _, err := s.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatalf("CLIENT KILL: %v", err)
	}
	waitFor(t, 5*time.Second, "B to resubscribe", func() bool { return b.Stats().Reconnects >= 1 })
	applied := b.Stats().Applied
	waitFor(t, 5*time.Second, "traffic after resubscribing", func() bool { return b.Stats().Applied > applied+20 })
	cancel()
	wg.Wait()

	st := b.Stats()
	if st.Disconnects < 1 || st.InvalidateAll[invalidation.CauseDisconnect] < 1 || st.InvalidateAll[invalidation.CauseResubscribe] < 1 {
		t.Errorf("counters: disconnects %d, InvalidateAll(disconnect) %d, InvalidateAll(resubscribe) %d; want each >= 1",
			st.Disconnects, st.InvalidateAll[invalidation.CauseDisconnect], st.InvalidateAll[invalidation.CauseResubscribe])
	}
	alls := rb.Alls()
	d, r := slices.Index(alls, invalidation.CauseDisconnect), slices.Index(alls, invalidation.CauseResubscribe)
	if d < 0 || r < d {
		t.Errorf("InvalidateAll causes %v: want disconnect, then resubscribe", alls)
	}
	if !b.Health().Healthy {
		t.Errorf("Health after recovery: got %+v, want healthy", b.Health())
	}
	t.Logf("B after kill: disconnects %d, reconnects %d, gaps %d, applied %d, InvalidateAll %v",
		st.Disconnects, st.Reconnects, st.Gaps, st.Applied, alls)
}

// TestRedisDropHook: gaps detected equal drops injected, on a real server.
func TestRedisDropHook(t *testing.T) {
	s := redistest.StartServer(t)
	c := s.Client()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}
	var mu sync.Mutex
	dropped := 0
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool {
		if seq%10 == 5 { // isolated drops, each followed by more traffic
			mu.Lock()
			dropped++
			mu.Unlock()
			return true
		}
		return false
	})
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, cfg, newRecorder())
	for i := 0; i < 200; i++ {
		publishDelete(t, a, 0, "k")
	}
	waitFor(t, 5*time.Second, "B to see all 200", func() bool { return b.Stats().Applied == 180 })
	mu.Lock()
	defer mu.Unlock()
	if st := b.Stats(); st.Gaps != uint64(dropped) || dropped != 20 {
		t.Errorf("gaps %d, drops %d; want equal, 20", st.Gaps, dropped)
	}
}

// TestRedisLostTail: the last message is lost, no traffic follows.
func TestRedisLostTail(t *testing.T) {
	s := redistest.StartServer(t)
	c := s.Client()
	rb := newRecorder()
	const interval = 100 * time.Millisecond
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: interval}
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool { return seq == 10 })
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, cfg, rb)
	for i := 0; i < 10; i++ {
		publishDelete(t, a, 0, "k")
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "the lost tail repair", func() bool { return rb.HasAll(invalidation.CauseLostTail) })
	t.Logf("lost tail repaired %v after the last publish (interval %v)", time.Since(start), interval)
	if st := b.Stats(); st.LostTails != 1 || st.Gaps != 0 {
		t.Errorf("lost tails %d, gaps %d; want 1, 0", st.LostTails, st.Gaps)
	}
}

// TestRedisRestart: the server restarts without persistence; the epoch key
// and run id change, the sequence resets, and B repairs for each.
func TestRedisRestart(t *testing.T) {
	s := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: 1})
	defer c.Close()
	rb := newRecorder()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: 50 * time.Millisecond, PingInterval: 100 * time.Millisecond}
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, cfg, rb)
	publishDelete(t, a, 0, "k")
	waitFor(t, 5*time.Second, "B to apply and run anti-entropy", func() bool {
		st := b.Stats()
		return st.Applied == 1 && st.AERounds >= 2
	})
	s.Restart()
	waitFor(t, 10*time.Second, "restart detection", func() bool {
		return rb.HasAll(invalidation.CauseServerChanged) && rb.HasAll(invalidation.CauseEpoch) &&
			rb.HasAll(invalidation.CauseResubscribe)
	})
	waitFor(t, 10*time.Second, "health", func() bool { return b.Health().Healthy })
	// After the restart the sequence starts again at 1: no spurious gap.
	publishDelete(t, a, 0, "k2")
	waitFor(t, 5*time.Second, "B to apply after restart", func() bool { return b.Stats().Applied == 2 })
	t.Logf("InvalidateAll causes after restart: %v", rb.Alls())
}

// TestRedisStall: the server stops answering (SIGSTOP); B reports a stall
// and unhealthy, replaces the connection, and recovers after SIGCONT.
func TestRedisStall(t *testing.T) {
	s := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, ReadTimeout: 200 * time.Millisecond, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	rb := newRecorder()
	const ping = 50 * time.Millisecond
	b := startBus(t, c, invalidation.Config{Namespace: "t", PingInterval: ping, AntiEntropyInterval: 100 * time.Millisecond}, rb)
	s.Pause()
	waitFor(t, 5*time.Second, "stall detection", func() bool { return rb.HasAll(invalidation.CauseStall) })
	if h := b.Health(); h.Healthy {
		t.Errorf("Health while stalled: got healthy")
	}
	// A stall is counted once per silent connection, and the bus replaces
	// the connection after 4 pings of silence: a second stall means the
	// replacement went silent too, so it has happened.
	waitFor(t, 5*time.Second, "the silent connection to be replaced", func() bool { return b.Stats().Stalls >= 2 })
	s.Resume()
	waitFor(t, 10*time.Second, "recovery", func() bool { return b.Health().Healthy && rb.HasAll(invalidation.CauseResubscribe) })
	t.Logf("stats after stall: %+v", b.Stats())
}

// TestRedisCluster: messages for partitions owned by every master reach the
// subscriber (one subscription per master); anti-entropy works across masters.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	rb := newRecorder()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: 100 * time.Millisecond, Logger: zaptest.NewLogger(t)}
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool { return p == 16000 && seq == 3 })
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, cfg, rb)
	parts := []int{0, 8000, 16000} // one slot on each of the three masters
	for _, p := range parts {
		for i := 0; i < 3; i++ {
			publishDelete(t, a, p, fmt.Sprintf("p%d-%d", p, i))
		}
	}
	waitFor(t, 10*time.Second, "B to apply 8 of 9", func() bool { return b.Stats().Applied == 8 })
	keys := rb.Keys()
	for _, p := range parts {
		if !slices.Contains(keys, fmt.Sprintf("p%d-0", p)) {
			t.Errorf("no message from partition %d arrived (got %v)", p, keys)
		}
	}
	// The dropped last message of slot 16000 is found by anti-entropy,
	// which reads that slot's sequence key on its master.
	waitFor(t, 10*time.Second, "lost tail on the cluster", func() bool { return rb.HasAll(invalidation.CauseLostTail) })
	st := b.Stats()
	if st.Gaps != 0 || st.SeqResets != 0 || st.LostTails < 1 || st.AEErrors != 0 {
		t.Errorf("cluster stats: gaps %d, resets %d, lost tails %d, anti-entropy errors %d; want 0, 0, >= 1, 0",
			st.Gaps, st.SeqResets, st.LostTails, st.AEErrors)
	}
	// A message slower than the grace may be declared lost too (a safe
	// false positive); when it arrives it is late, not a reset.
	for _, c := range rb.Alls() {
		if c != invalidation.CauseLostTail {
			t.Errorf("InvalidateAll causes: %v, want only lost_tail", rb.Alls())
			break
		}
	}
}

// TestRedisPropagationLatency publishes ~1000 messages/s for a few seconds
// from A and measures encode-to-handler latency on B.
func TestRedisPropagationLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a few seconds")
	}
	s := redistest.StartServer(t)
	c := s.Client()
	b := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	lag := runAtRate(t, a, b, 1000, 3*time.Second)
	t.Logf("propagation A publish -> B handler, %d msgs at 1k/s: p50 %v, p99 %v, p99.9 %v, max %v",
		lag.Count, lag.P50, lag.P99, lag.P999, lag.Max)
	if lag.P99 > 50*time.Millisecond { // the 2ms target is for an unloaded, non-race run
		t.Errorf("p99 %v: far above the 2ms target", lag.P99)
	}
}

func runAtRate(tb testing.TB, a, b *invalidation.Bus, perSec int, d time.Duration) invalidation.LagStats {
	ctx := context.Background()
	n := int(d.Seconds() * float64(perSec))
	step := time.Second / time.Duration(perSec)
	start := time.Now()
	before := b.Stats().Applied
	for i := 0; i < n; i++ {
		if w := time.Until(start.Add(time.Duration(i) * step)); w > 0 {
			time.Sleep(w)
		}
		if err := a.Publish(ctx, 0, a.EncodeDelete(0, []string{"key"})); err != nil {
			tb.Fatalf("Publish: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Stats().Applied < before+uint64(n) {
		if time.Now().After(deadline) {
			tb.Fatalf("B applied %d of %d", b.Stats().Applied-before, n)
		}
		time.Sleep(time.Millisecond)
	}
	return b.Stats().Lag
}

// BenchmarkPropagation reports the latency percentiles of a 1k msgs/s run.
func BenchmarkPropagation(b *testing.B) {
	s := redistest.StartServer(b)
	c := s.Client()
	rb := newRecorder()
	bb, err := invalidation.New(c, invalidation.Config{Namespace: "t"}, rb)
	if err != nil {
		b.Fatal(err)
	}
	defer bb.Close()
	ba, _ := invalidation.New(c, invalidation.Config{Namespace: "t"}, newRecorder())
	defer ba.Close()
	if err := bb.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var lag invalidation.LagStats
	for i := 0; i < b.N; i++ {
		lag = runAtRate(b, ba, bb, 1000, 2*time.Second)
	}
	b.ReportMetric(float64(lag.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(lag.P99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(lag.P999.Microseconds()), "p99.9-µs")
}

// BenchmarkPublish measures the publish round trip (the wire script: sequence GET and SET, PUBLISH),
// next to a plain PUBLISH as the baseline.
func BenchmarkPublish(b *testing.B) {
	s := redistest.StartServer(b)
	c := s.Client()
	bus, _ := invalidation.New(c, invalidation.Config{Namespace: "t"}, newRecorder())
	defer bus.Close()
	ctx := context.Background()
	keys := []string{"user:1", "user:2"}
	b.Run("bus", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := bus.Publish(ctx, 0, bus.EncodeDelete(0, keys)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain-publish", func(b *testing.B) {
		b.ReportAllocs()
		body := bus.EncodeDelete(0, keys)
		for i := 0; i < b.N; i++ {
			if err := c.Publish(ctx, bus.Channel(), body).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
