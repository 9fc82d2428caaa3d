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
	// changed, if set, hears every change of state, in the order of the
	// changes and one call at a time, without mu held (see notify). It
	// must not panic (Cache.breakerChanged recovers the Observer's).
	changed func(from, to BreakerState)

	// healthy is true while the breaker is closed with no failure counted:
	// then allow and a successful record need no lock. Written under mu.
	healthy atomic.Bool

	mu        sync.Mutex // guards the fields below
	state     BreakerState
	failures  int
	openUntil time.Time
	opened    uint64        // times the breaker opened
	notes     []stateChange // changes not yet passed to changed, oldest first
	noting    bool          // a goroutine is passing notes to changed
}

// stateChange is a change of the breaker's state, for changed.
type stateChange struct{ from, to BreakerState }

// noteLocked records a change of state for changed. Called with mu held.
func (b *breaker) noteLocked(from, to BreakerState) {
	if b.changed != nil && from != to {
		b.notes = append(b.notes, stateChange{from, to})
	}
}

// notify passes the recorded changes to changed, in order and one call at
// a time, with mu released during each call. The goroutine that finds no
// one passing them on passes every change, including those that others
// record meanwhile; the others return at once. Without that, two
// goroutines that change the state one after the other could call changed
// in the other order (or at once), and an Observer that keeps the last
// state it heard of would keep a wrong one until the next change.
func (b *breaker) notify() {
	if b.changed == nil {
		return
	}
	b.mu.Lock()
	if b.noting || len(b.notes) == 0 {
		b.mu.Unlock()
		return
	}
	b.noting = true
	locked := true
	defer func() { // also if changed panics: later changes must still be passed on
		if !locked {
			b.mu.Lock()
		}
		b.noting = false
		b.mu.Unlock()
	}()
	for len(b.notes) > 0 {
		notes := b.notes
		b.notes = nil
		b.mu.Unlock()
		locked = false
		for _, n := range notes {
			b.changed(n.from, n.to)
		}
		b.mu.Lock()
		locked = true
	}
}

// allow reports whether a Redis call may go ahead.
func (b *breaker) allow() bool {
	if b.threshold <= 0 || b.healthy.Load() {
		return true
	}
	b.mu.Lock()
	ok, probe := b.allowLocked()
	if probe {
		b.noteLocked(BreakerOpen, BreakerHalfOpen)
	}
	b.mu.Unlock()
	if probe {
		b.notify()
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
		b.noteLocked(prev, now)
		b.mu.Unlock()
		if now != prev {
			b.notify()
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
