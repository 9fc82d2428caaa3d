package tiered

import (
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/l1"
	"github.com/nearcache/nearcache/l2"
)

// Stats is a snapshot of every tier's counters and a combined view. Counters
// are cumulative since New. Reading them does no I/O (for the Redis server's
// own INFO figures, use l2.Store.ServerStats on your client).
type Stats struct {
	// L1 is the local tier's counters, as the callers saw them: a tagged
	// copy found with a tag that moved on (see InvalidateTag) counts as a
	// miss (Misses, Stale), not as a hit.
	L1           l1.Stats
	L2           L2Stats
	Invalidation invalidation.Stats
	// Health is the invalidation stream's health now: while it is not
	// healthy, local copies may miss invalidations and fills are kept at
	// most UnhealthyL1TTL. Always healthy in L1-only mode.
	Health   invalidation.Health
	Loads    LoadStats
	Combined Combined
}

// StatsSource is what exporters read: any *Cache[V] satisfies it, whatever
// V, so an exporter needs no type parameter (see contrib/prometheus and
// contrib/otel).
type StatsSource interface {
	Namespace() string
	Stats() Stats
}

var _ StatsSource = (*Cache[int])(nil)

// Namespace returns the Cache's namespace (Config.Namespace, or
// DefaultNamespace).
func (c *Cache[V]) Namespace() string { return c.cfg.Namespace }

// L2Stats are the shared tier's counters: the Store's own (per Redis
// operation) and this Cache's view of them (per key looked up).
type L2Stats struct {
	Store         l2.Stats     // the l2.Store's counters and round-trip latency
	Lookups       uint64       // keys looked up in Redis on L1 misses
	Hits          uint64       // of which found fresh and decodable
	Errors        uint64       // Redis operations this Cache saw fail (reads and writes)
	Skipped       uint64       // operations skipped because the breaker was open
	Breaker       BreakerState // the circuit breaker's state now (its String: "closed", "open" or "half-open")
	BreakerOpened uint64       // times the breaker opened
}

// LoadStats count the miss path.
type LoadStats struct {
	Callers      uint64 // calls that missed L1 and waited for a flight
	Flights      uint64 // keys fetched by a flight this Cache started
	Coalesced    uint64 // callers served by a flight another caller started
	LoaderCalls  uint64 // calls of a Loader or BatchLoader
	LoadedKeys   uint64 // keys passed to those calls
	LoaderErrors uint64 // of which failed (ErrNotFound excluded)
	Panics       uint64 // loader panics turned into errors
	StaleServed  uint64 // fail-safe: stale values served instead of an error (one per value)
	// StaleServedSoftTimeout counts stale values served because the loader
	// was still running after Config.SoftTimeout: one per caller and key
	// served (not in StaleServed).
	StaleServedSoftTimeout uint64
	NegativeCached         uint64 // not-found results cached
	DecodeErrors           uint64 // Redis values that were corrupt or did not decode (reloaded)
	EncodeErrors           uint64 // values the codec could not encode (kept out of Redis)
	Conflicts              uint64 // loaded values not kept because a newer write or delete won
	TagMisses              uint64 // values read from Redis not served because a tag of theirs was invalidated (see InvalidateTag)
	// Latency is the duration of loader calls (Loader or BatchLoader),
	// as percentiles, and LatencyHistogram the same in fixed buckets (100µs
	// to 10s), cumulative, with their sum: for exporters.
	Latency          l2.LatencyStats
	LatencyHistogram l2.Histogram
	// Refreshes count refresh-ahead (Config.RefreshAhead).
	Refreshes RefreshStats
	// Claims count fleet-wide stampede protection (Config.LoadClaim).
	Claims ClaimStats
}

// Combined summarises the tiers.
type Combined struct {
	Requests   uint64  // key lookups (L1 hits + L1 misses)
	L1Hits     uint64  // answered by L1
	L2Hits     uint64  // answered by Redis (fresh), per flight
	HitRatio   float64 // share of requests answered without calling a loader (a background refresh answers none)
	L1HitRatio float64 // L1Hits / Requests
	L2HitRatio float64 // L2Hits / L2 lookups
}

// Stats returns a snapshot of the counters.
func (c *Cache[V]) Stats() Stats {
	var s Stats
	// A tagged copy whose tags moved on is a hit for l1 and a miss for
	// the caller: counted as a stale miss here. Read before l1's counters,
	// which counted each such copy first.
	tagStale := c.st.l1TagStale.Load()
	s.L1 = c.local.Stats()
	tagStale = min(tagStale, s.L1.Hits)
	s.L1.Hits -= tagStale
	s.L1.Misses += tagStale
	s.L1.Stale += tagStale
	st, opened := c.brk.snapshot()
	s.L2 = L2Stats{
		Lookups: c.st.l2Lookups.Load(), Hits: c.st.l2Hits.Load(), Errors: c.st.l2Errors.Load(),
		Skipped: c.st.l2Skipped.Load(), Breaker: st, BreakerOpened: opened,
	}
	s.Health = invalidation.Health{Healthy: true}
	if c.l2 != nil {
		s.L2.Store = c.l2.Stats()
		s.Invalidation = c.bus.Stats()
		s.Health = c.bus.Health()
	}
	// Refreshes first: a refresh is counted in flights before it is in
	// Started, so the flights read next include it; its loaded key reaches
	// loadedKeys a moment after refreshLoaded (hence the min below).
	refreshes, refreshLoaded := c.rf.snapshot(), c.rf.loaded.Load()
	callers, flights := c.st.callers.Load(), c.st.flights.Load()
	s.Loads = LoadStats{
		Callers: callers, Flights: flights,
		LoaderCalls: c.st.loaderCalls.Load(), LoadedKeys: c.st.loadedKeys.Load(), LoaderErrors: c.st.loaderErrors.Load(),
		Panics: c.st.panics.Load(), StaleServed: c.st.staleServed.Load(), StaleServedSoftTimeout: c.st.staleServedSoft.Load(),
		NegativeCached: c.st.negativeCached.Load(), DecodeErrors: c.st.decodeErrors.Load(),
		EncodeErrors: c.st.encodeErrors.Load(), Conflicts: c.st.conflicts.Load(),
		TagMisses: c.st.tagMisses.Load(),
		Latency:   c.st.loadLatency.Snapshot(), LatencyHistogram: c.st.loadLatency.Buckets(),
	}
	s.Loads.Refreshes = refreshes
	s.Loads.Claims = c.cl.snapshot()
	// A refresh is a flight that no caller started.
	if started := flights - min(flights, refreshes.Started); callers > started {
		s.Loads.Coalesced = callers - started
	}
	req := s.L1.Hits + s.L1.Misses
	s.Combined = Combined{Requests: req, L1Hits: s.L1.Hits, L2Hits: s.L2.Hits}
	if req > 0 {
		s.Combined.L1HitRatio = float64(s.L1.Hits) / float64(req)
		// Keys loaded by refresh-ahead answered no request.
		loaded := min(s.Loads.LoadedKeys-min(s.Loads.LoadedKeys, refreshLoaded), req)
		s.Combined.HitRatio = 1 - float64(loaded)/float64(req)
	}
	if s.L2.Lookups > 0 {
		s.Combined.L2HitRatio = float64(s.L2.Hits) / float64(s.L2.Lookups)
	}
	return s
}
