package tiered

import (
	"context"
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
// block in them, and never call the Cache that calls them. Slices in an
// event are borrowed: read them during the call only.
type Observer struct {
	// LoadStart is called before a Loader or BatchLoader runs, with the
	// load's ctx (detached from its callers' cancellation, with their
	// values). The ctx it returns is the one the loader and LoadDone get
	// (a span, say); returning ctx itself is fine.
	LoadStart func(ctx context.Context, ev LoadStartEvent) context.Context
	// LoadDone is called when that loader call has returned.
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
	// state.
	BreakerChanged func(ev BreakerEvent)
	// StaleServed is called when fail-safe serves a stale value because
	// the loader failed.
	StaleServed func(ev StaleEvent)
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
	// an error here: NotFound counts such keys.
	Err      error
	NotFound int // keys the loader reported absent
	// Coalesced is the number of callers that joined the load's flights
	// (beyond the caller that started each) by the time the loader
	// returned: they waited for this load instead of starting their own.
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
	Err       error // the loader's error that made it stale
}

// JoinObservers returns an Observer that calls each of obs in turn (nil
// ones are skipped); the ctx returned by one's LoadStart or WriteStart is
// passed to the next. It returns nil when none is left, the only one when
// one is.
func JoinObservers(obs ...*Observer) *Observer {
	var list []*Observer
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	j := &Observer{}
	j.LoadStart = func(ctx context.Context, ev LoadStartEvent) context.Context {
		for _, o := range list {
			if o.LoadStart != nil {
				ctx = o.LoadStart(ctx, ev)
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
				ctx = o.WriteStart(ctx, ev)
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
	return j
}

// observe helpers: each is a no-op without an Observer or its callback.

func (c *Cache[V]) loadStart(ctx context.Context, keys []string, batch bool) (context.Context, time.Time) {
	start := time.Now()
	if o := c.cfg.Observer; o != nil && o.LoadStart != nil {
		if nctx := o.LoadStart(ctx, LoadStartEvent{Namespace: c.cfg.Namespace, Keys: keys, Batch: batch}); nctx != nil {
			ctx = nctx
		}
	}
	return ctx, start
}

func (c *Cache[V]) loadDone(ctx context.Context, ev LoadDoneEvent, start time.Time) time.Duration {
	d := time.Since(start)
	c.st.loadLatency.Record(d)
	if o := c.cfg.Observer; o != nil && o.LoadDone != nil {
		ev.Namespace, ev.Duration = c.cfg.Namespace, d
		o.LoadDone(ctx, ev)
	}
	return d
}

func (c *Cache[V]) writeStart(ctx context.Context, op string, keys []string) (context.Context, time.Time) {
	start := time.Now()
	if o := c.cfg.Observer; o != nil && o.WriteStart != nil {
		if nctx := o.WriteStart(ctx, WriteStartEvent{Namespace: c.cfg.Namespace, Op: op, Keys: keys}); nctx != nil {
			ctx = nctx
		}
	}
	return ctx, start
}

func (c *Cache[V]) writeDone(ctx context.Context, op string, keys []string, start time.Time, err error) {
	if o := c.cfg.Observer; o != nil && o.WriteDone != nil {
		o.WriteDone(ctx, WriteDoneEvent{Namespace: c.cfg.Namespace, Op: op, Keys: keys, Duration: time.Since(start), Err: err})
	}
}

func (c *Cache[V]) staleServed(key string, err error) {
	if o := c.cfg.Observer; o != nil && o.StaleServed != nil {
		o.StaleServed(StaleEvent{Namespace: c.cfg.Namespace, Key: key, Err: err})
	}
}

func (c *Cache[V]) breakerChanged(from, to BreakerState) {
	if o := c.cfg.Observer; o != nil && o.BreakerChanged != nil {
		o.BreakerChanged(BreakerEvent{Namespace: c.cfg.Namespace, From: from, To: to})
	}
}
