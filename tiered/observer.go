package tiered

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"github.com/nearcache/nearcache/invalidation"
)

// Observer hears what a Cache does off the L1-hit path, for traces,
// metrics and logs of your own (contrib/otel builds its spans on it).
// Every field is optional: a nil one is not called, and a nil *Observer
// costs one comparison per event. An L1 hit never calls it.
//
// Callbacks run synchronously on the goroutine where the event happens (a
// load's, a writer's, the invalidation worker's): keep them short, never
// block in them, and never call the Cache that calls them (Stats is the
// exception: it is safe in every callback). Slices in an event are
// borrowed: read them during the call only.
//
// A callback that panics is the Observer's bug, and the Cache contains it:
// the panic is recovered and logged to Config.Logger (a Warn with the
// callback's name, the panic value and the stack, once per episode of
// such panics, as for the Cache's other degradations), the event is lost,
// and the operation goes on as if no Observer were set. A LoadStart or
// WriteStart that panics or returns nil leaves the ctx as it was. The
// Cache calls the callback again on the next event.
type Observer struct {
	// LoadStart is called before a Loader or BatchLoader runs, with the
	// load's ctx (detached from its callers' cancellation, with their
	// values). The ctx it returns is the one the loader and LoadDone get
	// (a span, say); returning ctx itself is fine. Derive it from ctx: the
	// loader's SetTTL, SetKeyTTL and SetL1TTL find their load through it.
	LoadStart func(ctx context.Context, ev LoadStartEvent) context.Context
	// LoadDone is called when that loader call has ended, after every
	// LoadStart, also when the loader panicked (Err is then the
	// *PanicError its callers get) or exited through runtime.Goexit, so
	// that a span started in LoadStart is always ended.
	LoadDone func(ctx context.Context, ev LoadDoneEvent)
	// WriteStart is called before Set, SetMany, Delete, DeleteMany or Clear
	// goes to Redis (not in L1-only mode), with the caller's ctx; the ctx
	// it returns is used for the write and passed to WriteDone.
	WriteStart func(ctx context.Context, ev WriteStartEvent) context.Context
	// WriteDone is called when that write has returned.
	WriteDone func(ctx context.Context, ev WriteDoneEvent)
	// Invalidated is called when keys written by another instance have
	// been dropped from this instance's L1.
	Invalidated func(ev InvalidationEvent)
	// Repaired is called when the whole L1 was dropped because the
	// invalidation stream may have lost messages (see invalidation.Cause).
	Repaired func(ev RepairEvent)
	// BreakerChanged is called on every change of the circuit breaker's
	// state, one at a time and in the order of the changes (each event's
	// From is the previous event's To): a change made while the callback
	// runs for an earlier one, by whatever goroutine, is passed on once it
	// returns.
	BreakerChanged func(ev BreakerEvent)
	// StaleServed is called when fail-safe serves a stale value: once per
	// value served because the loader failed, and, with
	// Config.SoftTimeout, once per caller and key served because the
	// loader was still running (StaleEvent.SoftTimeout).
	StaleServed func(ev StaleEvent)
	// Refreshed is called when a refresh-ahead ends (see
	// Config.RefreshAhead), whatever its outcome.
	Refreshed func(ev RefreshEvent)

	// members are the Observers JoinObservers joined; a Cache calls each
	// on its own (see joined).
	members []*Observer
}

// LoadStartEvent describes a loader call about to run.
type LoadStartEvent struct {
	Namespace string
	Keys      []string // the keys asked of the loader (one for a Loader)
	Batch     bool     // a BatchLoader
}

// LoadDoneEvent describes a loader call that returned.
type LoadDoneEvent struct {
	Namespace string
	Keys      []string
	Batch     bool
	Duration  time.Duration // the loader call alone
	// Err is the loader's error; ErrNotFound (a negative result) is not
	// an error here: NotFound counts such keys. A loader that panicked
	// has a *PanicError; one that exited through runtime.Goexit an error
	// that says so.
	Err      error
	NotFound int // keys the loader reported absent
	// Coalesced is the number of callers that joined the load's flights
	// (beyond the caller that started each) by the time the loader
	// returned: they waited for this load instead of starting their own.
	// A key repeated in one GetManyOrLoad call is not another caller.
	Coalesced int
}

// WriteStartEvent describes a write about to go to Redis.
type WriteStartEvent struct {
	Namespace string
	Op        string   // "set", "delete" or "clear"
	Keys      []string // nil for Clear
}

// WriteDoneEvent describes a write that returned.
type WriteDoneEvent struct {
	Namespace string
	Op        string
	Keys      []string
	Duration  time.Duration
	Err       error // as returned to the caller
}

// InvalidationEvent describes another instance's write applied to L1.
type InvalidationEvent struct {
	Namespace string
	Keys      []string
}

// RepairEvent describes a drop of the whole L1 by the invalidation stream.
type RepairEvent struct {
	Namespace string
	Cause     invalidation.Cause
}

// BreakerEvent describes a change of the circuit breaker's state.
type BreakerEvent struct {
	Namespace string
	From, To  BreakerState
}

// StaleEvent describes a stale value served by fail-safe.
type StaleEvent struct {
	Namespace string
	Key       string
	Err       error // the loader's error that made it stale (nil for SoftTimeout)
	// SoftTimeout reports a value served because the loader had run for
	// Config.SoftTimeout without returning; the load goes on, and its value
	// replaces the stale one when it returns.
	SoftTimeout bool
}

// JoinObservers returns an Observer that calls each of obs in turn (nil
// ones are skipped); the ctx returned by one's LoadStart or WriteStart is
// passed to the next (a nil one leaves the ctx as it was). It returns nil
// when none is left, the only one when one is. A Cache calls the members
// one by one, each with its own recovery: a member that panics loses only
// its own event, and the ctx the members before it returned is kept.
func JoinObservers(obs ...*Observer) *Observer {
	var list []*Observer
	for _, o := range obs {
		switch {
		case o == nil:
		case o.members != nil:
			list = append(list, o.members...)
		default:
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	j := &Observer{members: list}
	j.LoadStart = func(ctx context.Context, ev LoadStartEvent) context.Context {
		for _, o := range list {
			if o.LoadStart != nil {
				ctx = orCtx(o.LoadStart(ctx, ev), ctx)
			}
		}
		return ctx
	}
	j.LoadDone = func(ctx context.Context, ev LoadDoneEvent) {
		for _, o := range list {
			if o.LoadDone != nil {
				o.LoadDone(ctx, ev)
			}
		}
	}
	j.WriteStart = func(ctx context.Context, ev WriteStartEvent) context.Context {
		for _, o := range list {
			if o.WriteStart != nil {
				ctx = orCtx(o.WriteStart(ctx, ev), ctx)
			}
		}
		return ctx
	}
	j.WriteDone = func(ctx context.Context, ev WriteDoneEvent) {
		for _, o := range list {
			if o.WriteDone != nil {
				o.WriteDone(ctx, ev)
			}
		}
	}
	j.Invalidated = func(ev InvalidationEvent) {
		for _, o := range list {
			if o.Invalidated != nil {
				o.Invalidated(ev)
			}
		}
	}
	j.Repaired = func(ev RepairEvent) {
		for _, o := range list {
			if o.Repaired != nil {
				o.Repaired(ev)
			}
		}
	}
	j.BreakerChanged = func(ev BreakerEvent) {
		for _, o := range list {
			if o.BreakerChanged != nil {
				o.BreakerChanged(ev)
			}
		}
	}
	j.StaleServed = func(ev StaleEvent) {
		for _, o := range list {
			if o.StaleServed != nil {
				o.StaleServed(ev)
			}
		}
	}
	j.Refreshed = func(ev RefreshEvent) {
		for _, o := range list {
			if o.Refreshed != nil {
				o.Refreshed(ev)
			}
		}
	}
	return j
}

// orCtx returns ctx, or old if ctx is nil.
func orCtx(ctx, old context.Context) context.Context {
	if ctx == nil {
		return old
	}
	return ctx
}

// joined returns the Observers a Cache calls: the members of one that
// JoinObservers made, each on its own, or o alone (none for nil).
func joined(o *Observer) []*Observer {
	switch {
	case o == nil:
		return nil
	case o.members != nil:
		return o.members
	}
	return []*Observer{o}
}

// msgObserverPanics is the message of the episodes of Observer panics (see
// Observer).
const msgObserverPanics = "nearcache: Observer callback panicked (recovered; its event is lost)"

// observerPanic is a panic recovered from an Observer callback, as logged.
type observerPanic struct {
	hook  string // the callback: "LoadStart", ...
	value any    // passed to panic
	stack []byte // the panicking goroutine's stack
}

func (e *observerPanic) Error() string {
	return fmt.Sprintf("tiered: Observer.%s panicked: %v", e.hook, e.value)
}

// Format writes Error, followed by the stack for %+v (which zap logs as
// the "errorVerbose" field).
func (e *observerPanic) Format(s fmt.State, verb rune) {
	_, _ = io.WriteString(s, e.Error())
	if verb == 'v' && s.Flag('+') {
		_, _ = io.WriteString(s, "\n")
		_, _ = s.Write(e.stack)
	}
}

// recoverObserver, deferred around a call of an Observer callback,
// recovers the callback's panic and reports it to the episode of Observer
// panics, with key (the event's first key, if any).
func (c *Cache[V]) recoverObserver(hook, key string) {
	if r := recover(); r != nil {
		c.observerFails.Fail(key, &observerPanic{hook: hook, value: r, stack: debug.Stack()})
	}
}

// The helpers below call each Observer's callback, if set, through a call
// of its own that recovers a panic (callX). Without an Observer each is
// a loop over nothing.

func (c *Cache[V]) loadStart(ctx context.Context, keys []string, batch bool) (context.Context, time.Time) {
	start := time.Now()
	for _, o := range c.obs {
		if o.LoadStart != nil {
			ctx = c.callLoadStart(o, ctx, LoadStartEvent{Namespace: c.cfg.Namespace, Keys: keys, Batch: batch})
		}
	}
	return ctx, start
}

func (c *Cache[V]) callLoadStart(o *Observer, ctx context.Context, ev LoadStartEvent) (out context.Context) {
	out = ctx
	defer c.recoverObserver("LoadStart", firstKey(ev.Keys))
	return orCtx(o.LoadStart(ctx, ev), ctx)
}

func (c *Cache[V]) loadDone(ctx context.Context, ev LoadDoneEvent, start time.Time) {
	d := time.Since(start)
	c.st.loadLatency.Record(d)
	ev.Namespace, ev.Duration = c.cfg.Namespace, d
	for _, o := range c.obs {
		if o.LoadDone != nil {
			c.callLoadDone(o, ctx, ev)
		}
	}
}

func (c *Cache[V]) callLoadDone(o *Observer, ctx context.Context, ev LoadDoneEvent) {
	defer c.recoverObserver("LoadDone", firstKey(ev.Keys))
	o.LoadDone(ctx, ev)
}

func (c *Cache[V]) writeStart(ctx context.Context, op string, keys []string) (context.Context, time.Time) {
	start := time.Now()
	for _, o := range c.obs {
		if o.WriteStart != nil {
			ctx = c.callWriteStart(o, ctx, WriteStartEvent{Namespace: c.cfg.Namespace, Op: op, Keys: keys})
		}
	}
	return ctx, start
}

func (c *Cache[V]) callWriteStart(o *Observer, ctx context.Context, ev WriteStartEvent) (out context.Context) {
	out = ctx
	defer c.recoverObserver("WriteStart", firstKey(ev.Keys))
	return orCtx(o.WriteStart(ctx, ev), ctx)
}

func (c *Cache[V]) writeDone(ctx context.Context, op string, keys []string, start time.Time, err error) {
	ev := WriteDoneEvent{Namespace: c.cfg.Namespace, Op: op, Keys: keys, Duration: time.Since(start), Err: err}
	for _, o := range c.obs {
		if o.WriteDone != nil {
			c.callWriteDone(o, ctx, ev)
		}
	}
}

func (c *Cache[V]) callWriteDone(o *Observer, ctx context.Context, ev WriteDoneEvent) {
	defer c.recoverObserver("WriteDone", firstKey(ev.Keys))
	o.WriteDone(ctx, ev)
}

func (c *Cache[V]) invalidated(keys []string) {
	ev := InvalidationEvent{Namespace: c.cfg.Namespace, Keys: keys}
	for _, o := range c.obs {
		callEvent(c, "Invalidated", firstKey(keys), o.Invalidated, ev)
	}
}

func (c *Cache[V]) repaired(cause invalidation.Cause) {
	ev := RepairEvent{Namespace: c.cfg.Namespace, Cause: cause}
	for _, o := range c.obs {
		callEvent(c, "Repaired", "", o.Repaired, ev)
	}
}

func (c *Cache[V]) staleServed(key string, err error) {
	ev := StaleEvent{Namespace: c.cfg.Namespace, Key: key, Err: err}
	for _, o := range c.obs {
		callEvent(c, "StaleServed", key, o.StaleServed, ev)
	}
}

// refreshEvent tells the Observers that a refresh-ahead ended.
func (c *Cache[V]) refreshEvent(ev RefreshEvent) {
	for _, o := range c.obs {
		callEvent(c, "Refreshed", ev.Key, o.Refreshed, ev)
	}
}

// softServed counts a stale value of key served to one caller by the soft
// timeout (see Config.SoftTimeout) and tells the Observers. It is not
// logged: a slow loader is no failure.
func (c *Cache[V]) softServed(key string) {
	c.st.staleServedSoft.Add(1)
	ev := StaleEvent{Namespace: c.cfg.Namespace, Key: key, SoftTimeout: true}
	for _, o := range c.obs {
		callEvent(c, "StaleServed", key, o.StaleServed, ev)
	}
}

// breakerChanged is the breaker's changed (set only when an Observer has
// BreakerChanged).
func (c *Cache[V]) breakerChanged(from, to BreakerState) {
	ev := BreakerEvent{Namespace: c.cfg.Namespace, From: from, To: to}
	for _, o := range c.obs {
		callEvent(c, "BreakerChanged", "", o.BreakerChanged, ev)
	}
}

// callEvent calls fn (an Observer callback without a ctx; nil: none) with
// ev, recovering its panic (see recoverObserver).
func callEvent[V, E any](c *Cache[V], hook, key string, fn func(E), ev E) {
	if fn == nil {
		return
	}
	defer c.recoverObserver(hook, key)
	fn(ev)
}

// observesLoadDone reports whether some Observer has LoadDone: only then
// are a load's not-found keys and joined callers counted for it.
func (c *Cache[V]) observesLoadDone() bool {
	for _, o := range c.obs {
		if o.LoadDone != nil {
			return true
		}
	}
	return false
}
