package tiered

import (
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is the circuit breaker's state (Stats.L2.Breaker,
// Observer.BreakerChanged).
type BreakerState int

// Breaker states.
const (
	BreakerClosed   BreakerState = iota // Redis is used
	BreakerOpen                         // Redis is skipped until the cooldown ends
	BreakerHalfOpen                     // one probe is in progress
)

// String returns "closed", "open" or "half-open".
func (s BreakerState) String() string {
	switch s {
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "closed"
}

// breaker opens after a run of consecutive connection failures, stays open
// for a cooldown, then lets one probe through: its success closes the
// breaker, its failure opens it again.
type breaker struct {
	threshold int // <= 0: never opens
	cooldown  time.Duration
	now       func() time.Time
	// changed, if set, hears every change of state, called after mu is
	// released, in the order of the changes only as far as the callers'
	// goroutines allow.
	changed func(from, to BreakerState)

	// healthy is true while the breaker is closed with no failure counted:
	// then allow and a successful record need no lock. Written under mu.
	healthy atomic.Bool

	mu        sync.Mutex // guards the fields below
	state     BreakerState
	failures  int
	openUntil time.Time
	opened    uint64 // times the breaker opened
}

// allow reports whether a Redis call may go ahead.
func (b *breaker) allow() bool {
	if b.threshold <= 0 || b.healthy.Load() {
		return true
	}
	b.mu.Lock()
	ok, probe := b.allowLocked()
	b.mu.Unlock()
	if probe && b.changed != nil {
		b.changed(BreakerOpen, BreakerHalfOpen)
	}
	return ok
}

// allowLocked is allow under mu; probe reports a change from open to
// half-open.
func (b *breaker) allowLocked() (ok, probe bool) {
	switch b.state {
	case BreakerClosed:
		return true, false
	case BreakerOpen:
		if b.now().Before(b.openUntil) {
			return false, false
		}
		b.state = BreakerHalfOpen
		b.openUntil = b.now().Add(b.cooldown) // the probe's own deadline
		return true, true
	default: // half-open: one probe at a time, and another if it never reported
		if b.now().Before(b.openUntil) {
			return false, false
		}
		b.openUntil = b.now().Add(b.cooldown)
		return true, false
	}
}

// record reports the outcome of a call allow let through; changed is true
// when the breaker opened from closed or closed again (for logging): a
// failed half-open probe reopens it, which is no news during an outage.
func (b *breaker) record(connFailure bool) (changed bool, state BreakerState) {
	if b.threshold <= 0 || (!connFailure && b.healthy.Load()) {
		return false, BreakerClosed
	}
	b.mu.Lock()
	prev := b.state
	defer func() {
		now := b.state
		b.healthy.Store(now == BreakerClosed && b.failures == 0)
		b.mu.Unlock()
		if b.changed != nil && now != prev {
			b.changed(prev, now)
		}
	}()
	if !connFailure {
		b.failures = 0
		b.state = BreakerClosed
	} else {
		b.failures++
		if b.state == BreakerHalfOpen || b.failures >= b.threshold {
			if b.state != BreakerOpen {
				b.opened++
			}
			b.state = BreakerOpen
			b.openUntil = b.now().Add(b.cooldown)
		}
	}
	return prev != b.state && !(prev == BreakerHalfOpen && b.state == BreakerOpen), b.state
}

// release gives back a call that allow let through but that ended without
// telling anything about Redis (its caller's ctx ended): a half-open probe
// slot is freed at once, so the next call probes.
func (b *breaker) release() {
	if b.threshold <= 0 || b.healthy.Load() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == BreakerHalfOpen {
		b.openUntil = b.now()
	}
}

func (b *breaker) snapshot() (BreakerState, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.opened
}
