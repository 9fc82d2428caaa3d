package invalidation

import (
	"sync"
	"sync/atomic"
	"time"
)

// reason is a bit set of why the stream is unhealthy.
type reason uint32

const (
	reasonNotSubscribed reason = 1 << iota
	reasonDisconnected
	reasonStalled
	reasonOverflow
	reasonAntiEntropy
	reasonRerouted      // the subscription is being moved to the server the commands go to
	reasonRepairPending // an InvalidateAll was requested and the worker has not called the Handler yet
)

// busWide is the health source of reasons that concern the whole bus
// (overflow, anti-entropy, no subscription yet); subscriptions use their id.
const busWide = 0

// healthState keeps the reasons of every source (the bus, each
// subscription) under a mutex and publishes the derived "unhealthy since"
// as one atomic, so that Health costs a single load. The stream is healthy
// when no source has a reason.
type healthState struct {
	mu      sync.Mutex
	reasons map[int]reason // guarded by mu: non-zero reasons by source
	since   atomic.Int64   // unix nanos when reasons became non-empty; 0 when healthy
}

func (h *healthState) set(src int, r reason) {
	h.mu.Lock()
	if len(h.reasons) == 0 {
		h.since.Store(time.Now().UnixNano())
	}
	if h.reasons == nil {
		h.reasons = make(map[int]reason)
	}
	h.reasons[src] |= r
	h.mu.Unlock()
}

func (h *healthState) clear(src int, r reason) {
	h.mu.Lock()
	h.clearLocked(src, r)
	h.mu.Unlock()
}

// clearLocked clears r of src; mu is held.
func (h *healthState) clearLocked(src int, r reason) {
	if v := h.reasons[src] &^ r; v != 0 {
		h.reasons[src] = v
	} else {
		delete(h.reasons, src)
	}
	if len(h.reasons) == 0 {
		h.since.Store(0)
	}
}

// clearIf clears r of src if cond holds, deciding under mu: a set that
// follows a change cond looks at (see Bus.requestInvalidateAll) is never
// lost. While healthy it costs one atomic load.
func (h *healthState) clearIf(src int, r reason, cond func() bool) {
	if h.since.Load() == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reasons[src]&r != 0 && cond() {
		h.clearLocked(src, r)
	}
}

// drop forgets a source (a subscription that was stopped).
func (h *healthState) drop(src int) { h.clear(src, ^reason(0)) }

// get returns the health now: one atomic load while healthy; while
// unhealthy, since and the reasons are read together under mu, so that a
// change in between (the stream turning healthy) cannot pair an unhealthy
// state with no reason.
func (h *healthState) get() Health {
	if h.since.Load() == 0 {
		return Health{Healthy: true}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.since.Load()
	if s == 0 {
		return Health{Healthy: true}
	}
	var r reason
	for _, v := range h.reasons {
		r |= v
	}
	return Health{UnhealthySince: time.Unix(0, s), Reasons: HealthReason(r)}
}
