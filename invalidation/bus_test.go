package invalidation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

func TestNewRejectsNil(t *testing.T) {
	_, c := startMini(t)
	if _, err := invalidation.New(nil, invalidation.Config{}, newRecorder()); !errors.Is(err, invalidation.ErrNilClient) {
		t.Errorf("nil client: got %v, want ErrNilClient", err)
	}
	if _, err := invalidation.New(c, invalidation.Config{}, nil); !errors.Is(err, invalidation.ErrNilHandle) {
		t.Errorf("nil handler: got %v, want ErrNilHandle", err)
	}
}

func TestNames(t *testing.T) {
	_, c := startMini(t)
	b, err := invalidation.New(c, invalidation.Config{Namespace: "a{b}c"}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.Channel(), "a{b}c:inv"; got != want {
		t.Errorf("Channel: got %q, want %q", got, want)
	}
	for _, p := range []int{0, 1, 5000, hashslot.Count - 1} {
		if got := hashslot.Slot(b.SeqKey(p)); got != p {
			t.Errorf("Slot(SeqKey(%d)) = %d, want %d (key %q)", p, got, p, b.SeqKey(p))
		}
	}
	if b.SeqKey(-1) != b.SeqKey(hashslot.Count-1) || b.SeqKey(hashslot.Count) != b.SeqKey(0) {
		t.Errorf("out-of-range partitions are not reduced modulo %d", hashslot.Count)
	}
	if h := b.Health(); h.Healthy {
		t.Errorf("Health before Start: got healthy, want unhealthy")
	}
}

// TestTwoBusesMiniredis: a message from A is applied on B; A skips its own.
// Anti-entropy is off: miniredis does not order a PING's PONG after the
// messages published before it, so a round that reads the sequence key
// while A's own message is in flight may call its tail lost (a spurious
// clear-all on miniredis only; TestAntiEntropyNoFalseAlarm shows a real
// server has none), and this test asserts that A never clears for its own
// messages.
func TestTwoBusesMiniredis(t *testing.T) {
	_, c := startMini(t)
	ra, rb := newRecorder(), newRecorder()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}
	a := startBus(t, c, cfg, ra)
	b := startBus(t, c, cfg, rb)
	if h := b.Health(); !h.Healthy {
		t.Fatalf("Health after Start: got %+v, want healthy", h)
	}
	publishDelete(t, a, 0, "k1", "k2")
	publishDelete(t, a, 0, "k3")
	waitFor(t, 5*time.Second, "B to apply both messages", func() bool { return b.Stats().Applied == 2 })
	waitFor(t, 5*time.Second, "A to see its own messages", func() bool { return a.Stats().Own == 2 })
	if got, want := rb.Keys(), []string{"k1", "k2", "k3"}; !slices.Equal(got, want) {
		t.Errorf("B invalidated %v, want %v", got, want)
	}
	if got := ra.Keys(); len(got) != 0 {
		t.Errorf("A invalidated its own keys %v, want none", got)
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Published != 2 || sa.Applied != 0 || sb.Own != 0 || sb.Gaps != 0 || sb.InvalidateAllTotal() != 0 {
		t.Errorf("stats: A %+v, B %+v", sa, sb)
	}
	if sb.Lag.Count != 2 || sb.Lag.Max <= 0 {
		t.Errorf("B lag: got %+v, want 2 samples", sb.Lag)
	}
	// A clear from A reaches B as InvalidateAll(CauseClear), not A.
	if err := a.PublishClear(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "B to apply the clear", func() bool { return rb.HasAll(invalidation.CauseClear) })
	waitFor(t, 5*time.Second, "A to see its own clear", func() bool { return a.Stats().Own == 3 })
	if got := ra.Alls(); len(got) != 0 {
		t.Errorf("A invalidated all on its own clear: %v", got)
	}
}

// TestDropHookCountsGaps: every dropped message that is followed by another
// in its partition is one gap, and each gap invalidates everything.
func TestDropHookCountsGaps(t *testing.T) {
	_, c := startMini(t)
	rb := newRecorder()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}
	drops := map[uint64]bool{3: true, 7: true, 8: true, 15: true} // 7 and 8: one gap
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool { return p == 0 && drops[seq] })
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, cfg, rb)
	const n = 20
	for i := 0; i < n; i++ {
		publishDelete(t, a, 0, fmt.Sprint("k", i))
		publishDelete(t, a, 1, fmt.Sprint("p1-", i)) // another partition, no drops
	}
	waitFor(t, 5*time.Second, "B to handle every message", func() bool {
		s := b.Stats()
		return s.Applied == 2*n-uint64(len(drops))
	})
	s := b.Stats()
	if s.Gaps != 3 {
		t.Errorf("gaps: got %d, want 3 (drops 3, 7+8, 15)", s.Gaps)
	}
	if got := s.InvalidateAll[invalidation.CauseGap]; got == 0 || got > 3 {
		t.Errorf("InvalidateAll(gap): got %d, want 1..3", got)
	}
	for _, k := range rb.Keys() {
		if k == "k2" || k == "k6" || k == "k7" || k == "k14" { // seq = i+1
			t.Errorf("dropped key %s was applied", k)
		}
	}
}

// TestAntiEntropyLostTail: the last message is lost and nothing follows;
// anti-entropy finds the sequence key ahead and invalidates everything.
func TestAntiEntropyLostTail(t *testing.T) {
	_, c := startMini(t)
	rb := newRecorder()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: 50 * time.Millisecond}
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool { return seq == 5 })
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	b := startBus(t, c, cfg, rb)
	for i := 0; i < 5; i++ {
		publishDelete(t, a, 0, fmt.Sprint("k", i))
	}
	waitFor(t, 5*time.Second, "anti-entropy to find the lost tail", func() bool { return rb.HasAll(invalidation.CauseLostTail) })
	s := b.Stats()
	if s.LostTails != 1 || s.Gaps != 0 || s.Applied != 4 {
		t.Errorf("stats: got lost tails %d, gaps %d, applied %d; want 1, 0, 4", s.LostTails, s.Gaps, s.Applied)
	}
	// Repaired: the next message continues the sequence without a gap.
	publishDelete(t, a, 0, "k5")
	waitFor(t, 5*time.Second, "B to apply the next message", func() bool { return b.Stats().Applied == 5 })
	if s := b.Stats(); s.Gaps != 0 || s.SeqResets != 0 || s.LostTails != 1 {
		t.Errorf("after repair: gaps %d, resets %d, lost tails %d; want 0, 0, 1", s.Gaps, s.SeqResets, s.LostTails)
	}
}

// TestAntiEntropyNoFalseAlarm: steady traffic, frequent rounds, no repairs,
// however busy the machine: anti-entropy fences the subscription with a
// PING before it calls a tail lost. A real server: miniredis does not order
// a PING's reply after the messages published before it.
func TestAntiEntropyNoFalseAlarm(t *testing.T) {
	c := redistest.StartServer(t).Client()
	rb := newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: 20 * time.Millisecond}, rb)
	for i := 0; i < 300; i++ {
		publishDelete(t, a, i%3, "k")
	}
	waitFor(t, 5*time.Second, "B to apply everything", func() bool { return b.Stats().Applied == 300 })
	round := b.Stats().AERounds
	waitFor(t, 5*time.Second, "two more anti-entropy rounds", func() bool { return b.Stats().AERounds >= round+2 })
	if got := rb.Alls(); len(got) != 0 {
		t.Errorf("InvalidateAll calls without any loss: %v", got)
	}
}

// TestFlushDetected: FLUSHALL removes the epoch and sequence keys.
func TestFlushDetected(t *testing.T) {
	mr, c := startMini(t)
	rb := newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: 20 * time.Millisecond}, rb)
	publishDelete(t, a, 0, "k")
	waitFor(t, 5*time.Second, "B to apply", func() bool { return b.Stats().Applied == 1 })
	waitFor(t, 5*time.Second, "an anti-entropy round", func() bool { return b.Stats().AERounds >= 2 })
	mr.FlushAll()
	waitFor(t, 5*time.Second, "the flush to be detected", func() bool {
		return rb.HasAll(invalidation.CauseEpoch) && rb.HasAll(invalidation.CauseSeqReset)
	})
}

// TestGarbageAndForged: a foreign client publishes junk on the channel.
func TestGarbageAndForged(t *testing.T) {
	key := []byte("shared secret")
	junk := []string{"", "hello", "\xce\x01garbage", string(make([]byte, 100))}

	t.Run("unsigned bus", func(t *testing.T) {
		_, c := startMini(t)
		rb := newRecorder()
		b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, rb)
		for _, j := range junk {
			if err := c.Publish(context.Background(), b.Channel(), j).Err(); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 5*time.Second, "rejects", func() bool { return b.Stats().DecodeRejects == uint64(len(junk)) })
		if got := rb.Keys(); len(got) != 0 {
			t.Errorf("keys invalidated by junk: %v", got)
		}
		for _, c := range rb.Alls() {
			if c != invalidation.CauseDecode {
				t.Errorf("InvalidateAll(%v) on junk, want only decode", c)
			}
		}
	})

	t.Run("signed bus", func(t *testing.T) {
		_, c := startMini(t)
		ra, rb := newRecorder(), newRecorder()
		a := startBus(t, c, invalidation.Config{Namespace: "t", HMACKey: key, AntiEntropyInterval: -1}, ra)
		b := startBus(t, c, invalidation.Config{Namespace: "t", HMACKey: key, AntiEntropyInterval: -1}, rb)
		intruder, err := invalidation.New(c, invalidation.Config{Namespace: "t", HMACKey: []byte("guess")}, newRecorder())
		if err != nil {
			t.Fatal(err)
		}
		unsigned, err := invalidation.New(c, invalidation.Config{Namespace: "t"}, newRecorder())
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		for _, j := range junk {
			if err := c.Publish(ctx, b.Channel(), j+"1").Err(); err != nil {
				t.Fatal(err)
			}
		}
		// Well-formed but forged or unsigned, through the real script.
		if err := intruder.Publish(ctx, 0, intruder.EncodeDelete(0, []string{"victim"})); err != nil {
			t.Fatal(err)
		}
		if err := unsigned.Publish(ctx, 0, unsigned.EncodeDelete(0, []string{"victim"})); err != nil {
			t.Fatal(err)
		}
		if err := unsigned.PublishClear(ctx); err != nil {
			t.Fatal(err)
		}
		want := uint64(len(junk) + 3)
		waitFor(t, 5*time.Second, "auth rejects", func() bool { return b.Stats().AuthRejects == want })
		// A genuine message still works.
		publishDelete(t, a, 1, "real")
		waitFor(t, 5*time.Second, "the genuine message", func() bool { return b.Stats().Applied == 1 })
		if got := rb.Keys(); !slices.Equal(got, []string{"real"}) {
			t.Errorf("B invalidated %v, want only [real]", got)
		}
		if got := rb.Alls(); len(got) != 0 {
			t.Errorf("InvalidateAll on forged messages: %v", got)
		}
		if s := b.Stats(); s.DecodeRejects != 0 {
			t.Errorf("decode rejects: got %d, want 0 (all counted as auth)", s.DecodeRejects)
		}
	})
}

func TestCloseIdempotentAndLifecycle(t *testing.T) {
	_, c := startMini(t)
	b, err := invalidation.New(c, invalidation.Config{}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); !errors.Is(err, invalidation.ErrStarted) {
		t.Errorf("second Start: got %v, want ErrStarted", err)
	}
	for i := 0; i < 3; i++ {
		if err := b.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	if err := b.Start(ctx); !errors.Is(err, invalidation.ErrClosed) {
		t.Errorf("Start after Close: got %v, want ErrClosed", err)
	}
	if err := b.PublishClear(ctx); !errors.Is(err, invalidation.ErrClosed) {
		t.Errorf("Publish after Close: got %v, want ErrClosed", err)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("the caller's client was closed: %v", err)
	}
	// Close without Start, concurrently.
	b2, _ := invalidation.New(c, invalidation.Config{}, newRecorder())
	done := make(chan struct{})
	for i := 0; i < 4; i++ {
		go func() { _ = b2.Close(); done <- struct{}{} }()
	}
	for i := 0; i < 4; i++ {
		<-done
	}
}

func TestStartTimesOutThenRecovers(t *testing.T) {
	// A port nobody listens on: Start gives up, the bus keeps trying.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer c.Close()
	b, err := invalidation.New(c, invalidation.Config{}, newRecorder())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := b.Start(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start: got %v, want DeadlineExceeded", err)
	}
	if h := b.Health(); h.Healthy || h.UnhealthySince.IsZero() || h.Reasons&invalidation.NotSubscribed == 0 {
		t.Errorf("Health: got %+v, want unhealthy with a time, not subscribed", h)
	}
	if b.Healthy() {
		t.Error("Healthy() true while Health() is not")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOverflow: a slow handler and a tiny queue; drops are counted and
// repaired by invalidating everything.
func TestOverflow(t *testing.T) {
	_, c := startMini(t)
	gate := make(chan struct{})
	rb := newRecorder()
	first := true
	rb.onKey = func([]string) {
		if first {
			first = false
			<-gate // the worker is stuck until the queue has overflowed
		}
	}
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, newRecorder())
	b := startBus(t, c, invalidation.Config{Namespace: "t", BufferSize: 2, AntiEntropyInterval: -1}, rb)
	for i := 0; i < 10; i++ {
		publishDelete(t, a, 0, fmt.Sprint("k", i))
	}
	waitFor(t, 5*time.Second, "drops", func() bool { return b.Stats().Dropped > 0 })
	if h := b.Health(); h.Healthy || h.Reasons&invalidation.Overflowed == 0 || !strings.Contains(h.Reasons.String(), "overflowed") {
		t.Errorf("Health during overflow: got %+v (%s), want unhealthy: overflowed", h, h.Reasons)
	}
	close(gate)
	waitFor(t, 5*time.Second, "the overflow repair", func() bool { return rb.HasAll(invalidation.CauseOverflow) })
	waitFor(t, 5*time.Second, "health", func() bool { return b.Health().Healthy })
	// The worker may still be applying the messages the queue held.
	waitFor(t, 5*time.Second, "every message dropped or applied", func() bool {
		s := b.Stats()
		return s.Dropped+s.Applied >= 10
	})
	if s := b.Stats(); s.Received != 10 || s.Dropped+s.Applied != 10 {
		t.Errorf("received %d, dropped %d, applied %d; want 10 = dropped + applied", s.Received, s.Dropped, s.Applied)
	}
}

func ExampleBus() {
	mr, _ := miniredisRun()
	defer mr.Close()
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	ctx := context.Background()

	printer := handlerFuncs{
		keys: func(keys []string) { fmt.Println("drop", keys) },
		all:  func(c invalidation.Cause) { fmt.Println("drop all:", c) },
	}
	// Anti-entropy off for this in-process miniredis only: it does not
	// order a PING's reply after the messages before it, which anti-entropy
	// needs to tell a late message from a lost one. Keep it on with Redis.
	cfg := invalidation.Config{Namespace: "shop", AntiEntropyInterval: -1}
	a, _ := invalidation.New(client, cfg, printer)
	b, _ := invalidation.New(client, cfg, printer)
	defer a.Close()
	defer b.Close()
	_ = b.Start(ctx)

	// What l2's write script does, through the bus's own script.
	_ = a.Publish(ctx, 0, a.EncodeDelete(0, []string{"cart:1", "cart:2"}))
	_ = a.PublishClear(ctx)
	for b.Stats().Applied < 2 {
		time.Sleep(time.Millisecond)
	}
	// Output:
	// drop [cart:1 cart:2]
	// drop all: clear
}

// ownRecorder is a recorder that also wants own messages.
type ownRecorder struct {
	*recorder
	mu      sync.Mutex
	own     []string
	clears  int
	ownSeen chan struct{}
}

func (r *ownRecorder) OwnKeys(keys []string) {
	r.mu.Lock()
	r.own = append(r.own, keys...)
	r.mu.Unlock()
}

func (r *ownRecorder) OwnClear() {
	r.mu.Lock()
	r.clears++
	r.mu.Unlock()
}

func (r *ownRecorder) snapshot() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.own), r.clears
}

// TestOwnHandler: a Handler that implements OwnHandler gets the bus's own
// messages there, and never through InvalidateKeys or InvalidateAll.
func TestOwnHandler(t *testing.T) {
	_, c := startMini(t)
	ra := &ownRecorder{recorder: newRecorder()}
	rb := newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "t"}, ra)
	b := startBus(t, c, invalidation.Config{Namespace: "t"}, rb)
	publishDelete(t, a, 0, "k1", "k2")
	if err := a.PublishClear(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "A to see its own messages", func() bool { return a.Stats().Own == 2 })
	waitFor(t, 5*time.Second, "B to apply both", func() bool { return b.Stats().Applied == 2 })
	own, clears := ra.snapshot()
	if !slices.Equal(own, []string{"k1", "k2"}) || clears != 1 {
		t.Errorf("OwnHandler got keys %v and %d clears, want [k1 k2] and 1", own, clears)
	}
	if got := ra.Keys(); len(got) != 0 {
		t.Errorf("A's InvalidateKeys got its own keys %v", got)
	}
	if got := ra.Alls(); len(got) != 0 {
		t.Errorf("A's InvalidateAll got its own clear: %v", got)
	}
}

func TestHealthReasonNames(t *testing.T) {
	all := invalidation.AllHealthReasons()
	var r invalidation.HealthReason
	seen := map[string]bool{}
	for _, one := range all {
		n := one.Names()
		if len(n) != 1 || n[0] != one.String() || seen[n[0]] || strings.ContainsAny(n[0], " ,") {
			t.Errorf("reason %d: names %v, string %q", one, n, one.String())
		}
		seen[n[0]] = true
		r |= one
	}
	if got := (invalidation.Disconnected | invalidation.Stalled).String(); got != "disconnected,stalled" {
		t.Errorf("two reasons: %q", got)
	}
	if len(r.Names()) != len(all) || invalidation.HealthReason(0).String() != "" {
		t.Errorf("all reasons: %v; none: %q", r.Names(), invalidation.HealthReason(0).String())
	}
}
