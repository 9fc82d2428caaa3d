package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nearcache/nearcache/internal/errfmt"
	"github.com/nearcache/nearcache/l1"
	"golang.org/x/sync/singleflight"
)

// flight is one shared fetch of a key. It runs one of three ways:
//
//   - a DoChan flight (sf) is a call in a singleflight.Group; waiters get its
//     result from DoChan's channel, or leave through abort;
//   - an inline flight is run by the caller that started it, on its own
//     goroutine (see leadInline);
//   - a batch flight is one key of a GetMany/GetManyOrLoad batch, settled by
//     the batch.
//
// Inline and batch flights are settled exactly once, under flightMu, with
// their result or an abort error (settleLocked), or early with a stale
// value by the soft timeout (serveStaleLocked); their waiters wait on done,
// which the first waiter makes, so a flight nobody joins costs no channel.
type flight[V any] struct {
	sf    *sfState  // DoChan flights only (nil otherwise)
	key   string    // batch flights only: the key, for settleBatch
	batch *batch[V] // batch flights only: the batch that leads it

	// Inline and batch flights, unless noted; all guarded by flightMu.
	// A batch allocates its flights in one slice, so the fields are
	// ordered (and softEnd kept as an integer) to keep the struct small.
	done chan struct{} // nil until a waiter needs it; closed when settled
	it   item[V]       // the result, set when settled; a DoChan flight's stale value (soft)
	err  error
	// softEnd is when Redis drops the stale value the soft timeout served
	// (see soft), in Unix milliseconds, as the envelope stores expiries;
	// 0: no bound (see softEndOf).
	softEnd int64
	joined  int32 // any flight: callers that joined after the one that started it (Observer.LoadDone)
	settled bool
	// soft: the flight was settled (a DoChan flight: aborted) with a stale
	// value by the soft timeout (see Config.SoftTimeout), it being that
	// value, which Redis keeps until softEnd. Set once, by the soft timer,
	// under flightMu (a DoChan flight's also under sf.once, before abort is
	// closed).
	soft bool
	// early: a refresh flight (DoChan) was aborted with the fresh value
	// Redis still held, it, so that callers who joined it need not wait
	// for its loader (see serveCurrentLocked). Set like soft.
	early bool
}

// sfState is what a DoChan flight adds: abort is closed (once) when waiters
// must stop waiting for the work's result: the work exited through
// runtime.Goexit (x/sync then sends nothing), or it overran LoadTimeout by
// abortGrace (a loader that ignores its ctx), and err says why; or the soft
// timeout fired, and the flight's soft and it hold the stale value that
// waiters get instead (serveStaleLocked). err, or soft and it, are set
// before abort is closed.
type sfState struct {
	abort chan struct{}
	once  sync.Once
	err   error
}

func newSFFlight[V any]() *flight[V] {
	return &flight[V]{sf: &sfState{abort: make(chan struct{})}}
}

func (f *flight[V]) abortWith(err error) {
	f.sf.once.Do(func() {
		f.sf.err = err
		close(f.sf.abort)
	})
}

// settleLocked gives an inline or batch flight its result and wakes its
// waiters, unless it is settled already (an overrun settles it early; the
// late result is then dropped). Called with flightMu held.
func (f *flight[V]) settleLocked(it item[V], err error) {
	if f.settled {
		return
	}
	f.it, f.err, f.settled = it, err, true
	if f.done != nil {
		close(f.done)
	}
}

// serveStaleLocked gives the waiters of flight f, and the callers that join
// it from now on until end (see joinLocked), the stale value instead of
// the work's result (see Config.SoftTimeout), unless f is settled or
// aborted already, or end, when Redis drops the stale value (zero: never),
// has passed: a value past FailSafeMaxStale is not served. The work goes
// on. Called by the soft timer with flightMu held.
func (f *flight[V]) serveStaleLocked(stale item[V], end time.Time) {
	if softEnded(softEndOf(end)) {
		return
	}
	if f.sf != nil {
		f.sf.once.Do(func() {
			f.it, f.soft, f.softEnd = stale, true, softEndOf(end)
			close(f.sf.abort)
		})
		return
	}
	if !f.settled {
		f.soft, f.softEnd = true, softEndOf(end)
		f.settleLocked(stale, nil)
	}
}

// serveCurrentLocked releases the waiters of refresh flight f (a DoChan
// flight) with it, the fresh value the refresh read from Redis, while the
// refresh goes on: a caller that missed L1 during a refresh gets what
// Redis holds, as it would without the refresh, instead of waiting for the
// loader. Called with flightMu held, for a flight still in the table.
func (f *flight[V]) serveCurrentLocked(it item[V]) {
	f.sf.once.Do(func() {
		f.it, f.early = it, true
		close(f.sf.abort)
	})
}

// softEndOf returns end, when Redis drops a stale value (zero: never), as
// flight.softEnd keeps it: in Unix milliseconds, rounded up (end comes from
// an envelope's hard expiry, which has millisecond precision), 0 for never.
func softEndOf(end time.Time) int64 {
	if end.IsZero() {
		return 0
	}
	ms := end.UnixMilli()
	if end.After(time.UnixMilli(ms)) {
		ms++
	}
	if ms <= 0 {
		return 1 // before 1970: long passed, but not "never"
	}
	return ms
}

// softEnded reports whether end, a softEnd, has passed.
func softEnded(end int64) bool { return end != 0 && time.Now().UnixMilli() >= end }

// doneLocked returns the channel closed when an inline or batch flight is
// settled, making it on first use. Called with flightMu held.
func (f *flight[V]) doneLocked() chan struct{} {
	if f.done == nil {
		f.done = make(chan struct{})
		if f.settled {
			close(f.done)
		}
	}
	return f.done
}

// abortGrace is how long past LoadTimeout waiters keep waiting for a load
// whose context has expired, so a loader that honours its ctx reports its
// own error first.
const abortGrace = 100 * time.Millisecond

// errLoadOverran is what waiters get from a load that ignored its context
// (readErr names the call and keys).
var errLoadOverran = errors.New("tiered: did not finish within LoadTimeout (a loader, or a Redis client without deadlines, ignores its ctx)")

// waiter is one caller's handle on a flight.
type waiter[V any] struct {
	ch   <-chan singleflight.Result // DoChan flight: its result
	done <-chan struct{}            // other flights: closed once f is settled
	f    *flight[V]
}

// wait returns the flight's result, or ctx's error if ctx ends first, or the
// flight's abort error. soft reports that the result is the stale value
// the soft timeout served (see Config.SoftTimeout).
func (w waiter[V]) wait(ctx context.Context) (it item[V], soft bool, err error) {
	if w.f.sf == nil {
		// A batch's leader finds most of its waiters settled: a
		// non-blocking receive is much cheaper than the select below.
		select {
		case <-w.done:
			return w.f.it, w.f.soft, w.f.err
		default:
		}
		select {
		case <-w.done:
			return w.f.it, w.f.soft, w.f.err
		case <-ctx.Done():
			return item[V]{}, false, ctx.Err()
		}
	}
	select {
	case r := <-w.ch:
		// The soft timer stops before the work can return, so a stale
		// value it served was there first: a caller that finds both gets
		// the stale value, as every other caller did.
		select {
		case <-w.f.sf.abort:
			if w.f.soft {
				return w.f.it, true, nil
			}
		default:
		}
		if r.Err != nil {
			return item[V]{}, false, r.Err
		}
		return r.Val.(item[V]), false, nil
	case <-w.f.sf.abort:
		if w.f.soft {
			return w.f.it, true, nil
		}
		if w.f.early {
			return w.f.it, false, nil
		}
		return item[V]{}, false, w.f.sf.err
	case <-ctx.Done():
		return item[V]{}, false, ctx.Err()
	}
}

// joinLocked returns a waiter on key's running flight, if any. A flight
// that the soft timeout settled with a stale value that Redis has dropped
// since (past FailSafeMaxStale) is forgotten instead, so that the caller
// starts a load of its own rather than get that value. Called with
// flightMu held.
func joinLocked[V any](table map[string]*flight[V], group *singleflight.Group, key string) (waiter[V], bool) {
	return joinFlightLocked(table, group, key, table[key])
}

// joinFlightLocked is joinLocked for f, the flight table holds for key
// (nil if none), which the caller has looked up already.
func joinFlightLocked[V any](table map[string]*flight[V], group *singleflight.Group, key string, f *flight[V]) (waiter[V], bool) {
	if f == nil {
		return waiter[V]{}, false
	}
	if f.soft && softEnded(f.softEnd) {
		forgetLocked(table, group, key)
		return waiter[V]{}, false
	}
	f.joined++
	switch {
	case f.sf != nil:
		return waiter[V]{ch: group.DoChan(key, errFlightVanished), f: f}, true
	}
	return waiter[V]{done: f.doneLocked(), f: f}, true
}

// errFlightVanished is the func handed to DoChan when joining a running
// single-key flight; by the flights invariant it never runs.
func errFlightVanished() (any, error) {
	return nil, errors.New("tiered: internal error: joined a flight that had ended")
}

func (c *Cache[V]) forgetAll() {
	c.flightMu.Lock()
	for k := range c.flights {
		forgetLocked(c.flights, &c.loads, k)
	}
	for k := range c.gets {
		forgetLocked(c.gets, &c.getsSF, k)
	}
	c.flightMu.Unlock()
}

// forgetLocked drops key's flight so that later callers start afresh; its
// current waiters still get its result. Called with flightMu held.
func forgetLocked[V any](table map[string]*flight[V], group *singleflight.Group, key string) {
	if f := table[key]; f != nil {
		delete(table, key)
		if f.sf != nil {
			group.Forget(key)
		}
	}
}

// canLeadInline reports whether a caller with ctx may run the flight it
// leads on its own goroutine: its ctx can never end (Done returns nil, as
// for context.Background), so it has nothing to leave on early, and every
// Redis call is bounded by RedisTimeout, which needs a client that applies
// context deadlines to its connections (go-redis ContextTimeoutEnabled; see
// Config.Redis). Such a caller saves the goroutine hand-off that DoChan
// makes; its followers still wait on their own ctx.
func (c *Cache[V]) canLeadInline(ctx context.Context) bool {
	return ctx.Done() == nil && c.inlineOK
}

// join joins key's running flight, or starts one. A started flight runs the
// x/sync way: DoChan, so each caller waits on its own ctx, while the work
// runs on a context detached from every caller (see detached), and a panic
// in it becomes an error for every waiter. The exception is a caller that
// can lead inline (see canLeadInline): join then registers a flight that
// the caller runs itself with leadInline, reported by lead.
func (c *Cache[V]) join(ctx context.Context, key string, load Loader[V], o callOptions) (w waiter[V], lead bool, err error) {
	table, group := c.flightsFor(load == nil)
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	if c.closed {
		return waiter[V]{}, false, ErrClosed
	}
	c.st.callers.Add(1)
	if w, ok := joinLocked(table, group, key); ok {
		return w, false, nil
	}
	c.st.flights.Add(1)
	c.work.Add(1)
	if c.canLeadInline(ctx) {
		f, _ := c.inlineFlights.Get().(*flight[V])
		if f == nil {
			f = &flight[V]{}
		}
		table[key] = f
		return waiter[V]{f: f}, true, nil
	}
	f := newSFFlight[V]()
	table[key] = f
	wctx, cancel := c.detached(ctx, time.Now().Add(c.cfg.LoadTimeout))
	overrun := time.AfterFunc(c.cfg.LoadTimeout+abortGrace, func() {
		c.release(table, group, key, f) // first, so that woken waiters who call again start afresh
		f.abortWith(errLoadOverran)
	})
	ch := group.DoChan(key, func() (v any, err error) {
		var returned, panicked bool
		defer func() {
			overrun.Stop()
			if !returned && !panicked { // runtime.Goexit: x/sync sends no result
				f.abortWith(fmt.Errorf("tiered: load %s aborted (runtime.Goexit in the loader)", errfmt.Key(key)))
			}
		}()
		defer c.work.Done()
		defer cancel()
		defer c.release(table, group, key, f)
		defer func() {
			if r := recover(); r != nil {
				panicked = true
				err = c.loadPanicked(key, r)
			}
		}()
		v, err = c.fetch(wctx, key, f, load, o)
		returned = true
		return v, err
	})
	return waiter[V]{ch: ch, f: f}, false, nil
}

// leadInline runs flight f of key, registered by join, on the caller's
// goroutine: the fill ticket and the L2 read (bounded by RedisTimeout), and
// the L1 fill. When the loader must run, the rest of the work is handed to
// a goroutine with a detached context bounded by LoadTimeout (see
// goDetached), and the caller waits for it like any follower, so a
// loader that ignores its ctx holds no caller past LoadTimeout+abortGrace,
// and the soft timeout (see Config.SoftTimeout) serves it too; soft reports
// such a stale value.
func (c *Cache[V]) leadInline(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions) (it item[V], soft bool, err error) {
	table, _ := c.flightsFor(load == nil)
	deadline := time.Now().Add(c.cfg.LoadTimeout) // the whole flight's, as for a DoChan flight
	settled, handed := false, false
	defer func() {
		if handed {
			return
		}
		if r := recover(); r != nil {
			it, err, settled = item[V]{}, c.loadPanicked(key, r), true
		}
		if !settled { // runtime.Goexit in a codec: followers must not hang
			err = fmt.Errorf("tiered: load %s aborted (runtime.Goexit)", errfmt.Key(key))
		}
		if !c.finish(table, key, f, it, err) {
			// Nobody joined: nothing refers to f any more.
			*f = flight[V]{}
			c.inlineFlights.Put(f)
		}
		c.work.Done()
	}()
	t, look, it, err, done := c.fetchL2(ctx, key, load, o)
	if done {
		settled = true
		return it, false, err
	}
	handed = true
	return c.handLoad(ctx, table, key, f, load, o, deadline, t, look)
}

// handLoad is the part of leadInline after an L2 read that did not settle
// the flight: it hands the loader, the L2 write-back and the fill to a
// goroutine (see goDetached) and waits for them like a follower. A function
// of its own, so that what its closures capture (t, look, the result) is
// moved to the heap only on this path, not on every L2 hit.
func (c *Cache[V]) handLoad(ctx context.Context, table map[string]*flight[V], key string, f *flight[V], load Loader[V], o callOptions, deadline time.Time, t l1.Ticket, look lookup[V]) (item[V], bool, error) {
	c.flightMu.Lock()
	fdone := f.doneLocked()
	c.flightMu.Unlock()
	var lit item[V]
	var lerr error
	c.goDetached(ctx, deadline,
		func(wctx context.Context) {
			defer func() {
				if r := recover(); r != nil {
					lerr = c.loadPanicked(key, r)
				}
			}()
			lit, lerr = c.loadClaimed(wctx, key, f, load, o, t, look)
		},
		func() { c.finish(table, key, f, item[V]{}, errLoadOverran) }, // later callers start afresh
		func(completed bool) {
			if !completed {
				lerr = fmt.Errorf("tiered: load %s aborted (runtime.Goexit in the loader)", errfmt.Key(key))
			}
			c.finish(table, key, f, lit, lerr)
		})
	return waiter[V]{done: fdone, f: f}.wait(ctx)
}

// goDetached runs work on its own goroutine, on a context detached from ctx
// and ending at deadline (a flight's or batch's start plus LoadTimeout),
// then calls settle, with completed false if work exited through
// runtime.Goexit, and releases the c.work count it takes over. If work is
// still running abortGrace after the deadline (a loader that ignores its
// ctx), overran releases the waiters meanwhile. work must recover its own
// panics.
func (c *Cache[V]) goDetached(ctx context.Context, deadline time.Time, work func(context.Context), overran func(), settle func(completed bool)) {
	wctx, cancel := c.detached(ctx, deadline)
	overrun := time.AfterFunc(time.Until(deadline)+abortGrace, overran)
	go func() {
		completed := false
		defer func() {
			overrun.Stop()
			cancel()
			settle(completed)
			c.work.Done()
		}()
		work(wctx)
		completed = true
	}()
}

// finish settles flight f of key (not a DoChan flight) and removes it from
// table, unless an invalidation already forgot it. It reports whether
// anyone waits on f: every waiter gets f through doneLocked (joinLocked,
// handLoad), so when none did, f is referred to only by the caller of
// finish once finish returns, and an inline flight can be reused.
func (c *Cache[V]) finish(table map[string]*flight[V], key string, f *flight[V], it item[V], err error) (waited bool) {
	c.flightMu.Lock()
	if table[key] == f {
		delete(table, key)
	}
	waited = f.done != nil
	f.settleLocked(it, err)
	c.flightMu.Unlock()
	return waited
}

// flightsFor returns the flight table and singleflight group of loads, or
// of Gets (reads without a loader, which must not join a load or be joined
// by one).
func (c *Cache[V]) flightsFor(isGet bool) (map[string]*flight[V], *singleflight.Group) {
	if isGet {
		return c.gets, &c.getsSF
	}
	return c.flights, &c.loads
}

// release ends a single-key flight before its work returns: it forgets the
// call (unless an invalidation already did), so later callers start afresh.
func (c *Cache[V]) release(table map[string]*flight[V], group *singleflight.Group, key string, f *flight[V]) {
	c.flightMu.Lock()
	if table[key] == f {
		delete(table, key)
		group.Forget(key)
	}
	c.flightMu.Unlock()
}

// detached returns a context carrying ctx's values but not its cancellation,
// ending at deadline and cancelled by Close: its deadline and Done come from
// the Cache's base context, its values from ctx. (Deriving it from
// context.WithoutCancel(ctx) and linking Close with context.AfterFunc costs
// more allocations and a registration under the base context's lock on
// every miss.)
func (c *Cache[V]) detached(ctx context.Context, deadline time.Time) (context.Context, context.CancelFunc) {
	d, cancel := context.WithDeadline(c.base, deadline)
	return &valuesFrom{Context: d, values: context.WithoutCancel(ctx)}, cancel
}

// valuesFrom is a context whose deadline, Done, Err and cancellation are
// Context's and whose values are values'. values is the caller's context
// seen through context.WithoutCancel, which hides the caller's cancellation
// from the context package, so context.Cause reports this context's own
// cause.
//
// It is also the loader's context, and carries what the loader sets with
// SetTTL, SetKeyTTL and SetL1TTL (lt, see loaderCtx): inside the context,
// so that a load costs no allocation for it.
type valuesFrom struct {
	context.Context
	values context.Context
	lt     loadTTL
}

// Value implements context.Context with the caller's values, and lt under
// loadCtxKey (hiding any loadTTL of the caller's: a loader that calls
// another Cache sets the TTLs of its own load only).
func (v *valuesFrom) Value(key any) any {
	if _, ok := key.(loadCtxKey); ok {
		return &v.lt
	}
	return v.values.Value(key)
}

// AfterFunc lets contexts derived from this one (WithTimeout, WithCancel)
// register on it instead of starting a goroutine each to watch Done.
func (v *valuesFrom) AfterFunc(f func()) func() bool { return context.AfterFunc(v.Context, f) }
