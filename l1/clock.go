package l1

import (
	"sync"
	"sync/atomic"
	"time"
)

// clock is the coarse clock that expiry is checked against: one per
// resolution in the process, shared by every Cache using that resolution,
// so that many caches cost one ticker. It stops ticking while no Cache reads
// it and starts again on the next read.
//
// state tells readers whether the clock runs: clockUsed (running, read since
// the last tick), clockIdle (running, not read since the last tick) or
// clockStopped. A reader that finds clockUsed reads now as it is. Any other
// state sends it through wake, which marks the clock used and, when it was
// stopped, sets now from the wall clock and restarts the ticker before the
// reader uses now: a stopped clock's now is never read. The ticker swaps the
// state to clockIdle on every tick and stops after idleTicks ticks in a row
// that found it idle.
type clock struct {
	res       time.Duration
	idleTicks int
	base      time.Time // origin of now; fixed

	state atomic.Int32
	now   atomic.Int64 // ns since base; written by the ticker and by wake under mu

	mu    sync.Mutex
	users map[*clockUser]struct{} // guarded by mu: flushed on every tick
	quit  chan struct{}           // guarded by mu: closed when the last user leaves
	done  chan struct{}           // guarded by mu: closed by the ticker goroutine when it exits
	start chan struct{}           // buffered (1): wakes a stopped ticker

	hookWake func() // tests: runs in wake on a stopped clock, before mu
}

const (
	clockUsed int32 = iota
	clockIdle
	clockStopped
)

// clockUser is one Cache's registration: flush hands its staged fills to
// ristretto.
type clockUser struct{ flush func() }

// clockIdleFor is how long a clock keeps ticking with no reader.
const clockIdleFor = 100 * time.Millisecond

// clocks holds the process's shared clocks by resolution. A clock is
// created by the first Cache that needs it and removed, its goroutine
// stopped, when the last one closes.
var clocks = struct {
	sync.Mutex
	byRes map[time.Duration]*clock
}{byRes: map[time.Duration]*clock{}}

// acquireClock registers flush with the shared clock of resolution res,
// creating the clock (and its goroutine) if needed.
func acquireClock(res time.Duration, flush func()) (*clock, *clockUser) {
	clocks.Lock()
	defer clocks.Unlock()
	k := clocks.byRes[res]
	if k == nil {
		k = newClock(res, int(max(clockIdleFor/res, 1)))
		clocks.byRes[res] = k
	}
	u := &clockUser{flush: flush}
	k.mu.Lock()
	k.users[u] = struct{}{}
	k.mu.Unlock()
	return k, u
}

// releaseClock removes u; the last user stops the clock's goroutine and
// waits for it. After it returns, u's flush is not running and never runs
// again.
func releaseClock(k *clock, u *clockUser) {
	clocks.Lock()
	k.mu.Lock()
	delete(k.users, u)
	last := len(k.users) == 0
	var done chan struct{}
	if last {
		delete(clocks.byRes, k.res)
		close(k.quit)
		done = k.done
	}
	k.mu.Unlock()
	clocks.Unlock()
	if last {
		<-done
	}
}

// newClock returns a running clock that stops after idleTicks unread ticks.
func newClock(res time.Duration, idleTicks int) *clock {
	k := &clock{
		res:       res,
		idleTicks: idleTicks,
		base:      time.Now(),
		users:     map[*clockUser]struct{}{},
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
		start:     make(chan struct{}, 1),
	}
	go k.run()
	return k
}

// read returns now, waking the clock first unless it ran and was read since
// its last tick.
func (k *clock) read() int64 {
	if k.state.Load() != clockUsed {
		k.wake()
	}
	return k.now.Load()
}

// wake marks the clock used; a stopped clock gets the wall-clock time and
// is restarted before wake returns.
func (k *clock) wake() {
	for {
		switch k.state.Load() {
		case clockUsed:
			return
		case clockIdle:
			if k.state.CompareAndSwap(clockIdle, clockUsed) {
				return
			}
		case clockStopped:
			if h := k.hookWake; h != nil {
				h()
			}
			k.mu.Lock()
			if k.state.Load() == clockStopped {
				k.now.Store(int64(time.Since(k.base)))
				k.state.Store(clockUsed)
				select {
				case k.start <- struct{}{}:
				default:
				}
			}
			k.mu.Unlock()
			return
		}
	}
}

// run is the ticker goroutine: it lives until the last user leaves.
func (k *clock) run() {
	defer close(k.done)
	for {
		t := time.NewTicker(k.res)
		idle := 0
		stopped := false
		for !stopped {
			select {
			case <-k.quit:
				t.Stop()
				return
			case <-t.C:
			}
			k.now.Store(int64(time.Since(k.base)))
			k.mu.Lock()
			for u := range k.users {
				u.flush()
			}
			if k.state.Swap(clockIdle) == clockIdle {
				idle++
			} else {
				idle = 0
			}
			if idle >= k.idleTicks && k.state.CompareAndSwap(clockIdle, clockStopped) {
				stopped = true
			}
			k.mu.Unlock()
		}
		t.Stop()
		select {
		case <-k.quit:
			return
		case <-k.start:
		}
	}
}
