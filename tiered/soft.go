package tiered

import (
	"sync"
	"time"
)

// The soft timeout (Config.SoftTimeout) lets the callers of a slow load
// have the stale value Redis holds for its key, while the load goes on.
//
// One timer per load, started when the loader is called, and only when a
// stale value is at hand: an L2 hit and a load without a stale value start
// none. When it fires it settles each flight of the load that has a stale
// value with that value (serveStaleLocked), under flightMu, unless an
// invalidation has forgotten the flight meanwhile: a write or delete of the
// key has overtaken the stale value, which must then never be served again,
// so the flight's callers wait for the load (whose result is not kept). The
// stale value is served only until Redis drops it (its hard expiry,
// FailSafeMaxStale past its TTL): a timer that fires later serves nothing,
// and a caller that finds a flight settled with it after then starts a load
// of its own (joinLocked). The stale value is not filled into L1: the load
// is about to fill the fresh one. Each caller that gets it counts it and
// tells the Observers (softServed), on its own goroutine.
//
// When the loader returns first, the load stops the timer (stop) before it
// looks at its result: stop returns once the timer's work has run to its
// end or can no longer start, so what it did (the flights' soft) is known,
// and the load's state can be reused.

// softTimer is the soft timeout of one load.
type softTimer struct {
	once  sync.Once   // runs the timer's work, or marks it as never to run (stop)
	timer *time.Timer // set before anyone calls stop
}

// softTimeoutOn reports whether a load with a stale value at hand starts a
// soft timer: not without fail-safe, nor at or above LoadTimeout (the
// timer starts when the loader is called, after the flight's start, so it
// would fire between LoadTimeout and the overrun's abortGrace, serving
// the callers of a loader that ignores its ctx instead of releasing them
// with the overrun error).
func (c *Cache[V]) softTimeoutOn() bool {
	return c.cfg.SoftTimeout > 0 && c.cfg.SoftTimeout < c.cfg.LoadTimeout && c.cfg.FailSafeMaxStale > 0
}

// newSoftTimer calls fire after d, unless stop is called first.
func newSoftTimer(d time.Duration, fire func()) *softTimer {
	s := &softTimer{}
	s.timer = time.AfterFunc(d, func() { s.once.Do(fire) })
	return s
}

// stop stops s (nil: none). Once it returns, fire has either returned or
// will never run. It may be called more than once.
func (s *softTimer) stop() {
	if s == nil {
		return
	}
	s.timer.Stop()
	s.once.Do(func() {})
}

// softTimerFor starts the soft timer of the load of key run by flight f,
// which serves stale until end (when Redis drops it; zero: no bound).
func (c *Cache[V]) softTimerFor(key string, f *flight[V], stale item[V], end time.Time) *softTimer {
	return newSoftTimer(c.cfg.SoftTimeout, func() {
		c.flightMu.Lock()
		if c.flights[key] == f { // else forgotten: overtaken by a write, or ended
			f.serveStaleLocked(stale, end)
		}
		c.flightMu.Unlock()
	})
}

// softTimerForBatch starts the soft timer of the loader call of batch st,
// if one of the keys it loads has a stale value (nil otherwise).
func (c *Cache[V]) softTimerForBatch(st *batchState[V]) *softTimer {
	if !c.softTimeoutOn() {
		return nil
	}
	for _, i := range st.need {
		if st.looks[i].stale != nil {
			return newSoftTimer(c.cfg.SoftTimeout, func() { c.serveStaleBatch(st) })
		}
	}
	return nil
}

// serveStaleBatch is the soft timeout of batch st, whose loader is still
// running: it settles each flight the loader answers that has a stale
// value with it (unless forgotten, as in softTimerFor), and the flights
// that L2 answered with their result; keys without either keep waiting
// for the loader. If that settles every flight of the batch, its leader is
// woken. It reads only what st held before the loader was called.
func (c *Cache[V]) serveStaleBatch(st *batchState[V]) {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	for i := range st.flights {
		f := &st.flights[i]
		switch {
		case st.res[i].ok:
			f.settleLocked(st.res[i].it, st.res[i].err)
		case st.looks[i].stale != nil && c.flights[f.key] == f:
			f.serveStaleLocked(*st.looks[i].stale, st.looks[i].staleEnd)
		}
	}
	b := st.flights[0].batch
	for i := range b.flights {
		if !b.flights[i].settled {
			return
		}
	}
	if !b.closed {
		b.closed = true
		close(b.done)
	}
}
