package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nearcache/nearcache/internal/errfmt"
	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// Get returns the value of key from L1 or L2 without loading it. A key in
// neither is ErrNotFound; with Redis unreachable the error wraps
// ErrUnavailable.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	if it, ok := c.hot.Get(key); ok {
		if it.tags == nil || c.tagsCurrent(it.tags) {
			return it.result()
		}
		c.st.l1TagStale.Add(1)
	}
	return c.miss(ctx, key, nil, nil)
}

// GetOrLoad returns the value of key from L1, else L2, else load (whose
// result is written back to L2 and to L1). Concurrent misses for one key
// share one load, run with the loader and options of the call that started
// it (see Option); each caller waits on its own ctx. An L1 hit costs one
// ristretto lookup: no allocation, no lock, no clock read.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load Loader[V], opts ...Option) (V, error) {
	if it, ok, due := c.hot.GetRefresh(key); ok {
		if it.tags == nil || c.tagsCurrent(it.tags) {
			if due {
				c.refreshAhead(ctx, key, load, opts, it.tags)
			}
			return it.result()
		}
		c.st.l1TagStale.Add(1)
	}
	if load == nil {
		var zero V
		return zero, fmt.Errorf("tiered: GetOrLoad %s: nil loader", errfmt.Key(key))
	}
	return c.miss(ctx, key, load, opts)
}

func (it item[V]) result() (V, error) {
	if it.neg {
		var zero V
		return zero, ErrNotFound
	}
	return it.v, nil
}

func (c *Cache[V]) miss(ctx context.Context, key string, load Loader[V], opts []Option) (V, error) {
	var zero V
	o := c.options(opts)
	if err := checkTags("load", o.tags); err != nil {
		return zero, err
	}
	if err := ctx.Err(); err != nil {
		// An ended ctx starts nothing: its caller gets ctx's error, not
		// whatever a flight that raced it could find.
		return zero, readErr(ctx, load != nil, []string{key}, err)
	}
	w, lead, err := c.join(ctx, key, load, o)
	if err != nil {
		return zero, err
	}
	var it item[V]
	var soft bool
	if lead {
		it, soft, err = c.leadInline(ctx, key, w.f, load, o)
	} else {
		it, soft, err = w.wait(ctx)
	}
	if err != nil {
		return zero, readErr(ctx, load != nil, []string{key}, err)
	}
	if soft {
		c.softServed(key)
	}
	return it.result()
}

// readErr names the call and keys in a read's error that does not name
// them itself: the caller's ctx error (the caller left) and errLoadOverran.
// Every other error of a flight already does.
func readErr(ctx context.Context, load bool, keys []string, err error) error {
	if err != errLoadOverran && err != ctx.Err() {
		return err
	}
	op := "get"
	if load {
		op = "load"
	}
	return &opError{op: op, keys: keys, err: err}
}

// fetch is the shared work of one miss: ticket, L2, loader, L2 write, fill.
func (c *Cache[V]) fetch(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions) (item[V], error) {
	t, look, it, err, done := c.fetchL2(ctx, key, load, o)
	if done {
		return it, err
	}
	return c.loadClaimed(ctx, key, f, load, o, t, look)
}

// errLoaderGoexit is the Err of Observer.LoadDone for a loader that exited
// through runtime.Goexit (its callers get an error naming the key).
var errLoaderGoexit = errors.New("tiered: the loader exited through runtime.Goexit")

// runLoader calls load for key of flight f between the Observer's LoadStart
// and LoadDone, and returns what load set with SetTTL, SetKeyTTL and
// SetL1TTL. A panic in load is recovered here, counted and logged
// (loadPanicked), and returned as err with panicked set: the flight's
// callers get it. If load exits through runtime.Goexit, LoadDone is still
// called (with errLoaderGoexit) before the goroutine goes on exiting.
func (c *Cache[V]) runLoader(ctx context.Context, key string, f *flight[V], load Loader[V]) (v V, err error, set loadSet, panicked bool) {
	var keys []string
	if c.obs != nil {
		keys = []string{key}
	}
	ctx, lt := loaderCtx(ctx)
	lctx, start := c.loadStart(ctx, keys, false)
	returned := false
	defer func() {
		if returned {
			return
		}
		lt.end()
		if r := recover(); r != nil {
			err, panicked = c.loadPanicked(key, r), true
		} else {
			err = errLoaderGoexit
		}
		c.loadDone(lctx, LoadDoneEvent{Keys: keys, Err: err, Coalesced: c.joinedOf(f)}, start)
	}()
	lt.stamp = c.stampFn
	lt.begin(key, nil)
	v, err = load(lctx, key)
	returned = true
	set = lt.end()
	ev := LoadDoneEvent{Keys: keys, Coalesced: c.joinedOf(f)}
	switch {
	case errors.Is(err, ErrNotFound):
		ev.NotFound = 1
	case err != nil:
		ev.Err = err
	}
	c.loadDone(lctx, ev, start)
	return v, err, set, false
}

// joinedOf returns the callers that joined flight f so far, if an Observer
// wants them (LoadDoneEvent.Coalesced); 0 otherwise.
func (c *Cache[V]) joinedOf(f *flight[V]) int {
	if !c.observesLoadDone() {
		return 0
	}
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	return int(f.joined)
}

// fetchL2 is the first part of a miss: the fill ticket, the L2 read, and on
// a fresh L2 value the L1 fill. done reports that the miss is settled with
// it and err: an L2 hit, or a Get (no loader) that missed. Otherwise the
// miss goes on with fetchLoad.
func (c *Cache[V]) fetchL2(ctx context.Context, key string, load Loader[V], o callOptions) (t l1.Ticket, look lookup[V], it item[V], err error, done bool) {
	t = c.local.Reserve(key)
	look = c.readL2(ctx, key)
	if look.fresh {
		c.fillAhead(t, look.it, o.l1TTL, look.until, look.at, look.refreshAt)
		return t, look, look.it, nil, true
	}
	if load == nil {
		if look.err != nil {
			return t, look, item[V]{}, look.err, true
		}
		return t, look, item[V]{neg: true}, nil, true
	}
	return t, look, item[V]{}, nil, false
}

// fetchLoad is the rest of a miss that L2 did not answer: the loader, the
// L2 write-back and the fill, or fail-safe's stale value. f is the flight
// it settles (for Observer.LoadDone, and the soft timeout: see
// Config.SoftTimeout).
func (c *Cache[V]) fetchLoad(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions, t l1.Ticket, look lookup[V]) (item[V], error) {
	now := time.Now()
	c.st.loaderCalls.Add(1)
	c.st.loadedKeys.Add(1)
	var soft *softTimer
	if look.stale != nil && c.softTimeoutOn() {
		soft = c.softTimerFor(key, f, *look.stale, look.staleEnd)
		defer soft.stop() // runtime.Goexit in the loader
	}
	pre, tagErr := c.stampTags(ctx, o.tags)
	v, err, set, panicked := c.runLoader(ctx, key, f, load)
	soft.stop() // now f.soft is known, and stays as it is
	if panicked {
		return item[V]{}, err
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		c.st.loaderErrors.Add(1)
		if soft != nil && f.soft {
			// The callers have the stale value already: nothing more
			// to serve, count or log (see Config.SoftTimeout).
			return *look.stale, nil
		}
		lerr := &opError{op: "load", keys: []string{key}, err: err}
		if look.stale != nil {
			c.st.staleServed.Add(1)
			c.staleServes.Fail(key, lerr)
			c.staleServed(key, err)
			c.fill(t, *look.stale, min(o.l1TTL, c.cfg.FailSafeRetryAfter), time.Time{}, now)
			return *look.stale, nil
		}
		return item[V]{}, lerr
	}
	stamps, tagsFit := mergeStamps(pre, set.tagsFor(key))
	it := item[V]{v: v, neg: err != nil, tags: stamps}
	if overran(ctx) {
		return it, nil
	}
	ttl, keep := c.storeTTL(o, set, key, it.neg)
	if !keep || tagErr != nil || set.tagErr != nil || !tagsFit {
		return it, nil // not cached (or its tags' versions are unknown, or too many)
	}
	if !c.local.Valid(t) {
		// Invalidated while loading: the value may predate that write. Serve
		// it to the callers who asked before, but do not keep it anywhere.
		c.st.conflicts.Add(1)
		return it, nil
	}
	if look.reachable {
		if !c.storeLoaded(ctx, key, it, ttl, look) {
			return it, nil // a newer write or delete won: serve, do not keep
		}
	}
	now = time.Now()
	c.fillAhead(t, it, min(c.loadL1TTL(o, set), ttl), time.Time{}, now, c.refreshAt(it, ttl, now))
	return it, nil
}

// overran reports whether the ctx of a load (its flight's or batch's) has
// ended: LoadTimeout passed, its loader having ignored the ctx, or Close
// cancelled it. Such a load keeps what its loader returned nowhere; it
// only serves the waiters still there, if any (within abortGrace). After
// abortGrace the overrun has released its waiters and forgotten its
// flight, so a later load may have stored a newer value already: filling
// L1 with this older one would serve it here, while Redis and every other
// instance have the newer one, until the copy expired. Its write-back
// would fail on the ended ctx, too, and blame a healthy Redis (an error
// counted, a breaker failure, a "redis writes failing" episode).
func overran(ctx context.Context) bool { return ctx.Err() != nil }

// refreshAt is when a value loaded at now with freshness ttl is due for
// refresh (zero: never; refresh-ahead is off, or it is a not-found).
func (c *Cache[V]) refreshAt(it item[V], ttl time.Duration, now time.Time) time.Time {
	d := c.refreshAfter(ttl)
	if it.neg || d == 0 {
		return time.Time{}
	}
	return now.Add(d)
}

// lookup is the outcome of reading one key from L2.
type lookup[V any] struct {
	it        item[V]
	fresh     bool      // it can be served and cached
	until     time.Time // when the L2 value stops being fresh (zero: no bound)
	refreshAt time.Time // when the L2 value is due for refresh (zero: never)
	at        time.Time // when it was classified (the clock until is compared with)
	stale     *item[V]  // a soft-expired value for fail-safe
	staleEnd  time.Time // when Redis drops stale (its hard expiry, FailSafeMaxStale past its TTL; zero: none)
	raw       []byte    // the bytes read (nil: absent), for SetIf
	announce  bool      // raw is a value (stale, expired, corrupt) that others may hold a copy of
	reachable bool      // L2 answered: a loaded value may be written back
	err       error     // why L2 could not answer (wraps ErrUnavailable)
}

func (c *Cache[V]) readL2(ctx context.Context, key string) lookup[V] {
	if c.l2 == nil {
		return lookup[V]{}
	}
	var e l2.Entry
	err := c.redisOp(ctx, func(rctx context.Context) error {
		var err error
		e, err = c.l2.Read(rctx, key)
		c.st.l2Lookups.Add(1)
		return err
	})
	switch {
	case errors.Is(err, l2.ErrNotFound):
		return lookup[V]{reachable: true}
	case errors.Is(err, errBreakerOpen):
		return lookup[V]{err: &opError{op: "get", keys: []string{key}, err: err}}
	case err != nil && !e.Corrupt:
		c.st.l2Errors.Add(1)
		return lookup[V]{err: remoteError("get", []string{key}, ErrUnavailable, err)}
	}
	return c.classify(ctx, key, &e, err, time.Now())
}

// classify turns an entry read from L2 (possibly a tombstone or corrupt
// bytes, with derr the error that says why) into a lookup.
func (c *Cache[V]) classify(ctx context.Context, key string, e *l2.Entry, derr error, now time.Time) lookup[V] {
	var lk lookup[V]
	c.classifyInto(ctx, &lk, key, e, derr, now)
	return lk
}

// classifyInto is classify writing the lookup into *lk, which it
// overwrites whole: a batch classifies each key in place.
func (c *Cache[V]) classifyInto(ctx context.Context, lk *lookup[V], key string, e *l2.Entry, derr error, now time.Time) {
	*lk = lookup[V]{reachable: true, raw: e.Raw, announce: !e.Tombstone, at: now}
	if e.Corrupt {
		c.st.decodeErrors.Add(1)
		c.unreadable.Fail(key, derr)
		return
	}
	if e.Tombstone || (!e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt)) {
		return // deleted, or expired by the writer's clock though Redis still holds it
	}
	var stamps *tagStamps
	if len(e.Tags) > 0 {
		var current bool
		var err error
		switch stamps, current, err = c.readStamps(ctx, e.Tags); {
		case errors.Is(err, errBreakerOpen):
			lk.err = &opError{op: "get", keys: []string{key}, err: err}
			return
		case err != nil: // not a miss: a Get must not report the key absent
			c.st.l2Errors.Add(1)
			lk.err = remoteError("get", []string{key}, ErrUnavailable, err)
			return
		case !current:
			c.st.tagMisses.Add(1)
			return // a tag moved on since the value was made: as good as deleted
		}
	}
	it, ok := c.decodeEntry(key, e)
	if !ok {
		return
	}
	it.tags = stamps
	if !e.StaleAt.IsZero() && !now.Before(e.StaleAt) {
		stale := it // a copy of its own, so that it stays off the heap on a hit
		lk.stale, lk.staleEnd = &stale, e.ExpiresAt
		return
	}
	c.st.l2Hits.Add(1)
	lk.it, lk.fresh = it, true
	lk.until = e.ExpiresAt
	if !e.StaleAt.IsZero() {
		lk.until = e.StaleAt
	}
	if !it.neg {
		lk.refreshAt = e.RefreshAt
	}
}

func (c *Cache[V]) decodeEntry(key string, e *l2.Entry) (item[V], bool) {
	if e.Negative {
		return item[V]{neg: true}, true
	}
	v, err := safeUnmarshal(c.codec, e.Value)
	if err != nil {
		c.st.decodeErrors.Add(1)
		c.unreadable.Fail(key, err)
		return item[V]{}, false
	}
	return item[V]{v: v}, true
}

// entry builds the L2 envelope of an item with ttl as its freshness. A
// codec failure is counted and returned as safeMarshal returns it (the
// caller names the key).
func (c *Cache[V]) entry(it item[V], ttl time.Duration) (l2.Entry, error) {
	var tags []l2.Tag
	if it.tags != nil {
		tags = it.tags.tags
	}
	if it.neg {
		return l2.Entry{Negative: true, TTL: ttl, Tags: tags}, nil
	}
	b, err := safeMarshal(c.codec, it.v)
	if err != nil {
		c.st.encodeErrors.Add(1)
		return l2.Entry{}, err
	}
	e := l2.Entry{Value: b, TTL: ttl, RefreshAfter: c.refreshAfter(ttl), Tags: tags}
	if c.cfg.FailSafeMaxStale > 0 {
		e.TTL, e.FreshFor = ttl+c.cfg.FailSafeMaxStale, ttl
	}
	return e, nil
}

// storeLoaded writes a loaded item to L2 unless the key changed since it was
// read (raw), publishing its invalidation; it reports whether the item may
// be kept in L1.
func (c *Cache[V]) storeLoaded(ctx context.Context, key string, it item[V], ttl time.Duration, look lookup[V]) bool {
	e, err := c.entry(it, ttl)
	if err != nil {
		c.unstored.Fail(key, err)
		return true // this process's value; L1 may keep it
	}
	written := c.storeLoadedMany(ctx, map[string]l2.Entry{key: e}, map[string][]byte{key: look.raw}, map[string]bool{key: look.announce})
	if written != nil && !written[key] {
		c.st.conflicts.Add(1)
		return false
	}
	return true
}

// fill stores it in L1 through ticket t, for at most ttl, never past until
// (the L2 value's freshness), and briefly or not at all while the
// invalidation stream is unhealthy.
func (c *Cache[V]) fill(t l1.Ticket, it item[V], ttl time.Duration, until, now time.Time) {
	c.fillAhead(t, it, ttl, until, now, time.Time{})
}

// fillAhead is fill for a value due for refresh at refreshAt (zero: never;
// ignored while refresh-ahead is off): the L1 copy is due then (see
// l1.Cache.FillRefresh).
func (c *Cache[V]) fillAhead(t l1.Ticket, it item[V], ttl time.Duration, until, now, refreshAt time.Time) {
	if !until.IsZero() {
		if r := until.Sub(now); r < ttl {
			ttl = r
		}
	}
	if c.bus != nil {
		if !c.bus.Healthy() {
			if c.cfg.UnhealthyL1TTL < 0 {
				return
			}
			ttl = min(ttl, c.cfg.UnhealthyL1TTL)
		}
	}
	if c.cfg.L1TTLJitter > 0 {
		ttl -= time.Duration(rand.Float64() * c.cfg.L1TTLJitter * float64(ttl))
	}
	if ttl <= 0 {
		return
	}
	if !refreshAt.IsZero() && c.refreshOn() {
		c.local.FillRefresh(t, it, ttl, refreshAt.Sub(now))
		return
	}
	c.local.Fill(t, it, ttl)
}
