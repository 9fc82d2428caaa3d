package nearcacheotel

import (
	"go.opentelemetry.io/otel/attribute"

	"github.com/nearcache/nearcache/tiered"
)

// ScopeName is the instrumentation scope of every Meter and Tracer this
// package creates: the module's import path.
const ScopeName = "github.com/nearcache/nearcache/contrib/otel"

// The attribute keys. CacheKey is on every measurement and span; the others
// take a few fixed values (metrics) or describe one operation (spans). No
// attribute holds a key unless WithKeys asks for KeysKey on spans.
const (
	CacheKey     = attribute.Key("nearcache.cache")     // the cache's namespace
	StateKey     = attribute.Key("nearcache.state")     // breaker state: closed, open, half-open
	CauseKey     = attribute.Key("nearcache.cause")     // repair cause: invalidation.Cause names
	ReasonKey    = attribute.Key("nearcache.reason")    // unhealthy reason: invalidation.HealthReason names
	QuantileKey  = attribute.Key("nearcache.quantile")  // "0.5", "0.9", "0.99", "0.999", "1" (the maximum)
	BatchKey     = attribute.Key("nearcache.batch")     // span: a BatchLoader call
	KeyCountKey  = attribute.Key("nearcache.key_count") // span: keys loaded or written
	NotFoundKey  = attribute.Key("nearcache.not_found") // span: keys the loader reported absent
	CoalescedKey = attribute.Key("nearcache.coalesced") // span: callers that joined the load
	KeysKey      = attribute.Key("nearcache.keys")      // span, with WithKeys only: the first MaxSpanKeys keys
)

// counterDef is an observable Int64Counter read from Stats, with the cache
// attribute alone.
type counterDef struct {
	name, unit, desc string
	value            func(*tiered.Stats) uint64
}

// upDownDef is an observable Int64UpDownCounter (an additive level) read
// from Stats, with the cache attribute alone.
type upDownDef struct {
	name, unit, desc string
	value            func(*tiered.Stats) int64
}

// counterDefs are the plain cumulative counters, in the order of doc.go.
var counterDefs = [...]counterDef{
	// L1, the local tier.
	{"nearcache.l1.hits", "{hit}", "Lookups answered by the local tier (L1).", func(s *tiered.Stats) uint64 { return s.L1.Hits }},
	{"nearcache.l1.misses", "{miss}", "L1 lookups that found no usable entry (stale, expired and collision misses included).", func(s *tiered.Stats) uint64 { return s.L1.Misses }},
	{"nearcache.l1.stale_misses", "{miss}", "L1 misses on an entry overtaken by an invalidation or a whole-L1 drop.", func(s *tiered.Stats) uint64 { return s.L1.Stale }},
	{"nearcache.l1.expired_misses", "{miss}", "L1 misses on an entry past its local TTL.", func(s *tiered.Stats) uint64 { return s.L1.Expired }},
	{"nearcache.l1.collision_misses", "{miss}", "L1 misses on an entry stored for another key with the same hash.", func(s *tiered.Stats) uint64 { return s.L1.Collisions }},
	{"nearcache.l1.fills", "{fill}", "Values handed to the L1 store.", func(s *tiered.Stats) uint64 { return s.L1.Fills }},
	{"nearcache.l1.fills_refused", "{fill}", "L1 fills refused because their key was invalidated after the read began.", func(s *tiered.Stats) uint64 { return s.L1.FillsRefused }},
	{"nearcache.l1.sets_dropped", "{fill}", "L1 fills dropped because the store's set buffer was full.", func(s *tiered.Stats) uint64 { return s.L1.SetsDropped }},
	{"nearcache.l1.sets_rejected", "{entry}", "New L1 entries rejected by the store's admission policy.", func(s *tiered.Stats) uint64 { return s.L1.SetsRejected }},
	{"nearcache.l1.evictions", "{entry}", "L1 entries evicted to make room.", func(s *tiered.Stats) uint64 { return s.L1.Evictions }},
	{"nearcache.l1.invalidations", "{key}", "Keys invalidated in L1, by local writes and by invalidation messages.", func(s *tiered.Stats) uint64 { return s.L1.Invalidated }},
	{"nearcache.l1.epoch_bumps", "{drop}", "Whole-L1 drops (clears and repairs).", func(s *tiered.Stats) uint64 { return s.L1.EpochBumps }},

	// L2 as this cache sees it.
	{"nearcache.l2.lookups", "{key}", "Keys looked up in Redis on L1 misses.", func(s *tiered.Stats) uint64 { return s.L2.Lookups }},
	{"nearcache.l2.hits", "{key}", "Keys looked up in Redis and found fresh and decodable.", func(s *tiered.Stats) uint64 { return s.L2.Hits }},
	{"nearcache.l2.errors", "{operation}", "Redis operations this cache saw fail, reads and writes.", func(s *tiered.Stats) uint64 { return s.L2.Errors }},
	{"nearcache.l2.skipped", "{operation}", "Redis operations skipped because the circuit breaker was open.", func(s *tiered.Stats) uint64 { return s.L2.Skipped }},
	{"nearcache.breaker.opens", "{open}", "Times the circuit breaker in front of Redis opened.", func(s *tiered.Stats) uint64 { return s.L2.BreakerOpened }},

	// The Redis store, per operation.
	{"nearcache.redis.hits", "{key}", "Keys read from Redis and found.", func(s *tiered.Stats) uint64 { return s.L2.Store.Hits }},
	{"nearcache.redis.misses", "{key}", "Keys read from Redis and not found (corrupt values included).", func(s *tiered.Stats) uint64 { return s.L2.Store.Misses }},
	{"nearcache.redis.sets", "{key}", "Keys written to Redis.", func(s *tiered.Stats) uint64 { return s.L2.Store.Sets }},
	{"nearcache.redis.deletes", "{key}", "Key deletes requested from Redis.", func(s *tiered.Stats) uint64 { return s.L2.Store.Deletes }},
	{"nearcache.redis.notifications", "{message}", "Invalidation notifications published by writes.", func(s *tiered.Stats) uint64 { return s.L2.Store.Notifications }},
	{"nearcache.redis.errors", "{operation}", "Failed Redis operations, timeouts included.", func(s *tiered.Stats) uint64 { return s.L2.Store.Errors }},
	{"nearcache.redis.timeouts", "{operation}", "Redis operations that timed out.", func(s *tiered.Stats) uint64 { return s.L2.Store.Timeouts }},
	{"nearcache.redis.corrupt_values", "{value}", "Values in Redis that were not a valid envelope.", func(s *tiered.Stats) uint64 { return s.L2.Store.Corrupt }},
	{"nearcache.redis.too_large_values", "{value}", "Values refused (writes) or skipped (reads) for exceeding the maximum value size.", func(s *tiered.Stats) uint64 { return s.L2.Store.TooLarge }},
	{"nearcache.redis.stale_writes_refused", "{key}", "Keys of versioned writes refused because Redis held a version as new or newer.", func(s *tiered.Stats) uint64 { return s.L2.Store.StaleRefused }},
	{"nearcache.redis.round_trips", "{round_trip}", "Redis round trips (one per operation or batch).", func(s *tiered.Stats) uint64 { return s.L2.Store.Latency.Count }},

	// Loads, the miss path.
	{"nearcache.load.callers", "{call}", "Calls that missed L1 and waited for a flight.", func(s *tiered.Stats) uint64 { return s.Loads.Callers }},
	{"nearcache.load.flights", "{key}", "Keys fetched by a flight this cache started.", func(s *tiered.Stats) uint64 { return s.Loads.Flights }},
	{"nearcache.load.coalesced", "{call}", "Callers served by a flight another caller started.", func(s *tiered.Stats) uint64 { return s.Loads.Coalesced }},
	{"nearcache.load.calls", "{call}", "Calls of a Loader or BatchLoader.", func(s *tiered.Stats) uint64 { return s.Loads.LoaderCalls }},
	{"nearcache.load.keys", "{key}", "Keys passed to loader calls.", func(s *tiered.Stats) uint64 { return s.Loads.LoadedKeys }},
	{"nearcache.load.errors", "{call}", "Loader calls that failed (not-found results excluded).", func(s *tiered.Stats) uint64 { return s.Loads.LoaderErrors }},
	{"nearcache.load.panics", "{panic}", "Loader panics turned into errors.", func(s *tiered.Stats) uint64 { return s.Loads.Panics }},
	{"nearcache.load.stale_served", "{value}", "Stale values served by fail-safe instead of an error.", func(s *tiered.Stats) uint64 { return s.Loads.StaleServed }},
	{"nearcache.load.stale_served_soft_timeout", "{value}", "Stale values served because the loader was still running after the soft timeout.", func(s *tiered.Stats) uint64 { return s.Loads.StaleServedSoftTimeout }},
	{"nearcache.load.negative_cached", "{key}", "Not-found results cached.", func(s *tiered.Stats) uint64 { return s.Loads.NegativeCached }},
	{"nearcache.load.decode_errors", "{value}", "Values read from Redis that were corrupt or did not decode (reloaded).", func(s *tiered.Stats) uint64 { return s.Loads.DecodeErrors }},
	{"nearcache.load.encode_errors", "{value}", "Values the codec could not encode (kept out of Redis).", func(s *tiered.Stats) uint64 { return s.Loads.EncodeErrors }},
	{"nearcache.load.conflicts", "{value}", "Loaded values not kept because a newer write or delete won.", func(s *tiered.Stats) uint64 { return s.Loads.Conflicts }},
	{"nearcache.load.tag_misses", "{value}", "Values read from Redis not served because a tag of theirs was invalidated.", func(s *tiered.Stats) uint64 { return s.Loads.TagMisses }},
	{"nearcache.refresh.started", "{refresh}", "Refresh-ahead refreshes started by a hit past the refresh threshold.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.Started }},
	{"nearcache.refresh.from_redis", "{refresh}", "Refreshes that took a fresher value another instance had stored.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.FromRedis }},
	{"nearcache.refresh.from_loader", "{refresh}", "Refreshes that called the loader and stored its value.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.FromLoader }},
	{"nearcache.refresh.skipped", "{refresh}", "Refreshes left to another instance holding the key's claim.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.Skipped }},
	{"nearcache.refresh.failed", "{refresh}", "Refreshes whose loader or Redis failed (the old value is kept).", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.Failed }},
	{"nearcache.claim.won", "{load}", "Loads run holding the key's fleet-wide claim.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.Won }},
	{"nearcache.claim.waited", "{load}", "Loads that found the key's claim held by another instance and waited.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.Waited }},
	{"nearcache.claim.from_other", "{load}", "Loads that took the value another instance loaded under its claim.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.FromOther }},
	{"nearcache.claim.expired", "{load}", "Loads that took over a claim whose owner ended without a value in Redis or stopped renewing it.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.Expired }},
	{"nearcache.claim.wait_bound", "{load}", "Loads that waited LoadClaimWait and loaded by themselves.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.WaitBound }},

	// The invalidation stream.
	{"nearcache.invalidation.published", "{message}", "Invalidation messages published.", func(s *tiered.Stats) uint64 { return s.Invalidation.Published }},
	{"nearcache.invalidation.received", "{message}", "Invalidation payloads read from the subscription.", func(s *tiered.Stats) uint64 { return s.Invalidation.Received }},
	{"nearcache.invalidation.applied", "{message}", "Invalidation messages from other instances applied to L1.", func(s *tiered.Stats) uint64 { return s.Invalidation.Applied }},
	{"nearcache.invalidation.own", "{message}", "This instance's own invalidation messages seen.", func(s *tiered.Stats) uint64 { return s.Invalidation.Own }},
	{"nearcache.invalidation.duplicates", "{message}", "Redis Cluster: further copies of a message already seen.", func(s *tiered.Stats) uint64 { return s.Invalidation.Duplicates }},
	{"nearcache.invalidation.dropped", "{message}", "Invalidation messages dropped because the receive queue was full.", func(s *tiered.Stats) uint64 { return s.Invalidation.Dropped }},
	{"nearcache.invalidation.gaps", "{gap}", "Sequence gaps detected (lost messages).", func(s *tiered.Stats) uint64 { return s.Invalidation.Gaps }},
	{"nearcache.invalidation.seq_resets", "{reset}", "Sequences that went backwards or vanished.", func(s *tiered.Stats) uint64 { return s.Invalidation.SeqResets }},
	{"nearcache.invalidation.lost_tails", "{partition}", "Partitions found behind Redis by anti-entropy.", func(s *tiered.Stats) uint64 { return s.Invalidation.LostTails }},
	{"nearcache.invalidation.disconnects", "{disconnect}", "Subscription failures.", func(s *tiered.Stats) uint64 { return s.Invalidation.Disconnects }},
	{"nearcache.invalidation.reconnects", "{reconnect}", "Subscriptions confirmed again after a failure or stall.", func(s *tiered.Stats) uint64 { return s.Invalidation.Reconnects }},
	{"nearcache.invalidation.reroutes", "{reroute}", "Subscriptions moved to the server the commands go to (failover, restart).", func(s *tiered.Stats) uint64 { return s.Invalidation.Reroutes }},
	{"nearcache.invalidation.stalls", "{stall}", "Subscription pings left unanswered (black-holed connection).", func(s *tiered.Stats) uint64 { return s.Invalidation.Stalls }},
	{"nearcache.invalidation.decode_rejects", "{message}", "Malformed invalidation messages.", func(s *tiered.Stats) uint64 { return s.Invalidation.DecodeRejects }},
	{"nearcache.invalidation.auth_rejects", "{message}", "Unsigned or forged invalidation messages.", func(s *tiered.Stats) uint64 { return s.Invalidation.AuthRejects }},
	{"nearcache.invalidation.anti_entropy_rounds", "{round}", "Anti-entropy rounds completed.", func(s *tiered.Stats) uint64 { return s.Invalidation.AERounds }},
	{"nearcache.invalidation.anti_entropy_errors", "{round}", "Anti-entropy rounds that failed to read Redis.", func(s *tiered.Stats) uint64 { return s.Invalidation.AEErrors }},
}

// upDownDefs are the levels: additive across caches, so asynchronous
// UpDownCounters in OpenTelemetry's terms (a Prometheus exporter shows them
// as gauges).
var upDownDefs = [...]upDownDef{
	{"nearcache.l1.entries", "{entry}", "Entries held in L1 (approximate while fills are buffered).", func(s *tiered.Stats) int64 { return s.L1.Entries }},
	{"nearcache.l1.cost", "{cost}", "L1 capacity in use: entries, or bytes when sized in bytes.", func(s *tiered.Stats) int64 { return s.L1.Cost }},
	{"nearcache.l1.max_cost", "{cost}", "L1 capacity: entries, or bytes when sized in bytes.", func(s *tiered.Stats) int64 { return s.L1.MaxCost }},
}

// The other instruments, with attributes beyond the cache's.
const (
	nameRepairs         = "nearcache.invalidation.repairs"
	nameBreakerState    = "nearcache.breaker.state"
	nameHealthy         = "nearcache.invalidation.healthy"
	nameUnhealthyReason = "nearcache.invalidation.unhealthy_reason"
	nameUnhealthyTime   = "nearcache.invalidation.unhealthy_duration"
	nameRoundTripQ      = "nearcache.redis.round_trip_quantile"
	nameLoadDurationQ   = "nearcache.load.duration_quantile"
	nameLagQ            = "nearcache.invalidation.lag_quantile"
	nameLoadDuration    = "nearcache.load.duration"
	nameLoadSpan        = "nearcache.load"
	nameSetSpan         = "nearcache.set"
	nameDeleteSpan      = "nearcache.delete"
	nameClearSpan       = "nearcache.clear"
)

// quantiles are the values of QuantileKey, in the order of quantileValues.
var quantiles = [...]string{"0.5", "0.9", "0.99", "0.999", "1"}

// breakerStates are the values of StateKey.
var breakerStates = [...]tiered.BreakerState{tiered.BreakerClosed, tiered.BreakerOpen, tiered.BreakerHalfOpen}

// loadDurationBounds are the explicit bucket bounds of nearcache.load.duration,
// in seconds: the core's fixed histogram bounds (100µs to 10s), so that the
// three latency distributions line up on a dashboard.
var loadDurationBounds = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}
