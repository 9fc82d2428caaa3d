package l1

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// ErrConfig is returned by [New], wrapped with the offending field, when a
// [Config] is invalid. Test for it with errors.Is.
var ErrConfig = errors.New("l1: invalid config")

// Defaults applied by [New] to zero fields of [Config].
const (
	DefaultMaxEntries      = 100_000
	DefaultBufferItems     = 64
	DefaultClockResolution = time.Millisecond
	DefaultRefreshRetry    = time.Second
)

// MaxGenerationSlots is the largest [Config.GenerationSlots] that [New]
// accepts: 2^24 slots, 64 MiB of 32-bit counters, allocated up front. More
// slots than entries buy nothing; the default is at most 2^22.
const MaxGenerationSlots = 1 << 24

// EntryOverhead is the number of bytes charged per entry, on top of the cost
// function's result and len(key), when the capacity is given in bytes
// ([Config.MaxBytes]). It approximates the bookkeeping for one entry: the
// entry struct, ristretto's store and policy slots and a share of the
// TinyLFU sketch. BenchmarkMemoryPerEntry measures about 206 bytes per entry
// with int64 values on amd64, of which 8 are the value and about 21 the
// sketch at 10 counters per entry.
const EntryOverhead = 176

const (
	numShards  = 64 // gate, hit-counter and fill-stage stripes; power of two
	stageCap   = 16 // fills a stripe stages before handing them to ristretto
	minGenBits = 10
	maxGenBits = 22
	noExpiry   = math.MaxInt64

	// idleCleanupSecs is ristretto's TtlTickerDurationInSec: its expired
	// entries cleanup runs every idleCleanupSecs/2 seconds.
	idleCleanupSecs = 24 * 60 * 60
)

// Config sizes a [Cache]. Every zero field has a documented default; negative
// values are errors.
type Config struct {
	// MaxEntries is the capacity as a number of entries. Every entry costs 1,
	// and ristretto's internal per-item cost is ignored, so a cache with
	// MaxEntries 1000 holds about 1000 entries. Mutually exclusive with
	// MaxBytes. If both MaxEntries and MaxBytes are zero, DefaultMaxEntries
	// (100,000) is used.
	MaxEntries int64

	// MaxBytes is the capacity in bytes. It requires the cost function passed
	// to [New]; each entry is charged cost(v) + len(key) + [EntryOverhead].
	// Mutually exclusive with MaxEntries.
	MaxBytes int64

	// NumCounters is the number of TinyLFU frequency counters (ristretto's
	// NumCounters). If zero, 10 × MaxEntries is used; with MaxBytes, 10 ×
	// MaxBytes/1024 (an assumed 1 KiB average entry), at least 1000.
	NumCounters int64

	// BufferItems is the size of ristretto's per-stripe Get buffers. If zero,
	// DefaultBufferItems (64) is used.
	BufferItems int64

	// ClockResolution is the tick of the coarse clock that expiry is checked
	// against. An entry can be served for up to one tick (plus the ticker's
	// scheduling delay) after its TTL has passed. If zero,
	// DefaultClockResolution (1 ms) is used.
	ClockResolution time.Duration

	// GenerationSlots is the number of per-key generation counters; keys are
	// mapped onto them by hash, rounded up to a power of two. Two keys that
	// share a slot invalidate each other's entries (an extra miss, never a
	// stale read). Each slot is 4 bytes, allocated by New. At most
	// [MaxGenerationSlots] (2^24); larger values are an error. If zero, the
	// expected number of entries (NumCounters/10) rounded up to a power of
	// two is used, clamped to [2^10, 2^22].
	GenerationSlots int

	// RefreshRetry is how long [Cache.GetRefresh] waits, once it has
	// reported an entry due for refresh, before it reports that entry due
	// again (the refresh it asked for failed, or was left to another
	// process, and the entry is still there). If zero, DefaultRefreshRetry
	// (1 s).
	RefreshRetry time.Duration
}

// entry is what L1 stores in ristretto. It is immutable once published by
// Set; Get reads it without locks.
type entry[V any] struct {
	key   string // defence against 64-bit hash collisions: compared on Get
	epoch uint64 // Cache.epoch at Reserve
	exp   int64  // expiry, nanoseconds since Cache.base; noExpiry if none
	gen   uint32 // the key's generation slot at Reserve
	value V
	// due is when the entry is due for refresh, in the clock's ns;
	// noExpiry if never. The one mutable field: GetRefresh moves it
	// forward by RefreshRetry when it reports the entry due.
	due atomic.Int64
}

// shard is one stripe of the close gate and of the hot-path counters. Padded
// so that goroutines hitting different stripes do not share a cache line.
type shard struct {
	// The close gate counts entries and exits instead of keeping one
	// up-down count, so that a hit's exit is also its hit count: a hit
	// costs two atomic adds on this line, not three. in counts every
	// operation that entered; each leaves through exactly one of hits,
	// misses (Get) or other (every other operation). Close waits until the
	// exits add up to in.
	in     atomic.Uint64
	hits   atomic.Uint64 // Gets that returned a value
	misses atomic.Uint64 // Gets that did not (all reasons)
	other  atomic.Uint64 // exits of operations other than Get
	_      [128 - 32]byte
}

// stage is one stripe of the fill stage: fills that [Cache.Fill] accepted
// and has not yet handed to ristretto. Get looks here when ristretto has no
// usable entry, so a staged fill is served at once. The stripe is handed to
// ristretto in one go when it is full, on every clock tick, and by Wait, so
// that ristretto's policy goroutine is woken once per batch rather than once
// per fill.
type stage[V any] struct {
	mu    sync.Mutex
	n     atomic.Int32        // staged fills; written under mu, read without it as a hint
	hash  [stageCap]uint64    // guarded by mu
	ents  [stageCap]*entry[V] // guarded by mu
	costs [stageCap]int64     // guarded by mu
	_     [64]byte            // keeps neighbouring stripes' locks apart
}

// Ticket is a fill reservation returned by [Cache.Reserve]. It records the
// cache epoch and the key's generation at reservation time; [Cache.Fill]
// stores these stamps in the entry. The zero Ticket is never accepted.
// A Ticket is only meaningful to the Cache that issued it.
type Ticket struct {
	key   string
	hash  uint64
	epoch uint64
	gen   uint32
}

// Key returns the key the ticket was reserved for.
func (t Ticket) Key() string { return t.key }

// Cache is a typed, size-bounded in-process cache over ristretto whose
// entries carry invalidation stamps. See the package documentation for the
// contract. All methods are safe for concurrent use.
type Cache[V any] struct {
	// Read-mostly fields, set by New.
	rc      *ristretto.Cache[uint64, *entry[V]]
	seed    maphash.Seed
	gens    []atomic.Uint32 // per-slot generations; bumped by Invalidate
	genMask uint64
	cost    func(V) int64 // nil in entries mode
	maxCost int64
	clk     *clock     // the process's shared coarse clock for this resolution
	clkUser *clockUser // this cache's registration with clk; released by Close
	retry   int64      // RefreshRetry in ns

	epoch  atomic.Uint64 // starts at 1; bumped by InvalidateAll
	closed atomic.Bool   // set first thing in Close; gates every ristretto call

	_       [64]byte
	pending atomic.Bool // a fill was staged since the last flush (set by Fill, cleared by flushStages)
	_       [63]byte

	shards [numShards]shard
	stages [numShards]stage[V]

	// Cold counters, touched on miss, fill and ristretto callback paths.
	stale         atomic.Uint64
	expired       atomic.Uint64
	collisions    atomic.Uint64
	fills         atomic.Uint64
	refused       atomic.Uint64
	dropped       atomic.Uint64
	rejected      atomic.Uint64
	evicted       atomic.Uint64
	reapplied     atomic.Uint64 // sets made by reapply that ristretto accepted
	exited        atomic.Uint64 // entries that left ristretto (any reason)
	invalidated   atomic.Uint64
	epochBumps    atomic.Uint64
	closeMu       sync.Mutex // serialises Close
	closeDone     bool       // guarded by closeMu
	hookAfterGrd  func()     // tests: runs in Fill between the guard and staging
	hookBeforeSet func()     // tests: runs when handing a staged fill over, between its re-check and the Set
	hookCallback  func()     // tests: runs in ristretto's goroutine on evict/reject
}

// New returns a Cache sized by cfg. cost gives the size of a value in bytes;
// it is required when cfg.MaxBytes is set and ignored otherwise (may be nil).
// New starts two goroutines in ristretto and registers with the process's
// coarse clock (one ticker per resolution, shared by every Cache, started by
// the first and stopped by the last Close, idle while nothing reads it);
// Close stops them.
func New[V any](cfg Config, cost func(V) int64) (*Cache[V], error) {
	switch {
	case cfg.MaxEntries < 0:
		return nil, fmt.Errorf("%w: MaxEntries %d is negative", ErrConfig, cfg.MaxEntries)
	case cfg.MaxBytes < 0:
		return nil, fmt.Errorf("%w: MaxBytes %d is negative", ErrConfig, cfg.MaxBytes)
	case cfg.MaxEntries > 0 && cfg.MaxBytes > 0:
		return nil, fmt.Errorf("%w: set MaxEntries or MaxBytes, not both", ErrConfig)
	case cfg.MaxBytes > 0 && cost == nil:
		return nil, fmt.Errorf("%w: MaxBytes needs a cost function", ErrConfig)
	case cfg.NumCounters < 0:
		return nil, fmt.Errorf("%w: NumCounters %d is negative", ErrConfig, cfg.NumCounters)
	case cfg.BufferItems < 0:
		return nil, fmt.Errorf("%w: BufferItems %d is negative", ErrConfig, cfg.BufferItems)
	case cfg.ClockResolution < 0:
		return nil, fmt.Errorf("%w: ClockResolution %v is negative", ErrConfig, cfg.ClockResolution)
	case cfg.GenerationSlots < 0:
		return nil, fmt.Errorf("%w: GenerationSlots %d is negative", ErrConfig, cfg.GenerationSlots)
	case cfg.RefreshRetry < 0:
		return nil, fmt.Errorf("%w: RefreshRetry %v is negative", ErrConfig, cfg.RefreshRetry)
	case cfg.GenerationSlots > MaxGenerationSlots:
		return nil, fmt.Errorf("%w: GenerationSlots %d is above the maximum %d (MaxGenerationSlots)",
			ErrConfig, cfg.GenerationSlots, MaxGenerationSlots)
	}
	if cfg.MaxEntries == 0 && cfg.MaxBytes == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	maxCost, expected := cfg.MaxEntries, cfg.MaxEntries
	if cfg.MaxBytes > 0 {
		maxCost, expected, cfg.MaxEntries = cfg.MaxBytes, max(cfg.MaxBytes/1024, 100), 0
	} else {
		cost = nil
	}
	if cfg.NumCounters == 0 {
		cfg.NumCounters = 10 * expected
	}
	if cfg.BufferItems == 0 {
		cfg.BufferItems = DefaultBufferItems
	}
	if cfg.ClockResolution == 0 {
		cfg.ClockResolution = DefaultClockResolution
	}
	if cfg.RefreshRetry == 0 {
		cfg.RefreshRetry = DefaultRefreshRetry
	}
	if cfg.GenerationSlots == 0 {
		cfg.GenerationSlots = int(min(max(cfg.NumCounters/10, 1), 1<<maxGenBits))
	}
	genBits := max(bits.Len(uint(cfg.GenerationSlots-1)), minGenBits)

	c := &Cache[V]{
		seed:    maphash.MakeSeed(),
		gens:    make([]atomic.Uint32, 1<<genBits),
		genMask: 1<<genBits - 1,
		cost:    cost,
		maxCost: maxCost,
		retry:   int64(cfg.RefreshRetry),
	}
	c.epoch.Store(1)
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *entry[V]]{
		NumCounters:        cfg.NumCounters,
		MaxCost:            maxCost,
		BufferItems:        cfg.BufferItems,
		IgnoreInternalCost: true,
		// No entry has a ristretto TTL (expiry is the entry's own
		// stamp), so ristretto's cleanup of expired entries has nothing
		// to do: tick it twice a day rather than every 2.5 s, so that
		// an idle Cache does not wake its process.
		TtlTickerDurationInSec: idleCleanupSecs,
		ShouldUpdate:           newerOrEqual[V],
		OnEvict: func(it *ristretto.Item[*entry[V]]) {
			if !c.closed.Load() {
				c.evicted.Add(1)
			}
			if h := c.hookCallback; h != nil {
				h()
			}
		},
		OnReject: func(it *ristretto.Item[*entry[V]]) {
			if !c.reapply(it) {
				c.rejected.Add(1)
			}
			if h := c.hookCallback; h != nil {
				h()
			}
		},
		OnExit: func(e *entry[V]) {
			if e != nil {
				c.exited.Add(1)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.rc = rc
	c.clk, c.clkUser = acquireClock(cfg.ClockResolution, c.flushStages)
	return c, nil
}

// reapply handles a quirk of ristretto: when a key's second set reaches
// ristretto's goroutine while the key's first set is still queued, both are
// queued as new items; the first is admitted, and the policy then rejects
// the second as a duplicate addition, although it is the later fill. When
// the rejected entry's key is present and the entry's stamps are current,
// reapply sets it again, which is now an update (applied at once, subject
// to newerOrEqual), and reports true. It runs on ristretto's goroutine.
//
// Stats.Entries counts every set ristretto accepts and every value it lets
// go (OnExit): the rejected entry and the value the update replaces both
// leave, so the set made here is counted too (in reapplied), or the key,
// still held, would be missing from Entries.
func (c *Cache[V]) reapply(it *ristretto.Item[*entry[V]]) bool {
	e := it.Value
	if e == nil || c.closed.Load() {
		return false
	}
	if _, present := c.rc.GetTTL(it.Key); !present {
		return false // a real admission rejection
	}
	if e.epoch != c.epoch.Load() || e.gen != c.gens[it.Key&c.genMask].Load() {
		return false
	}
	if !c.rc.Set(it.Key, e, it.Cost) {
		return false
	}
	c.reapplied.Add(1)
	return true
}

// newerOrEqual keeps ristretto from replacing an entry with one reserved
// earlier (older epoch, or same epoch and older generation): the older one
// could never be served anyway.
func newerOrEqual[V any](cur, prev *entry[V]) bool {
	if cur.epoch != prev.epoch {
		return cur.epoch > prev.epoch
	}
	return cur.gen >= prev.gen
}

func (c *Cache[V]) hash(key string) uint64 { return maphash.String(c.seed, key) }

func (c *Cache[V]) shardOf(h uint64) *shard { return &c.shards[h>>(64-6)] }

func (c *Cache[V]) stageOf(h uint64) *stage[V] { return &c.stages[h>>(64-6)] }

// enter admits one operation through the close gate of stripe s. On true
// the caller may use ristretto and must then call s.leave(); on false the
// cache is closed.
func (c *Cache[V]) enter(s *shard) bool {
	s.in.Add(1)
	if c.closed.Load() {
		s.leave()
		return false
	}
	return true
}

// leave is the exit of an operation admitted by enter.
func (s *shard) leave() { s.other.Add(1) }

// idle reports whether every operation that entered s has left. The exits
// are read before the entries: both only grow, and exits never exceed
// entries, so equal sums mean nothing was inside when in was read.
func (s *shard) idle() bool {
	out := s.hits.Load() + s.misses.Load() + s.other.Load()
	return out == s.in.Load()
}

// Get returns the value stored for key if it is present, unexpired, and its
// stamps are current: its epoch equals the cache epoch and its generation
// equals the key's current generation. It does not allocate or read the
// wall clock.
func (c *Cache[V]) Get(key string) (V, bool) {
	e, _ := c.lookup(key)
	if e == nil {
		var zero V
		return zero, false
	}
	return e.value, true
}

// GetRefresh is Get for entries filled with [Cache.FillRefresh]: refresh
// also reports that the entry is due for refresh. It does so to one caller
// only, then not again for [Config.RefreshRetry] (while the entry stays),
// so the caller that gets true is the one to start the refresh. An entry
// filled with Fill is never due. It costs Get's lookup and one atomic load
// more; it does not allocate or read the wall clock.
func (c *Cache[V]) GetRefresh(key string) (v V, ok, refresh bool) {
	e, now := c.lookup(key)
	if e == nil {
		return v, false, false
	}
	if d := e.due.Load(); d <= now {
		refresh = e.due.CompareAndSwap(d, now+c.retry)
	}
	return e.value, true, refresh
}

// lookup finds key's usable entry (nil if none) and the clock reading it
// was checked against.
func (c *Cache[V]) lookup(key string) (*entry[V], int64) {
	h := c.hash(key)
	i := h >> (64 - 6)
	s := &c.shards[i]
	s.in.Add(1)
	if !c.closed.Load() {
		e, ok := c.rc.Get(h)
		if ok {
			now := c.clk.read()
			if c.usable(e, h, key, now) {
				s.hits.Add(1)
				return e, now
			}
			c.reject(h, key, e)
		}
		if st := &c.stages[i]; st.n.Load() > 0 {
			now := c.clk.read()
			if e := c.stagedEntry(st, h, key, now); e != nil {
				s.hits.Add(1)
				return e, now
			}
		}
	}
	s.misses.Add(1)
	return nil, 0
}

// usable reports whether e, found under hash h, may be served for key at
// clock reading now: same key, current stamps, not expired.
func (c *Cache[V]) usable(e *entry[V], h uint64, key string, now int64) bool {
	return e.key == key && e.epoch == c.epoch.Load() &&
		e.gen == c.gens[h&c.genMask].Load() && e.exp > now
}

// stagedEntry returns the usable staged fill of key at clock reading now,
// if any. The clock must be read before st.mu is taken: waking a stopped
// clock takes its mu, which the ticker holds while its flush takes st.mu.
func (c *Cache[V]) stagedEntry(st *stage[V], h uint64, key string, now int64) *entry[V] {
	st.mu.Lock()
	defer st.mu.Unlock()
	for j := range int(st.n.Load()) {
		if e := st.ents[j]; st.hash[j] == h && e.key == key && e.epoch == c.epoch.Load() &&
			e.gen == c.gens[h&c.genMask].Load() && e.exp > now {
			return st.ents[j]
		}
	}
	return nil
}

// reject classifies a found-but-unusable entry and removes it unless it
// belongs to another key. Called with the gate held.
func (c *Cache[V]) reject(h uint64, key string, e *entry[V]) {
	switch {
	case e.key != key:
		c.collisions.Add(1)
		return
	case e.epoch != c.epoch.Load() || e.gen != c.gens[h&c.genMask].Load():
		c.stale.Add(1)
	default:
		c.expired.Add(1)
	}
	c.rc.Del(h)
}

// Reserve returns a fill ticket for key, recording the current epoch and the
// key's current generation. Take it before reading the value from its source
// (L2, the loader), and pass it to Fill.
func (c *Cache[V]) Reserve(key string) Ticket {
	h := c.hash(key)
	return Ticket{key: key, hash: h, epoch: c.epoch.Load(), gen: c.gens[h&c.genMask].Load()}
}

// Valid reports whether a Fill with t would pass the guard now: neither the
// key nor the whole cache has been invalidated since Reserve. A caller about
// to publish a value it read under t elsewhere (such as writing it back to a
// shared store) can use it to skip work that an invalidation has overtaken.
func (c *Cache[V]) Valid(t Ticket) bool {
	return t.epoch == c.epoch.Load() && t.gen == c.gens[t.hash&c.genMask].Load()
}

// Fill stores v under the ticket's key with the ticket's stamps, to expire
// after ttl (0: no expiry; negative: not stored). It returns false, storing
// nothing, when the guard refuses the fill (the key was invalidated or the
// epoch bumped since Reserve; counted in Stats.FillsRefused), when ttl is
// negative, or after Close.
//
// A true result means the entry is staged: Get serves it while it is
// staged, and it is handed to ristretto with the other fills of its stripe
// when the stripe is full, on the next clock tick, or by Wait. Then the
// guard is checked again (a fill invalidated meanwhile is dropped and
// counted as refused), ristretto's set buffer may be full
// (Stats.SetsDropped), and its admission policy may reject a new key
// (Stats.SetsRejected). Between the hand-over and ristretto applying the
// set, a Get of a new key may miss, as after any ristretto Set. A fill of a
// key that is already staged supersedes the older of the two (counted as
// refused).
func (c *Cache[V]) Fill(t Ticket, v V, ttl time.Duration) bool {
	return c.fill(t, v, ttl, -1)
}

// FillRefresh is Fill for an entry that becomes due for refresh after
// refreshIn (at once if refreshIn is zero): from then on [Cache.GetRefresh]
// reports it due (see there). Refresh never extends the entry's life: it
// still expires after ttl.
func (c *Cache[V]) FillRefresh(t Ticket, v V, ttl, refreshIn time.Duration) bool {
	return c.fill(t, v, ttl, max(refreshIn, 0))
}

// fill is Fill and FillRefresh; refreshIn < 0: never due.
func (c *Cache[V]) fill(t Ticket, v V, ttl, refreshIn time.Duration) bool {
	if ttl < 0 {
		return false
	}
	s := c.shardOf(t.hash)
	if !c.enter(s) {
		return false
	}
	defer s.leave()
	if !c.Valid(t) {
		c.refused.Add(1)
		return false
	}
	if h := c.hookAfterGrd; h != nil {
		h()
	}
	e := &entry[V]{key: t.key, epoch: t.epoch, gen: t.gen, exp: noExpiry, value: v}
	e.due.Store(noExpiry)
	if ttl > 0 || refreshIn >= 0 {
		// From the coarse clock, which lags real time by up to a tick, as
		// it does when Get compares: the bound "served at most one tick
		// past the TTL" holds as with the wall clock, without reading it.
		now := c.clk.read()
		if ttl > 0 {
			e.exp = now + int64(ttl)
			if e.exp < 0 { // overflow: ttl beyond ~290 years
				e.exp = noExpiry
			}
		}
		if refreshIn >= 0 {
			if d := now + int64(refreshIn); d >= 0 {
				e.due.Store(d)
			}
		}
	}
	cost := int64(1)
	if c.cost != nil {
		cost = max(c.cost(v), 0) + int64(len(t.key)) + EntryOverhead
	}
	st := c.stageOf(t.hash)
	// Once the fill is staged (this runs after st.mu's Unlock, deferred
	// below; waking the clock under st.mu could deadlock with its flush),
	// read the clock so that it runs and its next tick hands the fill over:
	// a stopped clock would leave it staged until some Get read the clock.
	defer c.clk.read()
	st.mu.Lock()
	defer st.mu.Unlock()
	n := int(st.n.Load())
	for j := range n {
		if st.hash[j] == t.hash {
			// One of the two is superseded: the older is never handed over.
			c.refused.Add(1)
			if newerOrEqual(e, st.ents[j]) {
				st.ents[j], st.costs[j] = e, cost
			}
			return true
		}
	}
	if n == stageCap {
		c.handOverLocked(st)
		n = 0
	}
	st.hash[n], st.ents[n], st.costs[n] = t.hash, e, cost
	st.n.Store(int32(n + 1))
	if !c.pending.Load() {
		c.pending.Store(true)
	}
	return true
}

// handOverLocked hands the stripe's staged fills to ristretto and empties
// it, dropping fills whose stamps an invalidation has outdated since they
// were staged. It runs under st.mu, so a stripe's fills reach ristretto in
// the order they were staged (a later fill of a key never lands before an
// earlier one), and whoever takes st.mu next finds them handed over (Wait
// relies on it). Called inside the close gate, with st.mu held.
func (c *Cache[V]) handOverLocked(st *stage[V]) {
	for j := range int(st.n.Load()) {
		e, h := st.ents[j], st.hash[j]
		st.ents[j] = nil // ristretto holds it now (or nobody)
		if e.epoch != c.epoch.Load() || e.gen != c.gens[h&c.genMask].Load() {
			c.refused.Add(1)
			continue
		}
		if hook := c.hookBeforeSet; hook != nil {
			hook()
		}
		if !c.rc.Set(h, e, st.costs[j]) {
			c.dropped.Add(1)
			continue
		}
		c.fills.Add(1)
	}
	st.n.Store(0)
}

// flushStages hands every stripe's staged fills to ristretto. The clock
// calls it on every tick; it returns at once when nothing was staged since
// the last call.
func (c *Cache[V]) flushStages() {
	if c.pending.Swap(false) {
		c.handOverAll()
	}
}

// handOverAll hands every stripe's staged fills to ristretto. A stripe that
// another flush is handing over is waited for (st.mu).
func (c *Cache[V]) handOverAll() {
	for i := range c.stages {
		st := &c.stages[i]
		if st.n.Load() == 0 {
			continue
		}
		s := &c.shards[i]
		if !c.enter(s) {
			return
		}
		st.mu.Lock()
		c.handOverLocked(st)
		st.mu.Unlock()
		s.leave()
	}
}

// Invalidate bumps the generation of each key, so that no entry filled with a
// ticket reserved before this call is ever served again, then deletes the
// keys' entries. When Invalidate returns, Get no longer returns the old
// entries, whatever ristretto's buffers still hold.
func (c *Cache[V]) Invalidate(keys ...string) {
	for _, key := range keys {
		h := c.hash(key)
		c.gens[h&c.genMask].Add(1)
		c.invalidated.Add(1)
		s := c.shardOf(h)
		if c.enter(s) {
			c.rc.Del(h)
			s.leave()
		}
	}
}

// InvalidateAll bumps the cache epoch: every entry filled with a ticket
// reserved before this call becomes unreachable. It is O(1) and atomic; the
// old entries are removed lazily (on Get, or by eviction).
func (c *Cache[V]) InvalidateAll() {
	c.epoch.Add(1)
	c.epochBumps.Add(1)
}

// Wait hands every staged fill to ristretto and blocks until every set
// handed to it so far has been applied (admitted or rejected), so that Get
// sees them. It costs a round trip to ristretto's goroutine: for tests, and
// for callers that must read back what they just filled. A no-op after
// Close.
func (c *Cache[V]) Wait() {
	// Not flushStages: a tick that has cleared pending may still be
	// handing stripes over.
	c.handOverAll()
	s := &c.shards[0]
	if !c.enter(s) {
		return
	}
	defer s.leave()
	c.rc.Wait()
}

// Close stops the cache's goroutines and releases its entries. It is
// idempotent, waits for operations in flight, and is safe to call while other
// goroutines use the cache: afterwards Get misses, Fill returns false and the
// other methods do nothing. It always returns nil.
func (c *Cache[V]) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closeDone {
		return nil
	}
	c.closed.Store(true)
	// Every operation that saw closed == false entered its stripe before
	// that load (sequentially consistent atomics), so once a stripe is idle
	// it holds no such operation, and no new one can enter.
	for i := range c.shards {
		for spin := 0; !c.shards[i].idle(); spin++ {
			if spin < 100 {
				runtime.Gosched()
			} else {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	releaseClock(c.clk, c.clkUser)
	c.rc.Close()
	c.closeDone = true
	return nil
}
