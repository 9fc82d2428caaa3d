package tiered

import (
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
