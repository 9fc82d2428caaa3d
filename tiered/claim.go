package tiered

import (
	"context"
	"crypto/rand"
	"sync/atomic"
	"time"

	"github.com/nearcache/nearcache/l1"
)

// ClaimStats count fleet-wide stampede protection (Config.LoadClaim).
type ClaimStats struct {
	Won       uint64 // loads this instance ran holding the key's claim
	Waited    uint64 // loads that found the claim held by another instance and waited
	FromOther uint64 // took the value another instance loaded under its claim
	Expired   uint64 // of which took the claim over (its owner stopped renewing it) and loaded
	WaitBound uint64 // of which waited LoadClaimWait and loaded by themselves
}

type claimCounters struct {
	won, waited, fromOther, expired, waitBound atomic.Uint64
}

func (k *claimCounters) snapshot() ClaimStats {
	return ClaimStats{
		Won: k.won.Load(), Waited: k.waited.Load(), FromOther: k.fromOther.Load(),
		Expired: k.expired.Load(), WaitBound: k.waitBound.Load(),
	}
}

// claimPoll is how often a load waiting for another instance's claimed
// load reads Redis, besides waking when the key's invalidation arrives:
// a quarter of the lease, within [10ms, 250ms].
func (c *Cache[V]) claimPoll() time.Duration {
	return min(max(c.cfg.LoadClaim/4, 10*time.Millisecond), 250*time.Millisecond)
}

// loadClaimed is fetchLoad behind the key's claim in Redis (see
// Config.LoadClaim): the load that takes the claim calls the loader and
// announces its write-back; a load that finds the claim held waits for
// that value, woken by the key's invalidation or its own polling, takes
// the claim over if it expires, and loads by itself after LoadClaimWait.
// Without LoadClaim, or when Redis did not answer the read, it is
// fetchLoad.
func (c *Cache[V]) loadClaimed(ctx context.Context, key string, f *flight[V], load Loader[V], o callOptions, t l1.Ticket, look lookup[V]) (item[V], error) {
	if c.cfg.LoadClaim <= 0 || c.l2 == nil || !look.reachable {
		return c.fetchLoad(ctx, key, f, load, o, t, look)
	}
	token := rand.Text()
	waitUntil := time.Now().Add(c.cfg.LoadClaimWait)
	waited := false
	for {
		won, err := c.claimFor(ctx, key, token, c.cfg.LoadClaim)
		if err != nil {
			return c.fetchLoad(ctx, key, f, load, o, t, look) // Redis trouble: load alone, as without claims
		}
		if won {
			// An owner that released the claim between this load's read
			// and its claim had written its value back before: read again,
			// and take that value rather than load the key twice.
			t2 := c.local.Reserve(key)
			if again := c.readL2(ctx, key); again.fresh {
				c.unclaim(ctx, key, token, 0)
				c.cl.fromOther.Add(1)
				c.fillAhead(t2, again.it, o.l1TTL, again.until, again.at, again.refreshAt)
				return again.it, nil
			} else if again.reachable {
				t, look = t2, again
			}
			return c.ownClaim(ctx, key, token, waited, f, load, o, t, look)
		}
		if !waited {
			waited = true
			c.cl.waited.Add(1)
			if look.stale != nil && c.softTimeoutOn() {
				// Waiting for another instance's loader is waiting for a
				// loader: the soft timeout serves the stale value meanwhile.
				soft := c.softTimerFor(key, f, *look.stale)
				defer soft.stop()
			}
		}
		if !time.Now().Before(waitUntil) {
			c.cl.waitBound.Add(1)
			return c.fetchLoad(ctx, key, f, load, o, t, look)
		}
		wake := c.claimWake(key)
		timer := time.NewTimer(c.claimPoll())
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return item[V]{}, &opError{op: "load", keys: []string{key}, err: ctx.Err()}
		}
		timer.Stop()
		t = c.local.Reserve(key)
		look = c.readL2(ctx, key)
		switch {
		case look.fresh:
			c.cl.fromOther.Add(1)
			c.fillAhead(t, look.it, o.l1TTL, look.until, look.at, look.refreshAt)
			return look.it, nil
		case !look.reachable:
			return c.fetchLoad(ctx, key, f, load, o, t, look)
		}
	}
}

// ownClaim runs the load of key holding its claim: renewed while the
// loader runs, the write-back announced (so that waiting instances wake),
// then the claim released. A load that waited before it won (the owner's
// claim expired) counts as a take-over.
func (c *Cache[V]) ownClaim(ctx context.Context, key, token string, waited bool, f *flight[V], load Loader[V], o callOptions, t l1.Ticket, look lookup[V]) (item[V], error) {
	c.cl.won.Add(1)
	if waited {
		c.cl.expired.Add(1)
	}
	renewed := make(chan struct{})
	stop := make(chan struct{})
	go func() { // keeps the lease while the loader runs
		defer close(renewed)
		tick := time.NewTicker(c.cfg.LoadClaim / 3)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				c.unclaim(ctx, key, token, c.cfg.LoadClaim)
			}
		}
	}()
	defer func() {
		close(stop)
		<-renewed
		c.unclaim(ctx, key, token, 0)
	}()
	look.announce = true
	return c.fetchLoad(ctx, key, f, load, o, t, look)
}

// claimWake returns a channel closed when an invalidation of key arrives
// (invalidateLocal, dropAll): the value another instance loaded under its
// claim has landed, or the key changed.
func (c *Cache[V]) claimWake(key string) <-chan struct{} {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	ch := c.claimWaits[key]
	if ch == nil {
		if c.claimWaits == nil {
			c.claimWaits = map[string]chan struct{}{}
		}
		ch = make(chan struct{})
		c.claimWaits[key] = ch
	}
	return ch
}

// wakeClaimsLocked wakes the loads waiting for keys' claimed loads (all
// when keys is nil). Called with flightMu held.
func (c *Cache[V]) wakeClaimsLocked(keys []string) {
	if len(c.claimWaits) == 0 {
		return
	}
	if keys == nil {
		for k, ch := range c.claimWaits {
			close(ch)
			delete(c.claimWaits, k)
		}
		return
	}
	for _, k := range keys {
		if ch := c.claimWaits[k]; ch != nil {
			close(ch)
			delete(c.claimWaits, k)
		}
	}
}
