// Package l1 is nearcache's local tier: a typed, size-bounded, in-process
// cache over [github.com/dgraph-io/ristretto/v2] whose entries carry
// invalidation stamps, so that a value overtaken by an invalidation is never
// served, whatever ristretto's asynchronous buffers do.
//
// # Use
//
// A reader calls [Cache.Get]. On a miss it takes a [Ticket] with
// [Cache.Reserve] before it reads the value from its source (L2, a loader),
// and then stores the value with [Cache.Fill]:
//
//	if v, ok := c.Get(key); ok {
//		return v
//	}
//	t := c.Reserve(key)     // before reading the source
//	v := readSource(key)
//	c.Fill(t, v, ttl)       // refused if key was invalidated since Reserve
//
// A writer changes the source first, then calls [Cache.Invalidate]; a lost
// invalidation stream is repaired with [Cache.InvalidateAll].
//
// # Consistency contract
//
// Every entry records the cache epoch and its key's generation as they were
// when its ticket was reserved, not when the fill ran. Invalidate bumps the
// key's generation; InvalidateAll bumps the epoch. Get returns an entry only
// if its epoch equals the current epoch, its generation equals the key's
// current generation, its stored key equals the key asked for, and it has
// not expired. Hence: once Invalidate(k) (or InvalidateAll) has returned, no
// Get returns a value that was filled through a ticket reserved before that
// call. This holds even when ristretto applies the Set after the
// invalidation (its Set is buffered), because the check is made on every
// read, not only when filling. Fill also refuses (and counts) a ticket that
// is already outdated, so that such fills do not take space.
//
// Together with a source that is written before it is invalidated, this
// closes the classic near-cache race (a load that read the old value before
// a write stores it after the write's invalidation): the load's ticket
// predates the invalidation, so its entry is never served.
//
// # Sizing
//
// [Config.MaxEntries] counts entries: each costs 1 and ristretto's hidden
// internal cost per item is ignored, so MaxEntries 1000 holds about 1000
// entries (a naive ristretto setup with cost 1 and MaxCost 1000 holds 17).
// [Config.MaxBytes] counts bytes through the cost function given to [New],
// plus len(key) and [EntryOverhead] per entry. Every zero field of [Config]
// has a documented default.
//
// # Concurrency
//
// All methods are safe for concurrent use. A Get that hits ristretto does
// not allocate, takes no lock beyond ristretto's shard read lock, and does
// not read the wall clock:
// it hashes the key once (maphash, per-cache seed; the 64-bit hash is
// ristretto's key, so ristretto does not hash again), and adds a few atomic
// operations on a per-stripe, cache-line-padded counter (the close gate and
// the hit counter) to one ristretto Get. Close sets a flag, then waits for
// operations in flight on every stripe before closing ristretto, so calls
// racing with Close never reach a closed ristretto (which would panic).
//
// The cache owns three goroutines: the coarse-clock ticker (which also hands
// staged fills to ristretto) and ristretto's
// two workers. [Cache.Close] stops them all and waits for them; it is
// idempotent and safe to call while other goroutines use the cache. After
// Close, Get misses, Fill returns false and the other methods do nothing.
//
// # Expiry
//
// Fill computes an entry's expiry from, and Get compares it with, a coarse
// clock: an atomic updated every [Config.ClockResolution] by the ticker
// goroutine, so neither reads the wall clock. ristretto's own TTL is not
// used, because its Get reads the wall clock for every entry that has one.
// A ttl of 0 means no expiry; a negative ttl stores nothing.
//
// # Fill stage
//
// ristretto applies each Set on its policy goroutine, fed through a
// channel: a Set that finds the goroutine idle wakes it, which on a small
// machine costs more than the rest of a cache miss. Fill therefore stages
// its entry in one of 64 stripes (by key hash) of up to 16 entries, and a
// stripe is handed to ristretto as one batch when it is full, on every tick
// of the coarse clock (1 ms by default), and by [Cache.Wait]: one wake-up
// per batch instead of one per fill. A staged entry is served while it is
// staged: a Get that finds no usable entry in ristretto looks in the key's
// stripe (one atomic load when the stripe is empty; otherwise a lock and a
// scan of at most 16 hashes), with the same checks of stamps and expiry. A
// stripe is handed over under its lock, so fills of a key reach ristretto in
// the order they were staged. When a stripe is handed over, each entry's
// stamps are checked again, and an entry an invalidation has outdated
// meanwhile is dropped (counted in [Stats].FillsRefused); one that passes
// and is invalidated just before ristretto applies it is refused on every
// Get, as above. After the hand-over, a new key may miss until ristretto's
// goroutine applies the set, as with any ristretto Set (an extra read of
// the source, never a wrong value). Staged entries are held outside
// ristretto's cost accounting: at most 64 × 16 of them, for at most one
// clock tick.
//
// # Design notes
//
// Entries are stored in ristretto as pointers to an immutable struct (key,
// stamps, expiry, value): a hit is one ristretto Get plus a few atomic
// loads. Generations live in a fixed array of 32-bit counters indexed by key
// hash, allocated by New (at most [MaxGenerationSlots], 64 MiB); a slot
// shared by two keys costs only misses. The epoch is one 64-bit
// counter, so InvalidateAll is O(1) and atomic; ristretto's Clear, which is
// neither atomic nor safe under concurrent use, is never used.
//
// NOTE: Fill returning true means the entry is staged, not that ristretto
// holds it: ristretto's admission policy may still reject a new key
// (counted in [Stats].SetsRejected), and a full set buffer drops it
// ([Stats].SetsDropped). Either costs a later miss, never a wrong value.
//
// NOTE: Values are returned as stored, not copied. If V is a pointer, slice
// or map, callers must not modify what Get returns.
//
// NOTE: After InvalidateAll the old entries are unreachable but still hold
// capacity until a Get meets them (and deletes them) or the policy evicts
// them. Likewise an expired entry is removed when a Get meets it; one that
// is never read again stays until it is evicted.
//
// NOTE: An entry may be served up to one ClockResolution (plus the ticker's
// scheduling delay) after its TTL has passed.
//
// NOTE: Invalidating a key also misses the other keys that share its
// generation slot ([Config.GenerationSlots]). Generations are 32-bit and
// compared for equality: an outdated entry would be served again only if it
// stayed in the cache, never read, while its slot was bumped exactly 2^32
// times.
//
// NOTE: The cache keeps each entry's key string (raw ristretto keeps only
// hashes), so memory per entry includes the key's bytes unless the caller
// holds the same string anyway.
//
// NOTE: A Ticket belongs to the Cache that issued it; the zero Ticket is
// always refused. The guarantee assumes the caller reserves before reading
// the source and that every write to the source is followed by an
// invalidation.
package l1
