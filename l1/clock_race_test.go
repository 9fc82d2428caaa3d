package l1

import (
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond for up to 10 s and reports whether it held.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
	return true
}

// stripeOf returns a key whose stripe index is i.
func stripeOf[V any](c *Cache[V], i int) string {
	for n := 0; ; n++ {
		k := "k" + time.Duration(n).String()
		if int(c.hash(k)>>(64-6)) == i {
			return k
		}
	}
}

// TestStagedGetWakeNoDeadlock: a Get that finds its stripe's stage
// non-empty while the clock is stopped must not wait for the clock's mu
// while it holds the stripe's lock: a clock woken meanwhile by another
// reader ticks, and its flush holds the clock's mu while it takes the
// stripe's lock.
func TestStagedGetWakeNoDeadlock(t *testing.T) {
	c, err := New[int](Config{MaxEntries: 1000, ClockResolution: time.Millisecond + 3*time.Microsecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := c.clk
	if !waitFor(func() bool { return k.state.Load() == clockStopped }) {
		t.Fatal("the clock did not stop within 10s without reads")
	}
	// Stage a fill of key by hand, as a Fill racing the clock's stop would
	// leave it: staged, pending, clock stopped.
	key := stripeOf(c, 5)
	h := c.hash(key)
	st := c.stageOf(h)
	st.mu.Lock()
	st.hash[0], st.ents[0], st.costs[0] = h, &entry[int]{key: key, epoch: 1, exp: noExpiry, value: 1}, 1
	st.n.Store(1)
	c.pending.Store(true)
	st.mu.Unlock()

	blocked, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	k.hookWake = func() {
		if first.CompareAndSwap(false, true) {
			close(blocked)
			<-release
		}
	}
	got := make(chan struct{})
	go func() {
		c.Get(key)
		close(got)
	}()
	<-blocked
	k.read() // another reader wakes the clock
	if !waitFor(func() bool { return !c.pending.Load() }) {
		t.Fatal("the woken clock did not flush within 10s")
	}
	close(release)
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("Get and the clock's flush deadlocked (stage lock vs clock mu)")
	}
	c.Close()
}

// TestWaitDuringTickFlush: Wait must hand over every fill staged before it
// was called, even while a clock tick is flushing (the tick has already
// cleared pending).
func TestWaitDuringTickFlush(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Millisecond + 5*time.Microsecond}, nil)
	blocked, release := blockHandOver(c)
	k1, k2 := stripeOf(c, 3), stripeOf(c, 40)
	c.clk.read()    // running, and cannot stop while we hold mu
	c.clk.mu.Lock() // no tick flushes between the two fills
	c.Fill(c.Reserve(k1), 1, 0)
	c.Fill(c.Reserve(k2), 2, 0)
	c.clk.mu.Unlock()
	c.clk.read() // the clock runs: its next tick flushes both stripes
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("no tick flushed within 10s")
	}
	waited := make(chan struct{})
	go func() {
		c.Wait()
		close(waited)
	}()
	if settles(waited) {
		if n := c.stageOf(c.hash(k2)).n.Load(); n != 0 {
			t.Errorf("Wait returned with %d fill(s) still staged (a tick was flushing another stripe)", n)
		}
	}
	close(release)
	<-waited
	if got := c.Stats().Fills; got != 2 {
		t.Errorf("Stats.Fills = %d after Wait, want 2", got)
	}
}

// TestFillWakesClock: a fill staged while the clock is stopped is handed
// over by a tick, even if it has no TTL and nothing reads the cache.
func TestFillWakesClock(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 1000, ClockResolution: time.Millisecond + 7*time.Microsecond}, nil)
	if !waitFor(func() bool { return c.clk.state.Load() == clockStopped }) {
		t.Fatal("the clock did not stop within 10s without reads")
	}
	if !c.Fill(c.Reserve("k"), 1, 0) {
		t.Fatal("Fill = false")
	}
	if !waitFor(func() bool { return c.Stats().Fills == 1 }) {
		t.Fatalf("a staged fill was not handed over within 10s (clock state %d, pending %v)",
			c.clk.state.Load(), c.pending.Load())
	}
}

// TestClockReacquireWhileClosing: a Cache created while the last Cache of
// its resolution is closing gets a clock that ticks (not the one being torn
// down), and both clocks' goroutines end (goleak).
func TestClockReacquireWhileClosing(t *testing.T) {
	const res = time.Millisecond + 11*time.Microsecond
	for round := 0; round < 50; round++ {
		a, err := New[int](Config{MaxEntries: 100, ClockResolution: res}, nil)
		if err != nil {
			t.Fatal(err)
		}
		fill(t, a, "k", 1, time.Hour)
		closed := make(chan struct{})
		go func() {
			a.Close()
			close(closed)
		}()
		b, err := New[int](Config{MaxEntries: 100, ClockResolution: res}, nil)
		if err != nil {
			t.Fatal(err)
		}
		<-closed
		if !b.Fill(b.Reserve("k"), 2, time.Hour) {
			t.Fatal("Fill = false")
		}
		if !waitFor(func() bool { return b.Stats().Fills == 1 }) {
			t.Fatalf("round %d: no tick handed b's fill over within 10s", round)
		}
		b.Wait() // handed over is not yet applied
		wantHit(t, b, "k", 2)
		b.Close()
	}
}
