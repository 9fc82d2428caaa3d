package tiered

import (
	"context"
	"crypto/rand"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// ClaimStats count fleet-wide stampede protection (Config.LoadClaim).
type ClaimStats struct {
	Won       uint64 // loads this instance ran holding the key's claim
	Waited    uint64 // loads that found the claim held by another instance and waited
	FromOther uint64 // took the value another instance loaded under its claim
	// Expired: of the waits, those that took the claim over and loaded:
	// its owner ended its load without a value in Redis to take (its
	// loader failed, or found the key missing and the not-found is not
	// cached) and released the claim, or stopped renewing it (it died, or
	// lost Redis) and the lease ran out.
	Expired   uint64
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
			c.claimFail.Fail(key, err)
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
				soft := c.softTimerFor(key, f, *look.stale, look.staleEnd)
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
			c.claimUnwake(key, wake)
			return item[V]{}, &opError{op: "load", keys: []string{key}, err: ctx.Err()}
		}
		timer.Stop()
		c.claimUnwake(key, wake)
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
// claim expired, or was released without a value) counts as a take-over.
func (c *Cache[V]) ownClaim(ctx context.Context, key, token string, waited bool, f *flight[V], load Loader[V], o callOptions, t l1.Ticket, look lookup[V]) (item[V], error) {
	c.cl.won.Add(1)
	if waited {
		c.cl.expired.Add(1)
	}
	stop := c.keepClaim(ctx, func() { c.unclaim(ctx, key, token, c.cfg.LoadClaim) })
	defer func() {
		stop()
		c.unclaim(ctx, key, token, 0)
	}()
	look.announce = true
	return c.fetchLoad(ctx, key, f, load, o, t, look)
}

// keepClaim keeps a claim's lease (LoadClaim) while its holder loads: it
// calls renew every third of the lease, from a goroutine of its own, until
// ctx ends or stop is called. stop returns once renew can no longer run,
// so that a release after it is final; it may be called more than once.
func (c *Cache[V]) keepClaim(ctx context.Context, renew func()) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(c.cfg.LoadClaim / 3)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				renew()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		<-done
	}
}

// claimWait is the wake-up of the loads waiting for another instance's
// claimed load of one key (see claimWake); guarded by flightMu.
type claimWait struct {
	ch chan struct{} // closed by the key's invalidation
	n  int           // loads waiting on ch that have not called claimUnwake
}

// claimWake returns a channel closed when an invalidation of key arrives
// (invalidateLocal, dropAll): the value another instance loaded under its
// claim has landed, or the key changed. The caller must hand it back with
// claimUnwake once it stops waiting on it.
func (c *Cache[V]) claimWake(key string) <-chan struct{} {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	w := c.claimWaits[key]
	if w == nil {
		if c.claimWaits == nil {
			c.claimWaits = map[string]*claimWait{}
		}
		w = &claimWait{ch: make(chan struct{})}
		c.claimWaits[key] = w
	}
	w.n++
	return w.ch
}

// claimUnwake hands back ch, which claimWake returned for key: the last
// load to stop waiting on it removes it, so that a key whose wait ended
// without an invalidation (the owner failed, found nothing to store, or
// died; the waiter found the value by polling, reached its bound or was
// cancelled) keeps no channel.
func (c *Cache[V]) claimUnwake(key string, ch <-chan struct{}) {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	w := c.claimWaits[key]
	if w == nil || w.ch != ch { // closed and removed by an invalidation meanwhile
		return
	}
	if w.n--; w.n == 0 {
		delete(c.claimWaits, key)
	}
}

// wakeClaimsLocked wakes the loads waiting for keys' claimed loads (all
// when keys is nil). Called with flightMu held.
func (c *Cache[V]) wakeClaimsLocked(keys []string) {
	if len(c.claimWaits) == 0 {
		return
	}
	if keys == nil {
		for k, w := range c.claimWaits {
			close(w.ch)
			delete(c.claimWaits, k)
		}
		return
	}
	for _, k := range keys {
		if w := c.claimWaits[k]; w != nil {
			close(w.ch)
			delete(c.claimWaits, k)
		}
	}
}

// batchLoad loads the keys st.need of a batch: with LoadClaim, behind their
// claims, key by key as loadClaimed does for one key. The keys this batch
// claims are loaded in one loader call (renewed, announced, released); the
// keys another instance holds are waited for together, and taken from
// Redis when their values land; the keys whose claim expires meanwhile,
// and those still missing at LoadClaimWait, are loaded in a second call.
// Without LoadClaim it is batchLoadRound.
func (c *Cache[V]) batchLoad(ctx context.Context, st *batchState[V], load BatchLoader[V], o callOptions) {
	if c.cfg.LoadClaim <= 0 || c.l2 == nil {
		c.batchLoadRound(ctx, st, load, o)
		return
	}
	all := st.need
	defer func() { st.need = all }()
	var ask, alone []int
	for _, i := range all {
		if st.looks[i].reachable {
			ask = append(ask, i)
		} else {
			alone = append(alone, i) // Redis did not answer: load as without claims
		}
	}
	token := rand.Text()
	won, lost, err := c.claimIndexes(ctx, st, ask, token)
	if err != nil {
		alone, won, lost = append(alone, ask...), nil, nil
	}
	won = c.rereadWon(ctx, st, won, o, token)
	c.loadClaimedRound(ctx, st, load, o, append(won, alone...), won, token)
	if len(lost) == 0 {
		return
	}
	c.cl.waited.Add(uint64(len(lost)))
	waitUntil := time.Now().Add(c.cfg.LoadClaimWait)
	soft := c.waitSoftFor(st, lost)
	for len(lost) > 0 {
		if !time.Now().Before(waitUntil) {
			c.cl.waitBound.Add(uint64(len(lost)))
			c.loadClaimedRound(ctx, st, load, o, lost, nil, token)
			return
		}
		first := st.keys[lost[0]]
		wake := c.claimWake(first)
		timer := time.NewTimer(c.claimPoll())
		soft.arm()
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			soft.disarm()
			timer.Stop()
			c.claimUnwake(first, wake)
			err := &opError{op: "load", keys: indexKeys(st, lost), err: ctx.Err()}
			for _, i := range lost {
				st.res[i] = batchResult[V]{err: err, ok: true}
			}
			return
		}
		soft.disarm() // before st is written
		timer.Stop()
		c.claimUnwake(first, wake)
		settled, left := c.rereadBatch(ctx, st, lost, o)
		c.cl.fromOther.Add(uint64(len(settled)))
		if len(left) == 0 {
			return
		}
		taken, still, err := c.claimIndexes(ctx, st, left, token)
		if err != nil {
			c.loadClaimedRound(ctx, st, load, o, left, nil, token)
			return
		}
		taken = c.rereadWon(ctx, st, taken, o, token)
		c.cl.expired.Add(uint64(len(taken)))
		c.loadClaimedRound(ctx, st, load, o, taken, taken, token)
		lost = still
	}
}

// waitSoft is the soft timeout (see Config.SoftTimeout) of a batch waiting
// for other instances' claimed loads: waiting for another instance's
// loader is waiting for a loader, so SoftTimeout after the wait began the
// waiting keys that have a stale value get it, as they would from the
// batch's own loader (serveStaleBatch). Its timer runs only while the
// batch is idle between polls (arm, disarm), because serveStaleBatch reads
// what the polls write; a timeout that falls during a poll fires at the
// next arm. Used by the batch's goroutine only.
type waitSoft[V any] struct {
	c  *Cache[V]
	st *batchState[V]
	at time.Time  // when the stale values are due
	t  *softTimer // armed timer, or nil
	// fired: the timer's work has run (written by it, read after disarm's
	// stop, which orders the two).
	fired bool
}

// waitSoftFor returns the soft timeout of batch st waiting for the keys at
// lost, or nil when it has none: the soft timeout is off, or none of those
// keys has a stale value.
func (c *Cache[V]) waitSoftFor(st *batchState[V], lost []int) *waitSoft[V] {
	if !c.softTimeoutOn() {
		return nil
	}
	for _, i := range lost {
		if st.looks[i].stale != nil {
			return &waitSoft[V]{c: c, st: st, at: time.Now().Add(c.cfg.SoftTimeout)}
		}
	}
	return nil
}

// arm starts the timer for what is left of the soft timeout, unless it has
// fired (w nil: nothing).
func (w *waitSoft[V]) arm() {
	if w == nil || w.fired {
		return
	}
	w.t = newSoftTimer(time.Until(w.at), func() {
		w.c.serveStaleBatch(w.st)
		w.fired = true
	})
}

// disarm stops the timer; once it returns, the timer's work has run or
// never will.
func (w *waitSoft[V]) disarm() {
	if w == nil || w.t == nil {
		return
	}
	w.t.stop()
	w.t = nil
}

// rereadWon reads the keys of st at won, whose claims this batch has just
// taken, once more (as loadClaimed does for one key: an owner may have
// written back and released between this batch's read and its claims),
// settles and releases those that are fresh now, and returns the others.
func (c *Cache[V]) rereadWon(ctx context.Context, st *batchState[V], won []int, o callOptions, token string) []int {
	if len(won) == 0 {
		return nil
	}
	settled, left := c.rereadBatch(ctx, st, won, o)
	c.releaseIndexes(ctx, st, settled, token)
	c.cl.fromOther.Add(uint64(len(settled)))
	return left
}

// loadClaimedRound runs batchLoadRound for the keys need, of which owned
// hold this batch's claims: those are renewed while the loader runs,
// announced on write-back, and released after.
func (c *Cache[V]) loadClaimedRound(ctx context.Context, st *batchState[V], load BatchLoader[V], o callOptions, need, owned []int, token string) {
	if len(need) == 0 {
		return
	}
	c.cl.won.Add(uint64(len(owned)))
	for _, i := range owned {
		st.looks[i].announce = true
	}
	if len(owned) > 0 {
		keys := indexKeys(st, owned)
		stop := c.keepClaim(ctx, func() { c.releaseKeys(ctx, keys, token, c.cfg.LoadClaim) })
		defer func() {
			stop()
			c.releaseKeys(ctx, keys, token, 0)
		}()
	}
	st.need = need
	c.batchLoadRound(ctx, st, load, o)
}

// claimIndexes claims the keys of st at idx for token: won and lost split
// idx; err reports that Redis could not be asked.
func (c *Cache[V]) claimIndexes(ctx context.Context, st *batchState[V], idx []int, token string) (won, lost []int, err error) {
	if len(idx) == 0 {
		return nil, nil, nil
	}
	keys := indexKeys(st, idx)
	var got map[string]bool
	err = c.redisOp(ctx, func(rctx context.Context) error {
		var err error
		got, err = c.l2.ClaimMany(rctx, keys, token, c.cfg.LoadClaim)
		return err
	})
	if err != nil {
		c.claimFail.Fail(keys[0], err)
		c.releaseKeys(ctx, keys, token, 0) // those it may have taken
		return nil, nil, err
	}
	for _, i := range idx {
		if got[st.keys[i]] {
			won = append(won, i)
		} else {
			lost = append(lost, i)
		}
	}
	return won, lost, nil
}

// rereadBatch reads the keys of st at idx from Redis again, each behind a
// new ticket: a fresh value settles its key (filled into L1); the others
// keep what was read, for their load's compare-and-set.
func (c *Cache[V]) rereadBatch(ctx context.Context, st *batchState[V], idx []int, o callOptions) (settled, left []int) {
	keys := indexKeys(st, idx)
	tickets := make([]l1.Ticket, len(idx))
	for j, k := range keys {
		tickets[j] = c.local.Reserve(k)
	}
	var entries []l2.Entry
	err := c.redisOp(ctx, func(rctx context.Context) error {
		var err error
		entries, err = c.l2.AppendReadMany(rctx, nil, keys)
		c.st.l2Lookups.Add(uint64(len(keys)))
		return err
	})
	if len(entries) != len(keys) {
		return nil, idx // unreadable: keep what was read before
	}
	now := time.Now()
	for j, i := range idx {
		e := &entries[j]
		lk := lookup[V]{reachable: true}
		if e.Raw != nil || e.Corrupt {
			lk = c.classify(ctx, keys[j], e, decodeErrOf(err, keys[j], e), now)
		}
		if lk.fresh {
			c.fillAhead(tickets[j], lk.it, o.l1TTL, lk.until, now, lk.refreshAt)
			st.res[i] = batchResult[V]{it: lk.it, ok: true}
			settled = append(settled, i)
			continue
		}
		lk.raw = slices.Clone(lk.raw) // entries alias the reply, which is not kept
		st.tickets[i], st.looks[i] = tickets[j], lk
		left = append(left, i)
	}
	return settled, left
}

// releaseIndexes releases token's claims of the keys of st at idx.
func (c *Cache[V]) releaseIndexes(ctx context.Context, st *batchState[V], idx []int, token string) {
	if len(idx) > 0 {
		c.releaseKeys(ctx, indexKeys(st, idx), token, 0)
	}
}

// releaseKeys releases (keep 0) or renews (keep > 0) token's claims of
// keys, as unclaim does for one key.
func (c *Cache[V]) releaseKeys(ctx context.Context, keys []string, token string, keep time.Duration) {
	ctx, cancel := c.liveCtx(ctx)
	defer cancel()
	_ = c.redisOp(ctx, func(rctx context.Context) error {
		return c.l2.ReleaseMany(rctx, keys, token, keep)
	})
}

func indexKeys[V any](st *batchState[V], idx []int) []string {
	keys := make([]string, len(idx))
	for j, i := range idx {
		keys[j] = st.keys[i]
	}
	return keys
}
