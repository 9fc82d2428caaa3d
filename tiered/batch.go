package tiered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// GetMany returns the values of keys found in L1 or L2, without loading:
// L1 first, then every L1 miss in one L2 round trip. Missing keys are absent
// from the map. A non-nil error (for example ErrUnavailable) comes with the
// values that could be read.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	return c.many(ctx, keys, nil, nil)
}

// GetManyOrLoad returns the values of keys: L1 first; all L1 misses in one
// L2 round trip (MGET, or one per node on a Cluster); all L2 misses in one
// call of load; loaded values written back to L2 in one round trip (each
// only if its key still holds what was read); then guarded L1 fills. A key already being loaded by
// another call is joined, not fetched twice. Keys that do not exist are
// absent from the map. A non-nil error comes with the values that were found.
func (c *Cache[V]) GetManyOrLoad(ctx context.Context, keys []string, load BatchLoader[V], opts ...Option) (map[string]V, error) {
	if load == nil {
		return nil, errors.New("tiered: GetManyOrLoad: nil loader")
	}
	return c.many(ctx, keys, load, opts)
}

type batchResult[V any] struct {
	it  item[V]
	err error
}

func (c *Cache[V]) many(ctx context.Context, keys []string, load BatchLoader[V], opts []Option) (map[string]V, error) {
	if c.isDone.Load() {
		return nil, ErrClosed
	}
	out := make(map[string]V, len(keys))
	var missing []string
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		if it, ok := c.local.Get(k); ok {
			if !it.neg {
				out[k] = it.v
			}
			continue
		}
		missing = append(missing, k)
	}
	if len(missing) == 0 {
		return out, nil
	}
	o := c.options(opts)
	waiters, err := c.joinMany(ctx, missing, load, o)
	if err != nil {
		return out, err
	}
	var errs []error
	for i, w := range waiters {
		it, err := w.wait(ctx)
		switch {
		case err != nil && err == ctx.Err():
			return out, err
		case err != nil:
			errs = append(errs, err)
		case !it.neg:
			out[missing[i]] = it.v
		}
	}
	return out, errors.Join(errs...)
}

// joinMany joins running flights for keys that have one and starts one
// flight for each of the others, all led by one batch: a single piece of
// shared work that reads (and loads) them together and then finishes each
// flight, so single-key callers can join them too. The batch runs on its own
// goroutine, so that every caller can leave on its ctx, or when the load
// overruns LoadTimeout.
func (c *Cache[V]) joinMany(ctx context.Context, keys []string, load BatchLoader[V], o callOptions) ([]waiter[V], error) {
	table, group := c.flightsFor(load == nil)
	waiters := make([]waiter[V], len(keys))
	var led []string
	var ledFlights []*flight[V]

	c.flightMu.Lock()
	if c.closed {
		c.flightMu.Unlock()
		return nil, ErrClosed
	}
	c.st.callers.Add(uint64(len(keys)))
	for i, k := range keys {
		if w, ok := joinLocked(table, group, k); ok {
			waiters[i] = w
			continue
		}
		f := newFlight[V](false)
		table[k] = f
		waiters[i] = waiter[V]{f: f}
		led = append(led, k)
		ledFlights = append(ledFlights, f)
	}
	if len(led) > 0 {
		c.st.flights.Add(uint64(len(led)))
		c.work.Add(1)
	}
	c.flightMu.Unlock()
	if len(led) == 0 {
		return waiters, nil
	}

	wctx, cancel := c.detached(ctx, c.cfg.LoadTimeout)
	overrun := time.AfterFunc(c.cfg.LoadTimeout+abortGrace, func() {
		c.flightMu.Lock()
		for i, f := range ledFlights {
			f.abortWith(errLoadOverran)
			if table[led[i]] == f {
				delete(table, led[i]) // later callers start afresh
			}
		}
		c.flightMu.Unlock()
	})
	run := func() {
		defer overrun.Stop()
		defer c.work.Done()
		defer cancel()
		var res map[string]batchResult[V]
		defer func() { c.finishMany(table, led, ledFlights, res) }()
		res = c.runBatch(wctx, led, load, o)
	}
	go run()
	return waiters, nil
}

// errBatchAborted is the result of a key its batch did not settle (the
// batch loader called runtime.Goexit).
var errBatchAborted = errors.New("tiered: batch load aborted (runtime.Goexit in the loader)")

// finishMany ends the flights a batch led: it removes them from table
// (unless an invalidation already forgot them), then wakes their waiters.
func (c *Cache[V]) finishMany(table map[string]*flight[V], keys []string, flights []*flight[V], res map[string]batchResult[V]) {
	c.flightMu.Lock()
	for i, k := range keys {
		if table[k] == flights[i] {
			delete(table, k)
		}
	}
	c.flightMu.Unlock()
	for i, k := range keys {
		r, ok := res[k]
		if !ok {
			r.err = errBatchAborted
		}
		flights[i].it, flights[i].err = r.it, r.err
		close(flights[i].done)
	}
}

// runBatch is the shared work of a batch; it never panics (a loader panic
// becomes every key's error).
func (c *Cache[V]) runBatch(ctx context.Context, keys []string, load BatchLoader[V], o callOptions) (res map[string]batchResult[V]) {
	res = make(map[string]batchResult[V], len(keys))
	defer func() {
		if r := recover(); r != nil {
			c.st.panics.Add(1)
			c.log.Error("nearcache: batch loader panicked", zap.Int("keys", len(keys)), zap.Any("panic", r))
			err := fmt.Errorf("tiered: batch load panicked: %v", r)
			for _, k := range keys {
				if _, ok := res[k]; !ok {
					res[k] = batchResult[V]{err: err}
				}
			}
		}
	}()
	tickets := make(map[string]l1.Ticket, len(keys))
	for _, k := range keys {
		tickets[k] = c.local.Reserve(k)
	}
	looks, l2err := c.readManyL2(ctx, keys)
	now := time.Now()
	var need []string
	for _, k := range keys {
		lk := looks[k]
		if lk.fresh {
			c.fill(tickets[k], lk.it, o.l1TTL, lk.until, now)
			res[k] = batchResult[V]{it: lk.it}
			continue
		}
		need = append(need, k)
	}
	if len(need) == 0 {
		return res
	}
	if load == nil {
		for _, k := range need {
			if l2err != nil {
				res[k] = batchResult[V]{err: l2err}
			} else {
				res[k] = batchResult[V]{it: item[V]{neg: true}}
			}
		}
		return res
	}
	c.st.loaderCalls.Add(1)
	c.st.loadedKeys.Add(uint64(len(need)))
	loaded, err := load(ctx, need)
	if err != nil {
		c.st.loaderErrors.Add(1)
		lerr := fmt.Errorf("tiered: batch load of %d keys: %w", len(need), err)
		for _, k := range need {
			if st := looks[k].stale; st != nil {
				c.st.staleServed.Add(1)
				c.fill(tickets[k], *st, min(o.l1TTL, c.cfg.FailSafeRetryAfter), time.Time{}, now)
				res[k] = batchResult[V]{it: *st}
			} else {
				res[k] = batchResult[V]{err: lerr}
			}
		}
		return res
	}
	entries := make(map[string]l2.Entry, len(need))
	old := make(map[string][]byte, len(need))
	announce := make(map[string]bool)
	ttls := make(map[string]time.Duration, len(need))
	for _, k := range need {
		v, ok := loaded[k]
		it := item[V]{v: v, neg: !ok}
		res[k] = batchResult[V]{it: it}
		ttl := o.ttl
		if it.neg {
			if o.negativeTTL <= 0 {
				continue
			}
			ttl = o.negativeTTL
			c.st.negativeCached.Add(1)
		}
		if !c.local.Valid(tickets[k]) {
			c.st.conflicts.Add(1)
			continue // invalidated while loading: serve, do not keep
		}
		ttls[k] = ttl
		if !looks[k].reachable {
			continue // L2 unreadable: keep locally only
		}
		e, err := c.entry(k, it, ttl)
		if err != nil {
			c.log.Warn("nearcache: loaded value not stored in Redis", zap.String("key", k), zap.Error(err))
			continue
		}
		entries[k], old[k] = e, looks[k].raw
		if looks[k].announce {
			announce[k] = true
		}
	}
	written := c.storeLoadedMany(ctx, entries, old, announce)
	now = time.Now()
	for k, ttl := range ttls {
		if _, tried := entries[k]; tried && written != nil && !written[k] {
			c.st.conflicts.Add(1)
			continue // a newer write or delete won
		}
		c.fill(tickets[k], res[k].it, min(o.l1TTL, ttl), time.Time{}, now)
	}
	return res
}

// readManyL2 reads keys from L2 in one round trip. On failure every lookup
// is unreachable and the error wraps ErrUnavailable.
func (c *Cache[V]) readManyL2(ctx context.Context, keys []string) (map[string]lookup[V], error) {
	looks := make(map[string]lookup[V], len(keys))
	if c.l2 == nil {
		return looks, nil
	}
	var m map[string]l2.Entry
	err := c.redisOp(func() error {
		rctx, cancel := c.redisCtx(ctx)
		defer cancel()
		var err error
		m, err = c.l2.ReadMany(rctx, keys)
		c.st.l2Lookups.Add(uint64(len(keys)))
		return err // with m != nil: unreadable values, which are misses
	})
	if m == nil && err != nil {
		if !errors.Is(err, errBreakerOpen) {
			c.st.l2Errors.Add(1)
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return looks, fmt.Errorf("tiered: get %d keys: %w", len(keys), err)
	}
	now := time.Now()
	for _, k := range keys {
		if e, ok := m[k]; ok {
			looks[k] = c.classify(k, e, now)
		} else {
			looks[k] = lookup[V]{reachable: true}
		}
	}
	return looks, nil
}

// storeLoadedMany writes loaded entries back with SetManyIf, each only if
// its key still holds what the load read (old), in one round trip (two when
// some must be announced); it returns which were written, or nil when the
// write failed (then nothing is known and L1 may keep the values: the bus
// will be unhealthy if Redis is).
//
// A write-back over an absent key or a tombstone publishes no invalidation:
// no instance can hold a local copy there that a published write has not
// already invalidated (local copies never outlive the value they came from,
// and deletes publish). Skipping it saves the sequence bookkeeping, the
// PUBLISH, and the other instances' needless L1 drops on every miss. Over
// anything else (a stale, expired or corrupt value, possibly written by a
// foreign program) other instances may hold a copy of an older value, so
// those write-backs are announced.
func (c *Cache[V]) storeLoadedMany(ctx context.Context, entries map[string]l2.Entry, old map[string][]byte, announce map[string]bool) map[string]bool {
	if len(entries) == 0 {
		return nil
	}
	quiet, loud := entries, map[string]l2.Entry(nil)
	if len(announce) > 0 {
		quiet, loud = make(map[string]l2.Entry, len(entries)), make(map[string]l2.Entry, len(announce))
		for k, e := range entries {
			if announce[k] {
				loud[k] = e
			} else {
				quiet[k] = e
			}
		}
	}
	written := make(map[string]bool, len(entries))
	err := c.redisOp(func() error {
		wctx, cancel := c.redisCtx(ctx)
		defer cancel()
		for _, part := range []struct {
			entries map[string]l2.Entry
			opts    []l2.WriteOption
		}{{quiet, nil}, {loud, []l2.WriteOption{l2.Notify(c.notifyDelete)}}} {
			if len(part.entries) == 0 {
				continue
			}
			w, err := c.l2.SetManyIf(wctx, part.entries, old, part.opts...)
			if err != nil {
				return err
			}
			for k, ok := range w {
				written[k] = ok
			}
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, errBreakerOpen) {
			c.st.l2Errors.Add(1)
			c.log.Warn("nearcache: writing loaded values to redis failed", zap.Int("keys", len(entries)), zap.Error(err))
		}
		return nil
	}
	return written
}
