// Package l1 is nearcache's local tier: a typed, size-bounded, in-process
// cache over [github.com/dgraph-io/ristretto/v2] whose entries carry
// invalidation stamps, so that a value overtaken by an invalidation is never
// served, whatever ristretto's asynchronous buffers do.
//
// # Use and contract
//
//	if v, ok := c.Get(key); ok {
//		return v
//	}
//	t := c.Reserve(key) // before reading the source (L2, a loader)
//	v := readSource(key)
//	c.Fill(t, v, ttl) // refused if key was invalidated since Reserve
//
// A writer changes the source first, then calls [Cache.Invalidate] (or
// [Cache.InvalidateAll], to repair a lost invalidation stream). Once
// Invalidate(k) or InvalidateAll has returned, no Get returns a value filled
// through a [Ticket] reserved before that call, even if ristretto applies the
// fill later. Fill refuses a ticket that is already outdated (counted in
// [Stats].FillsRefused); [Cache.Valid] tells whether it would. Get also misses
// on an expired entry and on one stored for another key with the same hash.
//
// # Refresh times
//
// [Cache.FillRefresh] fills an entry that also has a refresh time;
// [Cache.GetRefresh] serves it like Get and, once that time has come, tells
// one caller (and no other for [Config.RefreshRetry]) that the entry is due:
// that caller starts the refresh. The check uses the clock reading Get makes
// for expiry; it never extends the entry's life.
//
// # Sizing and expiry
//
// [Config.MaxEntries] counts entries (ristretto's internal cost is ignored);
// [Config.MaxBytes] counts the cost function's result plus len(key) and
// [EntryOverhead] per entry. A ttl of 0 means no expiry; a negative ttl stores
// nothing. Every zero field of [Config] has a documented default.
//
// # Concurrency
//
// All methods are safe for concurrent use. A Get that hits does not allocate,
// read the wall clock or take a lock beyond ristretto's shard read lock (the
// first read after the clock has idled reads it once, see below). The cache
// owns ristretto's two workers and shares the process's coarse-clock ticker
// (one per [Config.ClockResolution], started by the first Cache, stopped by
// the last Close, and idle after 100 ms without reads); [Cache.Close] stops
// them and waits, is idempotent, and is safe while
// other goroutines use the cache: afterwards Get misses, Fill returns false and
// the other methods do nothing.
//
// NOTE: Fill returning true means the entry is staged: Get serves it at once,
// but ristretto may still reject it ([Stats].SetsRejected) or drop it
// ([Stats].SetsDropped), and a new key may miss for a moment after the staged
// fill is handed to ristretto. Each costs a later miss, never a wrong value.
// [Cache.Wait] hands every staged fill over and waits until ristretto applied it.
//
// NOTE: values are returned as stored, not copied: if V is a pointer, slice or
// map, do not modify what Get returns.
//
// NOTE: after InvalidateAll, and after expiry, old entries hold capacity until a
// Get meets them or the policy evicts them.
//
// NOTE: an entry may be served up to one [Config.ClockResolution] (plus the
// ticker's scheduling delay) after its TTL.
//
// NOTE: the coarse clock is shared by the process. Under testing/synctest,
// every Cache that uses a clock must be created and closed inside one bubble
// (or all outside bubbles): a clock started in one bubble cannot serve another.
//
// NOTE: invalidating a key also misses the keys sharing its generation slot
// ([Config.GenerationSlots]). Each entry keeps its key string (raw ristretto
// keeps only hashes), so memory per entry includes the key's bytes.
//
// NOTE: a Ticket belongs to the Cache that issued it; the zero Ticket is always
// refused. The guarantee needs the caller to reserve before reading the source
// and every write to the source to be followed by an invalidation.
//
// The design reasoning is in docs/DESIGN.md of the repository.
package l1
