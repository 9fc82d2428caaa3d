package tiered

import (
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is the circuit breaker's state.
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
	defer b.mu.Unlock()
	switch b.state {
	case BreakerClosed:
		return true
	case BreakerOpen:
		if b.now().Before(b.openUntil) {
			return false
		}
		b.state = BreakerHalfOpen
		b.openUntil = b.now().Add(b.cooldown) // the probe's own deadline
		return true
	default: // half-open: one probe at a time, and another if it never reported
		if b.now().Before(b.openUntil) {
			return false
		}
		b.openUntil = b.now().Add(b.cooldown)
		return true
	}
}

// record reports the outcome of a call allow let through; it returns true
// when the state changed (for logging).
func (b *breaker) record(connFailure bool) (changed bool, state BreakerState) {
	if b.threshold <= 0 || (!connFailure && b.healthy.Load()) {
		return false, BreakerClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.healthy.Store(b.state == BreakerClosed && b.failures == 0) }()
	prev := b.state
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
	return prev != b.state, b.state
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
