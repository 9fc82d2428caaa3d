package tiered

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nearcache/nearcache/internal/wait"
	"github.com/nearcache/nearcache/l2"
)

// Set writes value for key: to Redis and its invalidation, in one atomic
// script, then drops this instance's L1 copy (read-your-writes: the next read
// fills from Redis). Every other instance drops its copy when the
// invalidation arrives. Without Redis (L1-only mode) the value goes to L1.
func (c *Cache[V]) Set(ctx context.Context, key string, value V, opts ...Option) error {
	return c.SetMany(ctx, map[string]V{key: value}, opts...)
}

// SetMany writes several values in one round trip (one script per partition),
// with the same guarantees as Set. A value whose encoded form exceeds
// MaxValueSize fails the call before anything is sent, with an error that
// wraps l2.ErrTooLarge and names the key, the size and the limit. With
// WithVersion each key is judged on its own (see WithVersion).
func (c *Cache[V]) SetMany(ctx context.Context, items map[string]V, opts ...Option) error {
	if c.isDone.Load() {
		return ErrClosed
	}
	keys := slices.Collect(maps.Keys(items))
	if err := ctx.Err(); err != nil {
		return &opError{op: "set", keys: keys, err: err}
	}
	if len(items) == 0 {
		return nil
	}
	o := c.options(opts)
	if err := checkTags("set", o.tags); err != nil {
		return err
	}
	stamps, err := c.stampTags(ctx, o.tags)
	if err != nil {
		return c.writeErr(ctx, "set", keys, err)
	}
	var tags *tagStamps
	if stamps != nil {
		tags = &tagStamps{tags: stamps}
	}
	if c.l2 == nil {
		return c.setLocal(keys, items, o, tags)
	}
	entries := make(map[string]l2.Entry, len(items))
	for k, v := range items {
		e, err := c.entry(item[V]{v: v, tags: tags}, o.ttl)
		if err != nil {
			return &opError{op: "set", keys: []string{k}, err: err}
		}
		e.Version = o.version
		// The caller's mistake, found before any I/O: nothing is written,
		// and neither the breaker nor Stats.L2.Errors counts it.
		if err := c.l2.CheckSize(k, e); err != nil {
			return remoteError("set", []string{k}, nil, err)
		}
		entries[k] = e
	}
	return c.write(ctx, "set", keys, func(ctx context.Context) error {
		if c.batcher != nil {
			return c.batcher.SetMany(ctx, entries)
		}
		return c.l2.SetMany(ctx, entries, l2.Notify(c.notifyDelete))
	})
}

// Delete removes keys from Redis, leaving short-lived tombstones so that a
// load which began before the delete cannot write its older value back, and
// publishes their invalidation in the same script; then it drops this
// instance's L1 copies. After Delete returns, no instance serves the old
// values once the invalidation has been delivered.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) error {
	return c.DeleteMany(ctx, keys)
}

// DeleteMany is Delete with per-call options: WithVersion makes it a
// versioned delete, whose tombstones keep the version (for WithTTL, or
// Config.TTL) so that a write with an older version cannot bring the value
// back; a key whose stored version is as new or newer is left alone
// (ErrStale).
func (c *Cache[V]) DeleteMany(ctx context.Context, keys []string, opts ...Option) error {
	if c.isDone.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return &opError{op: "delete", keys: keys, err: err}
	}
	if len(keys) == 0 {
		return nil
	}
	o := c.options(opts)
	if c.l2 == nil {
		return c.deleteLocal(keys, o)
	}
	tomb := c.cfg.LoadTimeout + 2*max(c.cfg.RedisTimeout, 0) + time.Second
	wo := []l2.WriteOption{l2.Notify(c.notifyDelete)}
	if o.version != 0 {
		// As long as a value written now would live; the script also keeps
		// it at least as long as the value it replaces.
		tomb = max(tomb, o.ttl+c.cfg.FailSafeMaxStale)
		wo = append(wo, l2.Version(o.version))
	}
	wo = append(wo, l2.Tombstone(tomb))
	return c.write(ctx, "delete", keys, func(ctx context.Context) error {
		if c.batcher != nil && o.version == 0 {
			return c.batcher.DeleteMany(ctx, keys, tomb)
		}
		_, err := c.l2.DeleteMany(ctx, keys, wo...)
		return err
	})
}

// maxLocalVersions bounds the versions remembered in L1-only mode; beyond
// it they are forgotten all at once.
const maxLocalVersions = 1 << 20

// setLocal is SetMany in L1-only mode. Versions are remembered beside L1
// (which may drop or evict a value at any time), under verMu, so that two
// versioned writers of a key cannot interleave between the comparison and
// the fill.
func (c *Cache[V]) setLocal(keys []string, items map[string]V, o callOptions, tags *tagStamps) error {
	if o.version == 0 {
		c.invalidateLocal(keys...)
		for k, v := range items {
			c.fillWritten(k, v, o, tags)
		}
		return nil
	}
	c.verMu.Lock()
	defer c.verMu.Unlock()
	stale := c.claimLocalVersions(keys, o.version)
	for _, k := range keys {
		if _, refused := stale.Stored[k]; refused {
			continue
		}
		c.invalidateLocal(k)
		c.fillWritten(k, items[k], o, tags)
	}
	if len(stale.Stored) > 0 {
		return &opError{op: "set", class: ErrStale, err: stale} // stale names the keys
	}
	return nil
}

// fillWritten fills L1 with a value written in L1-only mode, for l1TTL(o)
// and, with refresh-ahead on, due for refresh RefreshAhead×TTL after the
// write, as a value written to Redis is.
func (c *Cache[V]) fillWritten(key string, v V, o callOptions, tags *tagStamps) {
	t := c.local.Reserve(key)
	if after := c.refreshAfter(o.ttl); after > 0 {
		c.local.FillRefresh(t, item[V]{v: v, tags: tags}, c.l1TTL(o), after)
		return
	}
	c.local.Fill(t, item[V]{v: v, tags: tags}, c.l1TTL(o))
}

// deleteLocal is DeleteMany in L1-only mode: a versioned delete leaves
// alone the keys whose remembered version is as new or newer.
func (c *Cache[V]) deleteLocal(keys []string, o callOptions) error {
	if o.version == 0 {
		c.invalidateLocal(keys...)
		return nil
	}
	c.verMu.Lock()
	defer c.verMu.Unlock()
	stale := c.claimLocalVersions(keys, o.version)
	for _, k := range keys {
		if _, refused := stale.Stored[k]; !refused {
			c.invalidateLocal(k)
		}
	}
	if len(stale.Stored) > 0 {
		return &opError{op: "delete", class: ErrStale, err: stale} // stale names the keys
	}
	return nil
}

// claimLocalVersions records version v for the keys whose remembered
// version is older, and returns the others. Called with verMu held.
func (c *Cache[V]) claimLocalVersions(keys []string, v uint64) *l2.StaleError {
	stale := &l2.StaleError{Offered: map[string]uint64{}, Stored: map[string]uint64{}}
	if c.localVers == nil || len(c.localVers)+len(keys) > maxLocalVersions {
		c.localVers = make(map[string]uint64)
	}
	for _, k := range keys {
		if cur := c.localVers[k]; cur >= v {
			stale.Offered[k], stale.Stored[k] = v, cur
			continue
		}
		c.localVers[k] = v
	}
	return stale
}

// Clear removes every key of the namespace from Redis (SCAN + UNLINK, never
// FLUSHDB) and tells every instance, this one included, to drop its whole L1.
func (c *Cache[V]) Clear(ctx context.Context) (err error) {
	if c.isDone.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return &opError{op: "clear", err: err}
	}
	if c.l2 == nil {
		c.verMu.Lock()
		c.localVers = nil
		c.verMu.Unlock()
		c.dropAll()
		return nil
	}
	defer c.dropAll()
	if c.obs != nil {
		var start time.Time
		ctx, start = c.writeStart(ctx, "clear", nil)
		defer func() { c.writeDone(ctx, "clear", nil, start, err) }()
	}
	// Tell every instance first, so that loads running anywhere see their
	// tickets invalidated and do not write back values read before the
	// clear; then remove the keys and tell them again.
	err = c.callerOp(ctx, false, func(ctx context.Context) error {
		c.dropAll()
		if err := c.bus.PublishClear(ctx); err != nil {
			return err
		}
		_, err := c.l2.Clear(ctx, l2.Notify(c.notifyClear), l2.NotifyKeys(c.notifyDelete))
		return err
	})
	if err != nil {
		if inDoubt(err) {
			c.doubt.add(nil, true, time.Now())
		}
		return c.writeErr(ctx, "clear", nil, err)
	}
	return nil
}

// write runs one Redis write bounded by RedisTimeout, then invalidates the
// keys locally whatever the outcome. A write that failed without an answer
// from Redis (a timeout, a broken connection, the caller's ctx ending
// mid-call) may still run later: its keys are put in doubt, so that its own
// invalidation, when the script runs, drops the copy a read refilled
// meanwhile (see doubts).
func (c *Cache[V]) write(ctx context.Context, op string, keys []string, fn func(context.Context) error) (err error) {
	defer c.invalidateLocal(keys...)
	if c.obs != nil {
		var start time.Time
		ctx, start = c.writeStart(ctx, op, keys)
		defer func() { c.writeDone(ctx, op, keys, start, err) }()
	}
	if err := c.callerOp(ctx, true, fn); err != nil {
		// A batch over several partitions may have failed in one and run in
		// another: unless Redis refused all of it, it is in doubt.
		if inDoubt(err) || (len(keys) > 1 && !errors.Is(err, errBreakerOpen) && !errors.Is(err, l2.ErrStale)) {
			c.doubt.add(keys, false, time.Now())
		}
		return c.writeErr(ctx, op, keys, err)
	}
	return nil
}

// writeErr wraps the error of a failed write of keys (nil: the namespace)
// and, when it says something about Redis, counts it and reports it to the
// writeFails episode (see Config.Logger): a failure of Redis, a refusal by
// Redis, or a skip by the open breaker. A refused version is an answer, not
// a failure; a write cut short by the caller's own ctx says nothing about
// Redis either.
func (c *Cache[V]) writeErr(ctx context.Context, op string, keys []string, err error) error {
	var e *opError
	switch cerr := ctx.Err(); {
	case errors.Is(err, errBreakerOpen):
		e = &opError{op: op, keys: keys, err: err}
	case errors.Is(err, l2.ErrStale): // an answer: a newer version won
		return remoteError(op, keys, ErrStale, err)
	case cerr != nil:
		if errors.Is(err, cerr) {
			return remoteError(op, keys, nil, err)
		}
		return remoteError(op, keys, cerr, err)
	case errors.Is(err, l2.ErrOperation) || isReply(err): // an answer from Redis (through l2 or the bus), or unusable data
		c.st.l2Errors.Add(1)
		e = remoteError(op, keys, nil, err)
	default: // unreachable or too slow
		c.st.l2Errors.Add(1)
		e = remoteError(op, keys, ErrUnavailable, err)
	}
	c.writeFails.Fail(firstKey(keys), e)
	return e
}

// firstKey is the key an episode's log names for an operation on keys.
func firstKey(keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	return keys[0]
}

// l1TTL is the local TTL of a value written in L1-only mode.
func (c *Cache[V]) l1TTL(o callOptions) time.Duration { return min(o.l1TTL, o.ttl) }

// Close stops the invalidation subscription and every goroutine the Cache
// started, waits for running loads (they are cancelled; an L2 read that a
// caller runs inline ends within RedisTimeout, or with RedisTimeout < 0
// within the client's own timeouts), and releases L1. It never
// closes the caller's Redis client. Close is idempotent; afterwards every
// method returns ErrClosed (reads of L1 miss, then return ErrClosed).
//
// Close waits at most LoadTimeout plus a short grace for loads to end. Work
// that outlives it (a loader that ignores its ctx, or a Redis client that
// applies no deadline talking to a server that never answers) is left to
// finish on its own, and Close returns an error that says so.
func (c *Cache[V]) Close() error {
	c.flightMu.Lock()
	if c.closed {
		c.flightMu.Unlock()
		return nil
	}
	c.closed = true
	c.isDone.Store(true)
	c.flightMu.Unlock()

	c.cancel()
	var errs []error
	if c.bus != nil {
		errs = append(errs, c.bus.Close())
	}
	if d := c.cfg.LoadTimeout + abortGrace; !wait.Within(&c.work, d) {
		errs = append(errs, fmt.Errorf("tiered: Close: shared work still running after %v (a loader, or a Redis client without deadlines, ignores its ctx); left to finish", d))
	}
	errs = append(errs, c.local.Close())
	if c.batcher != nil {
		c.batcher.Close()
	}
	if c.l2 != nil {
		errs = append(errs, c.l2.Close())
	}
	// After the work: a failure of a load still running is counted in its
	// episode, whose end is logged now.
	c.writeFails.Close()
	c.staleServes.Close()
	c.refreshFail.Close()
	c.claimFail.Close()
	c.unreadable.Close()
	c.unstored.Close()
	c.observerFails.Close()
	return errors.Join(errs...)
}
