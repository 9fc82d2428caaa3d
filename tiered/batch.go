package tiered

import (
	"context"
	"errors"
	"slices"
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
// only if its key still holds what was read); then guarded L1 fills. A key
// already being loaded by another call is joined, not fetched twice: that
// call's loader and options apply to it (see Option). Keys that do not exist
// are absent from the map. A non-nil error comes with the values that were
// found.
func (c *Cache[V]) GetManyOrLoad(ctx context.Context, keys []string, load BatchLoader[V], opts ...Option) (map[string]V, error) {
	if load == nil {
		return nil, errors.New("tiered: GetManyOrLoad: nil loader")
	}
	return c.many(ctx, keys, load, opts)
}

type batchResult[V any] struct {
	it  item[V]
	err error
	ok  bool // the batch has settled this key
}

// maxPooledKeys bounds the batches whose working memory is kept for reuse
// (see manyScratch, batchState): a rare huge batch must not pin its
// slices.
const maxPooledKeys = 4096

// manyScratch is the working memory of one GetMany/GetManyOrLoad call,
// reused through Cache.manyPool: the keys that missed L1 and the caller's
// waiters on their flights.
type manyScratch[V any] struct {
	missing []string
	waiters []waiter[V]
}

func (c *Cache[V]) getManyScratch() *manyScratch[V] {
	if sc, ok := c.manyPool.Get().(*manyScratch[V]); ok {
		return sc
	}
	return &manyScratch[V]{}
}

func (c *Cache[V]) putManyScratch(sc *manyScratch[V]) {
	if cap(sc.missing) > maxPooledKeys {
		return
	}
	clear(sc.missing) // the caller's keys
	clear(sc.waiters) // they reference flights
	sc.missing, sc.waiters = sc.missing[:0], sc.waiters[:0]
	c.manyPool.Put(sc)
}

func (c *Cache[V]) many(ctx context.Context, keys []string, load BatchLoader[V], opts []Option) (map[string]V, error) {
	if c.isDone.Load() {
		return nil, ErrClosed
	}
	out := make(map[string]V, len(keys))
	sc := c.getManyScratch()
	defer c.putManyScratch(sc)
	// A key repeated in keys is fetched once: its second miss joins the
	// flight its first one starts.
	for _, k := range keys {
		if _, dup := out[k]; dup {
			continue
		}
		if it, ok, due := c.hit(k, load != nil); ok {
			if !it.neg {
				out[k] = it.v
			}
			if due {
				c.refreshAhead(ctx, k, oneKey(load), opts, it.tags)
			}
			continue
		}
		sc.missing = append(sc.missing, k)
	}
	missing := sc.missing
	if len(missing) == 0 {
		return out, nil
	}
	o := c.options(opts)
	if err := checkTags("load", o.tags); err != nil {
		return out, err
	}
	if err := ctx.Err(); err != nil {
		return out, readErr(ctx, load != nil, slices.Clone(missing), err)
	}
	sc.waiters = slices.Grow(sc.waiters[:0], len(missing))[:len(missing)]
	waiters := sc.waiters
	led, err := c.joinMany(ctx, missing, load, o, waiters)
	if err != nil {
		return out, err
	}
	if led != nil {
		defer c.putBatch(led) // once the waits below have read its flights
	}
	var errs []error
	var failed []*flight[V] // a repeated key's flight reports its error once
	var overran []string
	var softKeys map[string]bool // keys served a stale value by the soft timeout (counted once each)
	for i := range waiters {
		w := &waiters[i]
		it, soft, err := w.wait(ctx)
		if soft && !softKeys[missing[i]] {
			if softKeys == nil {
				softKeys = make(map[string]bool)
			}
			softKeys[missing[i]] = true
			c.softServed(missing[i])
		}
		switch {
		case err != nil && err == ctx.Err():
			return out, readErr(ctx, load != nil, slices.Clone(missing), err)
		case err == errLoadOverran:
			if !slices.Contains(overran, missing[i]) {
				overran = append(overran, missing[i])
			}
		case err != nil:
			// So does an error that several flights share (a batch's
			// loader or L2 read).
			if !slices.Contains(failed, w.f) && !slices.Contains(errs, err) {
				failed = append(failed, w.f)
				errs = append(errs, err)
			}
		case !it.neg:
			out[missing[i]] = it.v
		}
	}
	if overran != nil {
		errs = append(errs, readErr(ctx, load != nil, overran, errLoadOverran))
	}
	return out, errors.Join(errs...)
}

// hit looks key up in L1. With refresh, due reports that the caller is
// the one to start the key's refresh (see l1.Cache.GetRefresh); without
// (GetMany, which has no loader), the entry's due report is left for a
// reader that can refresh.
func (c *Cache[V]) hit(key string, refresh bool) (it item[V], ok, due bool) {
	if refresh {
		it, ok, due = c.hot.GetRefresh(key)
	} else {
		it, ok = c.hot.Get(key)
	}
	if ok && it.tags != nil && !c.tagsCurrent(it.tags) {
		c.st.l1TagStale.Add(1)
		return item[V]{}, false, false
	}
	return it, ok, due
}

// batch is the set of flights one GetMany/GetManyOrLoad call leads. A
// batch led inline to its end whose flights nobody else waited on is
// reused (Cache.batchPool, see putBatch), so that an all-hit batch
// allocates no flights.
type batch[V any] struct {
	flights []flight[V]   // the flights it leads, each with its key
	done    chan struct{} // closed once every flight is settled; the leader waits on it
	closed  bool          // done is closed; guarded by flightMu
	// waited: a caller of another call waited on one of its flights
	// (joinLocked), and may read the flight's result at any time; set by
	// settleBatch, under flightMu.
	waited bool
}

// getBatch returns a batch with n zeroed flights and a new done channel.
func (c *Cache[V]) getBatch(n int) *batch[V] {
	b, _ := c.batchPool.Get().(*batch[V])
	if b == nil {
		b = &batch[V]{}
	}
	b.flights = slices.Grow(b.flights[:0], n)[:n]
	b.done = make(chan struct{})
	return b
}

// putBatch returns b to the pool for a later batch unless a caller of
// another call waited on one of its flights, or it is large. The caller
// led b inline (joinMany) and has read its flights' results: b is settled,
// none of its flights is in a flight table (settleBatch removed them, or an
// invalidation forgot them), so with no other waiter nothing refers to b
// once its leader returns.
func (c *Cache[V]) putBatch(b *batch[V]) {
	if b.waited || cap(b.flights) > maxPooledKeys {
		return
	}
	clear(b.flights[:cap(b.flights)])
	*b = batch[V]{flights: b.flights[:0]}
	c.batchPool.Put(b)
}

// joinMany joins running flights for keys that have one and starts one
// flight for each of the others, all led by one batch: a single piece of
// shared work that reads (and loads) them together and then settles each
// flight, so single-key callers can join them too. It sets waiters[i] to
// the caller's waiter on keys[i]. Like a single-key flight, the batch runs
// on its own goroutine, detached from ctx, unless the caller can lead
// inline (canLeadInline): then its L2 part runs on the caller's goroutine,
// and only a loader call is handed to a goroutine. When the batch ran
// inline to its end, joinMany returns it (settled), for putBatch once the
// caller has read its waiters.
func (c *Cache[V]) joinMany(ctx context.Context, keys []string, load BatchLoader[V], o callOptions, waiters []waiter[V]) (led *batch[V], err error) {
	table, group := c.flightsFor(load == nil)
	b := c.getBatch(len(keys)) // the flights this batch leads, in one slice
	flights := b.flights
	st := c.getBatchState()

	c.flightMu.Lock()
	if c.closed {
		c.flightMu.Unlock()
		c.putBatchState(st)
		return nil, ErrClosed
	}
	n, repeated := 0, 0
	for i, k := range keys {
		running := table[k]
		if running != nil && running.batch == b {
			// k is repeated in keys: the same caller, not another one
			// that joins the flight.
			waiters[i] = waiter[V]{done: b.done, f: running}
			repeated++
			continue
		}
		if w, ok := joinFlightLocked(table, group, k, running); ok {
			waiters[i] = w
			continue
		}
		f := &flights[n]
		n++
		f.key, f.batch = k, b
		table[k] = f
		waiters[i] = waiter[V]{done: b.done, f: f}
		st.keys = append(st.keys, k)
	}
	c.st.callers.Add(uint64(len(keys) - repeated))
	b.flights = flights[:n]
	st.flights = b.flights
	st.res = slices.Grow(st.res, n)[:n]
	if n > 0 {
		c.st.flights.Add(uint64(n))
		c.work.Add(1)
	}
	c.flightMu.Unlock()
	switch {
	case n == 0:
		c.putBatchState(st)
		c.putBatch(b) // no flights: nobody can refer to it
	case c.canLeadInline(ctx):
		if !c.leadBatchInline(ctx, table, b, st, load, o) {
			return b, nil
		}
	default:
		c.goBatch(ctx, time.Now().Add(c.cfg.LoadTimeout), table, b, st, func(wctx context.Context) {
			c.protect(st, func() {
				if c.batchL2(wctx, st, load, o) {
					c.batchLoad(wctx, st, load, o)
				}
			})
		})
	}
	return nil, nil
}

// leadBatchInline runs batch b on the caller's goroutine up to the loader:
// tickets, one L2 round trip, fills. If the loader must run, the rest is
// handed to a goroutine (goBatch), which it reports, and the caller waits
// for it like its other waiters; otherwise b is settled when it returns.
func (c *Cache[V]) leadBatchInline(ctx context.Context, table map[string]*flight[V], b *batch[V], st *batchState[V], load BatchLoader[V], o callOptions) (handed bool) {
	deadline := time.Now().Add(c.cfg.LoadTimeout) // the whole batch's
	defer func() {
		if !handed { // also on runtime.Goexit: waiters must not hang
			c.settleBatch(table, b, st.res, errBatchAborted)
			c.putBatchState(st)
			c.work.Done()
		}
	}()
	more := false
	c.protect(st, func() { more = c.batchL2(ctx, st, load, o) })
	if !more {
		return false
	}
	handed = true
	c.goBatch(ctx, deadline, table, b, st, func(wctx context.Context) {
		c.protect(st, func() { c.batchLoad(wctx, st, load, o) })
	})
	return true
}

// goBatch runs work on its own goroutine (see goDetached) and then settles
// batch b with st's results; an overrun releases the batch's waiters with
// errLoadOverran, so later callers start afresh. Once work has returned and
// b is settled, st goes back to the pool.
func (c *Cache[V]) goBatch(ctx context.Context, deadline time.Time, table map[string]*flight[V], b *batch[V], st *batchState[V], work func(context.Context)) {
	c.goDetached(ctx, deadline, work,
		func() { c.settleBatch(table, b, nil, errLoadOverran) },
		func(completed bool) {
			res := st.res
			if !completed {
				res = nil // runtime.Goexit: the work's results are incomplete
			}
			c.settleBatch(table, b, res, errBatchAborted)
			c.putBatchState(st)
		})
}

// errBatchAborted is the result of a key its batch did not settle (the
// batch loader called runtime.Goexit).
var errBatchAborted = errors.New("tiered: batch load aborted (runtime.Goexit in the loader)")

// settleBatch settles every flight of b that is not settled yet: with its
// result in res (indexed like b.flights), or with missing when res has
// none. It removes the flights from table (unless an invalidation already
// forgot them) and wakes the batch's leader.
func (c *Cache[V]) settleBatch(table map[string]*flight[V], b *batch[V], res []batchResult[V], missing error) {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	for i := range b.flights {
		f := &b.flights[i]
		if table[f.key] == f {
			delete(table, f.key)
		}
		if f.done != nil || f.joined > 0 { // see joinLocked
			b.waited = true
		}
		if i < len(res) && res[i].ok {
			f.settleLocked(res[i].it, res[i].err)
		} else {
			f.settleLocked(item[V]{}, missing)
		}
	}
	if !b.closed {
		b.closed = true
		close(b.done)
	}
}

// batchState is the work of one batch, indexed like keys. Its slices are
// reused from batch to batch (Cache.statePool): a batch's bookkeeping
// costs no allocation per key.
type batchState[V any] struct {
	keys    []string
	tickets []l1.Ticket
	entries []l2.Entry  // the L2 read; cleared after use (they alias the reply)
	looks   []lookup[V] // with a loader only: what L2 held, for batchLoad
	l2err   error
	res     []batchResult[V]
	need    []int       // keys (by index) the loader must answer
	flights []flight[V] // the batch's flights, indexed like keys (for Observer.LoadDone)
}

func (c *Cache[V]) getBatchState() *batchState[V] {
	if st, ok := c.statePool.Get().(*batchState[V]); ok {
		return st
	}
	return &batchState[V]{}
}

// putBatchState clears st (nothing it referenced is kept alive) and
// returns it to the pool.
func (c *Cache[V]) putBatchState(st *batchState[V]) {
	if cap(st.keys) > maxPooledKeys {
		return
	}
	// Every element a batch wrote is below its len here, so the whole
	// capacity is zero again for the next batch.
	clear(st.keys)
	clear(st.tickets)
	clear(st.entries)
	clear(st.looks)
	clear(st.res)
	*st = batchState[V]{keys: st.keys[:0], tickets: st.tickets[:0], entries: st.entries[:0], looks: st.looks[:0], res: st.res[:0], need: st.need[:0]}
	c.statePool.Put(st)
}

// protect runs fn; a panic in it becomes the error of every key that has
// no result yet. (The batch loader's own panics are recovered closer, by
// runBatchLoader, so that Observer.LoadDone hears of them.)
func (c *Cache[V]) protect(st *batchState[V], fn func()) {
	defer func() {
		if r := recover(); r != nil {
			err := c.loadPanicked("", r, zap.Int("batch_keys", len(st.keys)))
			for i := range st.res {
				if !st.res[i].ok {
					st.res[i] = batchResult[V]{err: err, ok: true}
				}
			}
		}
	}()
	fn()
}

// batchL2 is the first part of a batch: fill tickets, one L2 round trip, and
// fills of the fresh values. It reports whether keys remain for the loader
// (st.need); the others have their results.
func (c *Cache[V]) batchL2(ctx context.Context, st *batchState[V], load BatchLoader[V], o callOptions) bool {
	n := len(st.keys)
	st.tickets = slices.Grow(st.tickets[:0], n)[:n]
	for i, k := range st.keys {
		st.tickets[i] = c.local.Reserve(k)
	}
	if load != nil {
		st.looks = slices.Grow(st.looks[:0], n)[:n]
	}
	derr := c.readManyL2(ctx, st)
	read := len(st.entries) == n // else every key is unreachable
	now := time.Now()
	var scratch lookup[V] // without a loader, each key's lookup in turn
	for i, k := range st.keys {
		lk := &scratch
		if load != nil {
			lk = &st.looks[i] // kept for batchLoad
		}
		switch {
		case !read:
			*lk = lookup[V]{}
		case st.entries[i].Raw == nil && !st.entries[i].Corrupt:
			*lk = lookup[V]{reachable: true} // absent
		default:
			e := &st.entries[i]
			c.classifyInto(ctx, lk, k, e, decodeErrOf(derr, k, e), now)
		}
		switch {
		case lk.fresh:
			c.fillAhead(st.tickets[i], lk.it, o.l1TTL, lk.until, now, lk.refreshAt)
			st.res[i] = batchResult[V]{it: lk.it, ok: true}
			if load != nil {
				st.looks[i] = lookup[V]{} // batchLoad has no use for it (its raw aliases the reply)
			}
		case load != nil:
			st.need = append(st.need, i)
		case lk.err != nil: // its tags' versions could not be read
			st.res[i] = batchResult[V]{err: lk.err, ok: true}
		case st.l2err != nil:
			st.res[i] = batchResult[V]{err: st.l2err, ok: true}
		default:
			st.res[i] = batchResult[V]{it: item[V]{neg: true}, ok: true}
		}
	}
	clear(st.entries) // they alias the reply
	st.entries = st.entries[:0]
	return len(st.need) > 0
}

// batchLoad is the rest of a batch: one loader call for st.need, fail-safe
// stale values on its failure (or, while it runs, on the soft timeout: see
// Config.SoftTimeout), the write-back to L2 in one round trip, and the
// guarded fills.
// batchLoadRound calls the loader for the keys st.need and writes back
// and fills what it returns (see batchLoad).
func (c *Cache[V]) batchLoadRound(ctx context.Context, st *batchState[V], load BatchLoader[V], o callOptions) {
	need := make([]string, len(st.need))
	for j, i := range st.need {
		need[j] = st.keys[i]
	}
	c.st.loaderCalls.Add(1)
	c.st.loadedKeys.Add(uint64(len(need)))
	soft := c.softTimerForBatch(st)
	if soft != nil {
		defer soft.stop() // runtime.Goexit in the loader: st must not be read once returned to the pool
	}
	pre, tagErr := c.stampTags(ctx, o.tags)
	loaded, err, set, panicked := c.runBatchLoader(ctx, st, need, load)
	soft.stop() // before st.res is written; now the flights' soft is known
	if panicked {
		for _, i := range st.need {
			st.res[i] = batchResult[V]{err: err, ok: true}
		}
		return
	}
	now := time.Now()
	if err != nil {
		c.st.loaderErrors.Add(1)
		lerr := &opError{op: "load", keys: need, err: err}
		for _, i := range st.need {
			if stale := st.looks[i].stale; stale != nil && soft != nil && st.flights[i].soft {
				// Its callers have it already (see Config.SoftTimeout).
				st.res[i] = batchResult[V]{it: *stale, ok: true}
			} else if stale != nil {
				c.st.staleServed.Add(1)
				c.staleServes.Fail(st.keys[i], lerr)
				c.staleServed(st.keys[i], err)
				c.fill(st.tickets[i], *stale, min(o.l1TTL, c.cfg.FailSafeRetryAfter), time.Time{}, now)
				st.res[i] = batchResult[V]{it: *stale, ok: true}
			} else {
				st.res[i] = batchResult[V]{err: lerr, ok: true}
			}
		}
		return
	}
	entries := make(map[string]l2.Entry, len(need))
	old := make(map[string][]byte, len(need))
	announce := make(map[string]bool)
	ttls := make(map[int]time.Duration, len(need))
	late := overran(ctx) || tagErr != nil || set.tagErr != nil // keep nothing
	for _, i := range st.need {
		k := st.keys[i]
		v, ok := loaded[k]
		stamps, tagsFit := mergeStamps(pre, set.tagsFor(k))
		it := item[V]{v: v, neg: !ok, tags: stamps}
		st.res[i] = batchResult[V]{it: it, ok: true}
		if late || !tagsFit {
			continue // kept nowhere (too many tags: see mergeStamps)
		}
		ttl, keep := c.storeTTL(o, set, k, it.neg)
		if !keep {
			continue
		}
		if !c.local.Valid(st.tickets[i]) {
			c.st.conflicts.Add(1)
			continue // invalidated while loading: serve, do not keep
		}
		ttls[i] = ttl
		lk := st.looks[i]
		if !lk.reachable {
			continue // L2 unreadable: keep locally only
		}
		e, err := c.entry(it, ttl)
		if err != nil {
			c.unstored.Fail(k, err) // kept in L1 only
			continue
		}
		entries[k], old[k] = e, lk.raw
		if lk.announce {
			announce[k] = true
		}
	}
	written := c.storeLoadedMany(ctx, entries, old, announce)
	now = time.Now()
	l1TTL := c.loadL1TTL(o, set)
	for i, ttl := range ttls {
		k := st.keys[i]
		if _, tried := entries[k]; tried && written != nil && !written[k] {
			c.st.conflicts.Add(1)
			continue // a newer write or delete won
		}
		it := st.res[i].it
		c.fillAhead(st.tickets[i], it, min(l1TTL, ttl), time.Time{}, now, c.refreshAt(it, ttl, now))
	}
}

// oneKey is load for one key: how a refresh-ahead, which refreshes keys one
// by one, calls a BatchLoader.
func oneKey[V any](load BatchLoader[V]) Loader[V] {
	return func(ctx context.Context, key string) (V, error) {
		m, err := load(ctx, []string{key})
		if err != nil {
			var zero V
			return zero, err
		}
		v, ok := m[key]
		if !ok {
			return v, ErrNotFound
		}
		return v, nil
	}
}

// runBatchLoader calls load for the keys need of batch st between the
// Observer's LoadStart and LoadDone, and returns what load set with
// SetTTL, SetKeyTTL and SetL1TTL. A panic in load is recovered here,
// counted and logged (loadPanicked), and returned as err with panicked
// set; if load exits through runtime.Goexit, LoadDone is still called
// (with errLoaderGoexit) before the goroutine goes on exiting.
func (c *Cache[V]) runBatchLoader(ctx context.Context, st *batchState[V], need []string, load BatchLoader[V]) (loaded map[string]V, err error, set loadSet, panicked bool) {
	ctx, lt := loaderCtx(ctx)
	lctx, start := c.loadStart(ctx, need, true)
	returned := false
	defer func() {
		if returned {
			return
		}
		lt.end()
		if r := recover(); r != nil {
			err, panicked = c.loadPanicked("", r, zap.Int("batch_keys", len(st.keys))), true
		} else {
			err = errLoaderGoexit
		}
		c.loadDone(lctx, LoadDoneEvent{Keys: need, Batch: true, Err: err, Coalesced: c.batchJoined(st)}, start)
	}()
	lt.stamp = c.stampFn
	lt.begin("", need)
	loaded, err = load(lctx, need)
	returned = true
	set = lt.end()
	ev := LoadDoneEvent{Keys: need, Batch: true, Err: err}
	if c.observesLoadDone() {
		if err == nil {
			for _, k := range need {
				if _, ok := loaded[k]; !ok {
					ev.NotFound++
				}
			}
		}
		ev.Coalesced = c.batchJoined(st)
	}
	c.loadDone(lctx, ev, start)
	return loaded, err, set, false
}

// batchJoined returns the callers that joined the flights of st's keys
// that the loader answers, if an Observer wants them; 0 otherwise.
func (c *Cache[V]) batchJoined(st *batchState[V]) int {
	if !c.observesLoadDone() {
		return 0
	}
	n := 0
	c.flightMu.Lock()
	for _, i := range st.need {
		n += int(st.flights[i].joined)
	}
	c.flightMu.Unlock()
	return n
}

// readManyL2 reads st.keys from L2 in one round trip into st.entries,
// indexed like the keys, and returns the error that joins the decode errors
// of unreadable entries. When L2 cannot be read, st.entries stays empty
// and st.l2err says why (it wraps ErrUnavailable); in L1-only mode every
// key reads as unreachable, with st.l2err nil.
func (c *Cache[V]) readManyL2(ctx context.Context, st *batchState[V]) error {
	st.entries = st.entries[:0]
	if c.l2 == nil {
		return nil
	}
	keys := st.keys
	err := c.redisOp(ctx, func(rctx context.Context) error {
		var err error
		st.entries, err = c.l2.AppendReadMany(rctx, st.entries, keys)
		c.st.l2Lookups.Add(uint64(len(keys)))
		return err // with entries read: unreadable values, which are misses
	})
	if len(st.entries) == 0 && err != nil {
		if errors.Is(err, errBreakerOpen) {
			st.l2err = &opError{op: "get", keys: slices.Clone(keys), err: err}
		} else {
			c.st.l2Errors.Add(1)
			st.l2err = remoteError("get", slices.Clone(keys), ErrUnavailable, err)
		}
		return nil
	}
	return err
}

// decodeErrOf returns the error that ReadMany joined in err for the corrupt
// entry e of key (nil for any other entry).
func decodeErrOf(err error, key string, e *l2.Entry) error {
	if !e.Corrupt {
		return nil
	}
	if errs, ok := err.(interface{ Unwrap() []error }); ok {
		for _, err := range errs.Unwrap() {
			if le, ok := err.(*l2.Error); ok && le.Key == key {
				return le
			}
		}
	}
	return err
}

// storeLoadedMany writes loaded entries back with SetManyIf, each only if
// its key still holds what the load read (old), in one round trip (two when
// some must be announced); it returns which were written, or nil when the
// write failed (then nothing is known and L1 may keep the values: the bus
// will be unhealthy if Redis is). Entries too large for Redis are first
// removed from entries (leaveOutOversized), so that they do not fail the
// others' write.
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
	c.leaveOutOversized(entries)
	if len(entries) == 0 || overran(ctx) {
		return nil // nothing to write, or too late to (Redis is not to blame)
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
	err := c.redisOp(ctx, func(wctx context.Context) error {
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
		if errors.Is(err, context.Canceled) {
			return nil // Close cancelled the flight: nothing to say about Redis
		}
		if !errors.Is(err, errBreakerOpen) {
			c.st.l2Errors.Add(1)
		}
		c.writeFails.Fail(anyKey(entries), err)
		return nil
	}
	return written
}

// anyKey returns a key of entries, for a log line.
func anyKey(entries map[string]l2.Entry) string {
	for k := range entries {
		return k
	}
	return ""
}

// leaveOutOversized removes from entries the values whose encoded form
// exceeds MaxValueSize: one of them would make SetManyIf write none of the
// batch. A value left out is still returned to its callers and may be kept
// in this instance's L1 through its ticket: it is not in Redis, so no other
// instance can hold a copy that a later write would have to reach, and a
// write by anyone still invalidates this one. Each is counted in
// Stats.L2.Store.TooLarge (by CheckSize) and reported to the unstored
// episode (see Config.Logger).
func (c *Cache[V]) leaveOutOversized(entries map[string]l2.Entry) {
	for k, e := range entries {
		if err := c.l2.CheckSize(k, e); err != nil {
			delete(entries, k)
			c.unstored.Fail(k, err)
		}
	}
}
