package tiered

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	b := &breaker{threshold: 2, cooldown: time.Second, now: func() time.Time { return now }}
	step := func(what string, wantAllow bool, wantState BreakerState) {
		t.Helper()
		if got := b.allow(); got != wantAllow {
			t.Fatalf("%s: allow() = %v, want %v", what, got, wantAllow)
		}
		if st, _ := b.snapshot(); st != wantState {
			t.Fatalf("%s: state %v, want %v", what, st, wantState)
		}
	}
	step("fresh", true, BreakerClosed)
	b.record(true)
	step("one failure", true, BreakerClosed)
	b.record(true)
	step("two failures open it", false, BreakerOpen)
	now = now.Add(999 * time.Millisecond)
	step("still cooling down", false, BreakerOpen)
	now = now.Add(time.Millisecond)
	step("cooldown over: one probe", true, BreakerHalfOpen)
	step("only one probe at a time", false, BreakerHalfOpen)
	b.record(true)
	step("failed probe reopens", false, BreakerOpen)
	now = now.Add(time.Second)
	step("next probe", true, BreakerHalfOpen)
	// The probe never reports (its caller returned early): after another
	// cooldown a new probe goes through instead of the breaker sticking.
	now = now.Add(time.Second)
	step("stuck probe replaced", true, BreakerHalfOpen)
	b.record(false)
	step("successful probe closes", true, BreakerClosed)
	if _, opened := b.snapshot(); opened != 2 {
		t.Fatalf("opened %d times, want 2", opened)
	}
	off := &breaker{threshold: -1, now: time.Now}
	for i := 0; i < 10; i++ {
		off.record(true)
	}
	if !off.allow() {
		t.Fatalf("a disabled breaker refused a call")
	}
}

// The breaker's changes reach changed one at a time and in the order they
// happened, whatever goroutines made them: each event's From is the
// previous event's To, and the last To is the state now. A change made
// while changed runs (here, by another goroutine while the first event's
// callback is held) is delivered after that callback returns, never beside
// it.
func TestBreakerChangedInOrder(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(0, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var (
		events  []BreakerEvent
		inside  atomic.Int32
		overlap atomic.Bool
		entered = make(chan struct{})
		hold    = make(chan struct{})
	)
	b := &breaker{threshold: 1, cooldown: time.Second, now: clock}
	b.changed = func(from, to BreakerState) {
		if inside.Add(1) > 1 {
			overlap.Store(true)
		}
		defer inside.Add(-1)
		if from == BreakerClosed { // the first change: hold it
			close(entered)
			<-hold
		}
		mu.Lock()
		events = append(events, BreakerEvent{From: from, To: to})
		mu.Unlock()
	}
	first := make(chan struct{})
	go func() {
		defer close(first)
		b.record(true) // closed -> open; its callback is held
	}()
	<-entered
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if !b.allow() { // open -> half-open, while the first callback is held
		t.Fatal("cooldown over, but no probe allowed")
	}
	close(hold)
	<-first
	mu.Lock()
	defer mu.Unlock()
	want := []BreakerEvent{{From: BreakerClosed, To: BreakerOpen}, {From: BreakerOpen, To: BreakerHalfOpen}}
	if !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}
	if overlap.Load() {
		t.Error("changed ran on two goroutines at once")
	}
	if st, _ := b.snapshot(); len(events) > 0 && events[len(events)-1].To != st {
		t.Errorf("last event's To %v, but the state is %v", events[len(events)-1].To, st)
	}
}

// A changed that panics (only a bug could: Cache.breakerChanged recovers
// the Observer's panics) leaves the breaker usable and the next change
// still passed on.
func TestBreakerChangedPanics(t *testing.T) {
	now := time.Unix(0, 0)
	var got []BreakerState
	b := &breaker{threshold: 1, cooldown: time.Second, now: func() time.Time { return now }}
	b.changed = func(from, to BreakerState) {
		got = append(got, to)
		if to == BreakerOpen {
			panic("changed bug")
		}
	}
	func() {
		defer func() { _ = recover() }()
		b.record(true)
	}()
	now = now.Add(time.Second)
	if !b.allow() {
		t.Fatal("cooldown over, but no probe allowed")
	}
	b.record(false)
	if want := []BreakerState{BreakerOpen, BreakerHalfOpen, BreakerClosed}; !slices.Equal(got, want) {
		t.Errorf("changes passed on %v, want %v", got, want)
	}
}
