package tiered

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nearcache/nearcache/internal/errfmt"
	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// RefreshOutcome says how a refresh-ahead ended (see Config.RefreshAhead).
type RefreshOutcome int

const (
	// RefreshFromRedis: Redis already held a value fresher than the
	// threshold (another instance had refreshed it); it was taken, and
	// the loader was not called.
	RefreshFromRedis RefreshOutcome = iota
	// RefreshFromLoader: the loader was called and its value stored.
	RefreshFromLoader
	// RefreshSkipped: another instance holds the key's refresh claim and
	// is refreshing it; this instance keeps serving its value.
	RefreshSkipped
	// RefreshFailed: the loader or Redis failed (Err says which); the
	// current value is still served until it expires, and the refresh is
	// tried again after Config.FailSafeRetryAfter.
	RefreshFailed
)

// String returns "redis", "loader", "skipped" or "failed".
func (o RefreshOutcome) String() string {
	switch o {
	case RefreshFromRedis:
		return "redis"
	case RefreshFromLoader:
		return "loader"
	case RefreshSkipped:
		return "skipped"
	case RefreshFailed:
		return "failed"
	}
	return fmt.Sprintf("RefreshOutcome(%d)", int(o))
}

// RefreshEvent describes a refresh-ahead that ended.
type RefreshEvent struct {
	Namespace string
	Key       string
	Outcome   RefreshOutcome
	Duration  time.Duration // from the trigger to the outcome
	Err       error         // RefreshFailed only: why
}

// RefreshStats count refresh-ahead (see Config.RefreshAhead). Started is
// the sum of the four outcomes once the refreshes running have ended.
type RefreshStats struct {
	Started    uint64 // refreshes started by a hit past the threshold
	FromRedis  uint64 // ended taking a fresher value another instance stored
	FromLoader uint64 // ended with the loader's value
	Skipped    uint64 // left to another instance that holds the claim
	Failed     uint64 // the loader or Redis failed; the old value is kept
}

type refreshCounters struct {
	started, fromRedis, fromLoader, skipped, failed atomic.Uint64
	// loaded counts the keys refreshes passed to a loader, which answer no
	// request (Combined.HitRatio leaves them out). Added before the load's
	// own count (loadCounters.loadedKeys).
	loaded atomic.Uint64
}

func (r *refreshCounters) snapshot() RefreshStats {
	return RefreshStats{
		Started: r.started.Load(), FromRedis: r.fromRedis.Load(), FromLoader: r.fromLoader.Load(),
		Skipped: r.skipped.Load(), Failed: r.failed.Load(),
	}
}

// refreshSlack is how close to its refresh time a Redis value counts as due
// already: the L1 copy that triggered a refresh was timed on the coarse
// clock, which may lag the wall clock, and the value's refresh time on the
// writer's clock. A value another instance has refreshed is due a whole
// RefreshAhead×TTL later.
const refreshSlack = 50 * time.Millisecond

// refreshOn reports whether refresh-ahead is on.
func (c *Cache[V]) refreshOn() bool { return c.cfg.RefreshAhead > 0 }

// refreshAfter is how long after a write of freshness ttl its value is due
// for refresh (0: never, refresh-ahead off).
func (c *Cache[V]) refreshAfter(ttl time.Duration) time.Duration {
	if !c.refreshOn() || ttl <= 0 {
		return 0
	}
	return max(time.Duration(c.cfg.RefreshAhead*float64(ttl)), time.Millisecond)
}

// refreshAhead starts the refresh of key, whose L1 copy a hit found past
// its refresh time, unless a load of key is running already (it will bring
// the fresh value). It returns at once: the refresh runs as a flight of key
// on its own goroutine, on a context detached from ctx (keeping its
// values), bounded by LoadTimeout, and readers that miss L1 meanwhile join
// it like any load. held are the stamps of the copy the hit found: the
// refreshed value carries their tags beside the call's WithTags, so that a
// hit without WithTags does not make the entry escape InvalidateTag.
func (c *Cache[V]) refreshAhead(ctx context.Context, key string, load Loader[V], opts []Option, held *tagStamps) {
	if load == nil {
		return
	}
	o := c.options(opts)
	if held != nil {
		tags := slices.Clone(o.tags)
		for _, t := range held.tags {
			if !slices.Contains(tags, t.Name) {
				tags = append(tags, t.Name)
			}
		}
		o.tags = tags
	}
	if checkTags("refresh", o.tags) != nil {
		return // the caller got the error on its miss (or the tags add up past the limit): the copy expires as it would without refresh-ahead
	}
	start := time.Now()
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	if c.closed || c.flights[key] != nil {
		return
	}
	c.st.flights.Add(1) // before started: Stats reads started first
	c.rf.started.Add(1)
	c.work.Add(1)
	f := newSFFlight[V]()
	c.flights[key] = f
	wctx, cancel := c.detached(ctx, start.Add(c.cfg.LoadTimeout))
	overrun := time.AfterFunc(c.cfg.LoadTimeout+abortGrace, func() {
		c.release(c.flights, &c.loads, key, f)
		f.abortWith(errLoadOverran)
	})
	// Nobody reads the channel: DoChan's is buffered, the result is dropped.
	c.loads.DoChan(key, func() (v any, err error) {
		var returned, panicked bool
		defer func() {
			overrun.Stop()
			if !returned && !panicked {
				f.abortWith(fmt.Errorf("tiered: refresh %s aborted (runtime.Goexit in the loader)", errfmt.Key(key)))
				c.refreshed(key, RefreshFailed, start, errLoaderGoexit)
			}
		}()
		defer c.work.Done()
		defer cancel()
		defer c.release(c.flights, &c.loads, key, f)
		defer func() {
			if r := recover(); r != nil {
				panicked = true
				err = c.loadPanicked(key, r)
				c.refreshed(key, RefreshFailed, start, err)
			}
		}()
		v, err = c.refreshFetch(wctx, key, f, load, o, start)
		returned = true
		return v, err
	})
}

// refreshFetch is the work of a refresh flight. It reads Redis first: a
// value whose refresh time has not come (another instance refreshed it) is
// taken as it is. A value past it is refreshed from the loader by the one
// instance that takes the key's claim; the others keep theirs. A key Redis
// does not hold fresh (absent, stale, unreadable, Redis unreachable or
// absent) is loaded as by any miss (a loader failure that fail-safe covers
// with Redis's stale value is a failed refresh). The loaded value goes through the
// ticket, the compare-and-set write-back and the invalidation of every
// load. The instance that wins the claim reads Redis once more first: a
// claim released after this refresh's first read was released after its
// holder's write-back. The flight's result, for readers that joined it, is
// the refreshed value, or the current one when the refresh did not replace
// it.
func (c *Cache[V]) refreshFetch(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions, start time.Time) (item[V], error) {
	t := c.local.Reserve(key)
	look := c.readL2(ctx, key)
	if !look.fresh {
		var lerr error // the loader's own error, which fail-safe hides
		if look.stale != nil {
			inner := load
			load = func(ctx context.Context, key string) (V, error) {
				v, err := inner(ctx, key)
				lerr = err
				return v, err
			}
		}
		c.rf.loaded.Add(1)
		it, err := c.loadClaimed(ctx, key, f, load, o, t, look)
		switch {
		case err == nil && overran(ctx): // nothing stored
			c.refreshed(key, RefreshFailed, start, overranErr(ctx, key))
		case err != nil:
			c.refreshed(key, RefreshFailed, start, err)
		case lerr != nil && !errors.Is(lerr, ErrNotFound): // fail-safe served the stale value
			c.refreshed(key, RefreshFailed, start, &opError{op: "load", keys: []string{key}, err: lerr})
		default:
			c.refreshed(key, RefreshFromLoader, start, nil)
		}
		return it, err
	}
	// Callers that missed L1 and joined this refresh get the fresh value
	// Redis holds now, as they would without the refresh.
	c.flightMu.Lock()
	if c.flights[key] == f {
		f.serveCurrentLocked(look.it)
	}
	c.flightMu.Unlock()
	if c.notDue(look, o) {
		c.fillAhead(t, look.it, o.l1TTL, look.until, look.at, look.refreshAt)
		c.refreshed(key, RefreshFromRedis, start, nil)
		return look.it, nil
	}
	retry := look.at.Add(c.cfg.FailSafeRetryAfter)
	token := rand.Text()
	won, err := c.refreshClaim(ctx, key, token)
	if err != nil || !won {
		c.fillAhead(t, look.it, o.l1TTL, look.until, look.at, retry)
		if err != nil {
			c.refreshed(key, RefreshFailed, start, err)
		} else {
			c.refreshed(key, RefreshSkipped, start, nil)
		}
		return look.it, nil
	}
	// A holder that released the claim between this refresh's read and its
	// claim had written its value back before: read again, and take that
	// value rather than call the loader twice in one refresh period.
	if again := c.readL2(ctx, key); again.fresh && c.notDue(again, o) {
		c.unclaim(ctx, key, token, 0)
		c.fillAhead(t, again.it, o.l1TTL, again.until, again.at, again.refreshAt)
		c.refreshed(key, RefreshFromRedis, start, nil)
		return again.it, nil
	}
	stopRenew := func() {}
	if c.cfg.LoadClaim > 0 {
		stopRenew = c.keepClaim(ctx, func() { c.unclaim(ctx, key, token, c.cfg.LoadClaim) })
	}
	released := false
	defer func() {
		if !released { // the loader exited through runtime.Goexit: a failure
			stopRenew()
			c.unclaim(ctx, key, token, c.cfg.FailSafeRetryAfter)
		}
	}()
	c.rf.loaded.Add(1)
	it, err := c.fetchLoadFresh(ctx, key, f, load, o, t, look)
	stopRenew()                     // before the release, which a renewal must not undo
	if err == nil && overran(ctx) { // nothing stored
		err = overranErr(ctx, key)
	}
	keep := time.Duration(0)
	if err != nil {
		keep = c.cfg.FailSafeRetryAfter // hold the fleet back as long as this instance
	}
	c.unclaim(ctx, key, token, keep)
	released = true
	if err != nil {
		c.fillAhead(t, look.it, o.l1TTL, look.until, look.at, retry)
		c.refreshed(key, RefreshFailed, start, err)
		return look.it, nil
	}
	if it.neg {
		c.deleteGone(ctx, key, look)
	}
	c.refreshed(key, RefreshFromLoader, start, nil)
	return it, nil
}

// overranErr is the error of a refresh of key whose ctx ended before its
// loader returned (see overran): errLoadOverran, or Close's cancellation.
func overranErr(ctx context.Context, key string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		err = errLoadOverran
	}
	return &opError{op: "refresh", keys: []string{key}, err: err}
}

// deleteGone handles a refresh whose loader reported key not found when
// the not-found is not cached (no negative TTL for it): the value Redis
// still holds is replaced by a tombstone, compare-and-set against what the
// refresh read (a write since wins), and the invalidation drops every
// instance's copy, as a Delete would. Without it every instance would serve
// the deleted value until it expired, calling the loader at every retry.
// It reports whether the tombstone was written.
func (c *Cache[V]) deleteGone(ctx context.Context, key string, look lookup[V]) bool {
	if look.raw == nil || c.l2 == nil {
		return false // nothing to delete
	}
	// A not-found that fetchLoad cached has replaced look.raw already: the
	// compare-and-set below then writes nothing.
	var nonce [8]byte
	binary.BigEndian.PutUint64(nonce[:], mrand.Uint64())
	tomb := l2.Entry{Tombstone: true, Value: nonce[:], TTL: c.cfg.LoadTimeout + 2*max(c.cfg.RedisTimeout, 0) + time.Second}
	written := c.storeLoadedMany(ctx, map[string]l2.Entry{key: tomb}, map[string][]byte{key: look.raw}, map[string]bool{key: true})
	if !written[key] {
		return false
	}
	c.invalidateLocal(key)
	return true
}

// notDue reports whether a fresh value read from Redis is not due for
// refresh: it has no refresh time, or one more than refreshSlack away (see
// there; at most half the value's refresh period, so that short periods
// keep a slack of their own), so another instance has refreshed it.
func (c *Cache[V]) notDue(look lookup[V], o callOptions) bool {
	if look.refreshAt.IsZero() {
		return true
	}
	slack := min(refreshSlack, c.refreshPeriod(look, o)/2)
	return look.at.Add(slack).Before(look.refreshAt)
}

// refreshPeriod returns the refresh period of the fresh value look read
// (with a refresh time): RefreshAhead × the TTL it was written with, which
// its loader may have chosen (SetTTL) or its writer (WithTTL). The
// envelope does not hold that TTL, but the value is due RefreshAhead×TTL
// and stops being fresh TTL after its write, so the time between the two
// gives it (to the envelope's millisecond). A value without an end of
// freshness is taken to have the call's TTL.
func (c *Cache[V]) refreshPeriod(look lookup[V], o callOptions) time.Duration {
	ra := c.cfg.RefreshAhead
	if look.until.IsZero() || !look.until.After(look.refreshAt) {
		return c.refreshAfter(o.ttl)
	}
	return time.Duration(float64(look.until.Sub(look.refreshAt)) * ra / (1 - ra))
}

// fetchLoadFresh is fetchLoad for a refresh whose Redis value is still
// fresh: a loader error is returned as it is (the caller keeps the fresh
// value) rather than served stale.
func (c *Cache[V]) fetchLoadFresh(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions, t l1.Ticket, look lookup[V]) (item[V], error) {
	look.stale = nil
	return c.fetchLoad(ctx, key, f, load, o, t, look)
}

// refreshClaim takes key's claim for a refresh (see l2.Store.Claim): for
// LoadTimeout, or with LoadClaim for its lease, which the refresh renews
// while it loads (keepClaim), so that a refresh whose instance dies holds
// the key's misses on other instances no longer than a load's dead owner
// does.
func (c *Cache[V]) refreshClaim(ctx context.Context, key, token string) (bool, error) {
	if c.cfg.LoadClaim > 0 {
		return c.claimFor(ctx, key, token, c.cfg.LoadClaim)
	}
	return c.claimFor(ctx, key, token, c.cfg.LoadTimeout)
}

// claimFor takes key's claim for ttl (see l2.Store.Claim).
func (c *Cache[V]) claimFor(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	var won bool
	err := c.redisOp(ctx, func(rctx context.Context) error {
		var err error
		won, err = c.l2.Claim(rctx, key, token, ttl)
		return err
	})
	if err != nil {
		if errors.Is(err, errBreakerOpen) {
			return false, &opError{op: "refresh", keys: []string{key}, err: err}
		}
		return false, remoteError("refresh", []string{key}, ErrUnavailable, err)
	}
	return won, nil
}

// unclaim releases key's claim (see l2.Store.Release). A failure is
// harmless: the claim expires after LoadTimeout. On a refresh's ctx that
// has ended (Close cancelled it, or LoadTimeout passed) the release still
// runs, bounded by RedisTimeout (or DefaultRedisTimeout if that is
// negative), so that a refresh cut short holds the rest of the fleet back
// for FailSafeRetryAfter, as any failed one does, not for the claim's whole
// LoadTimeout.
func (c *Cache[V]) unclaim(ctx context.Context, key, token string, keep time.Duration) {
	c.releaseKeys(ctx, []string{key}, token, keep)
}

// liveCtx returns ctx, or, once ctx has ended, a context with its values
// that ends after RedisTimeout (DefaultRedisTimeout if that is negative):
// for the release of a claim by a load that Close or LoadTimeout cut
// short.
func (c *Cache[V]) liveCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() == nil {
		return ctx, func() {}
	}
	d := c.cfg.RedisTimeout
	if d <= 0 {
		d = DefaultRedisTimeout
	}
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// refreshed counts a refresh's outcome and tells the Observer.
func (c *Cache[V]) refreshed(key string, out RefreshOutcome, start time.Time, err error) {
	switch out {
	case RefreshFromRedis:
		c.rf.fromRedis.Add(1)
	case RefreshFromLoader:
		c.rf.fromLoader.Add(1)
	case RefreshSkipped:
		c.rf.skipped.Add(1)
	case RefreshFailed:
		c.rf.failed.Add(1)
		c.refreshFail.Fail(key, err)
	}
	c.refreshEvent(RefreshEvent{Namespace: c.cfg.Namespace, Key: key, Outcome: out, Duration: time.Since(start), Err: err})
}
