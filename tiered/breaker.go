package tiered

import (
	"sync"
	"sync/atomic"
	"time"
)

// breakerState is the circuit breaker's state.
type breakerState int

// Breaker states.
const (
	breakerClosed   breakerState = iota // Redis is used
	breakerOpen                         // Redis is skipped until the cooldown ends
	breakerHalfOpen                     // one probe is in progress
)

// String returns "closed", "open" or "half-open".
func (s breakerState) String() string {
	switch s {
	case breakerOpen:
		return "open"
	case breakerHalfOpen:
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
	state     breakerState
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
	case breakerClosed:
		return true
	case breakerOpen:
		if b.now().Before(b.openUntil) {
			return false
		}
		b.state = breakerHalfOpen
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

// record reports the outcome of a call allow let through; changed is true
// when the breaker opened from closed or closed again (for logging): a
// failed half-open probe reopens it, which is no news during an outage.
func (b *breaker) record(connFailure bool) (changed bool, state breakerState) {
	if b.threshold <= 0 || (!connFailure && b.healthy.Load()) {
		return false, breakerClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.healthy.Store(b.state == breakerClosed && b.failures == 0) }()
	prev := b.state
	if !connFailure {
		b.failures = 0
		b.state = breakerClosed
	} else {
		b.failures++
		if b.state == breakerHalfOpen || b.failures >= b.threshold {
			if b.state != breakerOpen {
				b.opened++
			}
			b.state = breakerOpen
			b.openUntil = b.now().Add(b.cooldown)
		}
	}
	return prev != b.state && !(prev == breakerHalfOpen && b.state == breakerOpen), b.state
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
	if b.state == breakerHalfOpen {
		b.openUntil = b.now()
	}
}

func (b *breaker) snapshot() (breakerState, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.opened
}
