package nearcacheprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nearcache/nearcache/tiered"
)

// The label names. cache is the namespace; the others take a small fixed
// set of values.
const (
	labelCache  = "cache"
	labelState  = "state"
	labelCause  = "cause"
	labelReason = "reason"
)

// counter is a counter with the cache label alone.
type counter struct {
	name, help string
	value      func(*tiered.Stats) uint64
}

// gauge is a gauge with the cache label alone.
type gauge struct {
	name, help string
	value      func(*tiered.Stats) float64
}

// counters are the plain counters, in the order of doc.go.
var counters = [...]counter{
	// L1, the local tier.
	{"nearcache_l1_hits_total", "Lookups answered by the local tier (L1).", func(s *tiered.Stats) uint64 { return s.L1.Hits }},
	{"nearcache_l1_misses_total", "L1 lookups that found no usable entry (stale, expired and collision misses included).", func(s *tiered.Stats) uint64 { return s.L1.Misses }},
	{"nearcache_l1_stale_misses_total", "L1 misses on an entry overtaken by an invalidation or a whole-L1 drop.", func(s *tiered.Stats) uint64 { return s.L1.Stale }},
	{"nearcache_l1_expired_misses_total", "L1 misses on an entry past its local TTL.", func(s *tiered.Stats) uint64 { return s.L1.Expired }},
	{"nearcache_l1_collision_misses_total", "L1 misses on an entry stored for another key with the same hash.", func(s *tiered.Stats) uint64 { return s.L1.Collisions }},
	{"nearcache_l1_fills_total", "Values handed to the L1 store.", func(s *tiered.Stats) uint64 { return s.L1.Fills }},
	{"nearcache_l1_fills_refused_total", "L1 fills refused because their key was invalidated after the read began.", func(s *tiered.Stats) uint64 { return s.L1.FillsRefused }},
	{"nearcache_l1_sets_dropped_total", "L1 fills dropped because the store's set buffer was full.", func(s *tiered.Stats) uint64 { return s.L1.SetsDropped }},
	{"nearcache_l1_sets_rejected_total", "New L1 entries rejected by the store's admission policy.", func(s *tiered.Stats) uint64 { return s.L1.SetsRejected }},
	{"nearcache_l1_evictions_total", "L1 entries evicted to make room.", func(s *tiered.Stats) uint64 { return s.L1.Evictions }},
	{"nearcache_l1_invalidations_total", "Keys invalidated in L1, by local writes and by invalidation messages.", func(s *tiered.Stats) uint64 { return s.L1.Invalidated }},
	{"nearcache_l1_epoch_bumps_total", "Whole-L1 drops (clears and repairs).", func(s *tiered.Stats) uint64 { return s.L1.EpochBumps }},

	// L2 as this cache sees it.
	{"nearcache_l2_lookups_total", "Keys looked up in Redis on L1 misses.", func(s *tiered.Stats) uint64 { return s.L2.Lookups }},
	{"nearcache_l2_hits_total", "Keys looked up in Redis and found fresh and decodable.", func(s *tiered.Stats) uint64 { return s.L2.Hits }},
	{"nearcache_l2_errors_total", "Redis operations this cache saw fail, reads and writes.", func(s *tiered.Stats) uint64 { return s.L2.Errors }},
	{"nearcache_l2_skipped_total", "Redis operations skipped because the circuit breaker was open.", func(s *tiered.Stats) uint64 { return s.L2.Skipped }},
	{"nearcache_breaker_opens_total", "Times the circuit breaker in front of Redis opened.", func(s *tiered.Stats) uint64 { return s.L2.BreakerOpened }},

	// The Redis store, per operation.
	{"nearcache_redis_hits_total", "Keys read from Redis and found.", func(s *tiered.Stats) uint64 { return s.L2.Store.Hits }},
	{"nearcache_redis_misses_total", "Keys read from Redis and not found (corrupt values included).", func(s *tiered.Stats) uint64 { return s.L2.Store.Misses }},
	{"nearcache_redis_sets_total", "Keys written to Redis.", func(s *tiered.Stats) uint64 { return s.L2.Store.Sets }},
	{"nearcache_redis_deletes_total", "Key deletes requested from Redis.", func(s *tiered.Stats) uint64 { return s.L2.Store.Deletes }},
	{"nearcache_redis_notifications_total", "Invalidation notifications published by writes.", func(s *tiered.Stats) uint64 { return s.L2.Store.Notifications }},
	{"nearcache_redis_errors_total", "Failed Redis operations, timeouts included.", func(s *tiered.Stats) uint64 { return s.L2.Store.Errors }},
	{"nearcache_redis_timeouts_total", "Redis operations that timed out.", func(s *tiered.Stats) uint64 { return s.L2.Store.Timeouts }},
	{"nearcache_redis_corrupt_values_total", "Values in Redis that were not a valid envelope.", func(s *tiered.Stats) uint64 { return s.L2.Store.Corrupt }},
	{"nearcache_redis_too_large_values_total", "Values refused (writes) or skipped (reads) for exceeding the maximum value size.", func(s *tiered.Stats) uint64 { return s.L2.Store.TooLarge }},
	{"nearcache_redis_stale_writes_refused_total", "Keys of versioned writes refused because Redis held a version as new or newer.", func(s *tiered.Stats) uint64 { return s.L2.Store.StaleRefused }},

	// Loads, the miss path.
	{"nearcache_load_callers_total", "Calls that missed L1 and waited for a flight.", func(s *tiered.Stats) uint64 { return s.Loads.Callers }},
	{"nearcache_load_flights_total", "Keys fetched by a flight this cache started.", func(s *tiered.Stats) uint64 { return s.Loads.Flights }},
	{"nearcache_load_coalesced_total", "Callers served by a flight another caller started.", func(s *tiered.Stats) uint64 { return s.Loads.Coalesced }},
	{"nearcache_loader_calls_total", "Calls of a Loader or BatchLoader.", func(s *tiered.Stats) uint64 { return s.Loads.LoaderCalls }},
	{"nearcache_loader_keys_total", "Keys passed to loader calls.", func(s *tiered.Stats) uint64 { return s.Loads.LoadedKeys }},
	{"nearcache_loader_errors_total", "Loader calls that failed (not-found results excluded).", func(s *tiered.Stats) uint64 { return s.Loads.LoaderErrors }},
	{"nearcache_loader_panics_total", "Loader panics turned into errors.", func(s *tiered.Stats) uint64 { return s.Loads.Panics }},
	{"nearcache_stale_served_total", "Stale values served by fail-safe instead of an error.", func(s *tiered.Stats) uint64 { return s.Loads.StaleServed }},
	{"nearcache_stale_served_soft_timeout_total", "Stale values served because the loader was still running after the soft timeout.", func(s *tiered.Stats) uint64 { return s.Loads.StaleServedSoftTimeout }},
	{"nearcache_negative_cached_total", "Not-found results cached.", func(s *tiered.Stats) uint64 { return s.Loads.NegativeCached }},
	{"nearcache_decode_errors_total", "Values read from Redis that were corrupt or did not decode (reloaded).", func(s *tiered.Stats) uint64 { return s.Loads.DecodeErrors }},
	{"nearcache_encode_errors_total", "Values the codec could not encode (kept out of Redis).", func(s *tiered.Stats) uint64 { return s.Loads.EncodeErrors }},
	{"nearcache_load_conflicts_total", "Loaded values not kept because a newer write or delete won.", func(s *tiered.Stats) uint64 { return s.Loads.Conflicts }},
	{"nearcache_load_tag_misses_total", "Values read from Redis not served because a tag of theirs was invalidated.", func(s *tiered.Stats) uint64 { return s.Loads.TagMisses }},
	{"nearcache_refresh_started_total", "Refresh-ahead refreshes started by a hit past the refresh threshold.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.Started }},
	{"nearcache_refresh_from_redis_total", "Refreshes that took a fresher value another instance had stored.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.FromRedis }},
	{"nearcache_refresh_from_loader_total", "Refreshes that called the loader and stored its value.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.FromLoader }},
	{"nearcache_refresh_skipped_total", "Refreshes left to another instance holding the key's claim.", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.Skipped }},
	{"nearcache_refresh_failed_total", "Refreshes whose loader or Redis failed (the old value is kept).", func(s *tiered.Stats) uint64 { return s.Loads.Refreshes.Failed }},
	{"nearcache_claims_won_total", "Loads run holding the key's fleet-wide claim.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.Won }},
	{"nearcache_claims_waited_total", "Loads that found the key's claim held by another instance and waited.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.Waited }},
	{"nearcache_claims_from_other_total", "Loads that took the value another instance loaded under its claim.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.FromOther }},
	{"nearcache_claims_expired_total", "Loads that took over a claim whose owner ended without a value in Redis or stopped renewing it.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.Expired }},
	{"nearcache_claims_wait_bound_total", "Loads that waited LoadClaimWait and loaded by themselves.", func(s *tiered.Stats) uint64 { return s.Loads.Claims.WaitBound }},

	// The invalidation stream.
	{"nearcache_invalidation_published_total", "Invalidation messages published.", func(s *tiered.Stats) uint64 { return s.Invalidation.Published }},
	{"nearcache_invalidation_received_total", "Invalidation payloads read from the subscription.", func(s *tiered.Stats) uint64 { return s.Invalidation.Received }},
	{"nearcache_invalidation_applied_total", "Invalidation messages from other instances applied to L1.", func(s *tiered.Stats) uint64 { return s.Invalidation.Applied }},
	{"nearcache_invalidation_own_total", "This instance's own invalidation messages seen.", func(s *tiered.Stats) uint64 { return s.Invalidation.Own }},
	{"nearcache_invalidation_duplicates_total", "Redis Cluster: further copies of a message already seen.", func(s *tiered.Stats) uint64 { return s.Invalidation.Duplicates }},
	{"nearcache_invalidation_dropped_total", "Invalidation messages dropped because the receive queue was full.", func(s *tiered.Stats) uint64 { return s.Invalidation.Dropped }},
	{"nearcache_invalidation_gaps_total", "Sequence gaps detected (lost messages).", func(s *tiered.Stats) uint64 { return s.Invalidation.Gaps }},
	{"nearcache_invalidation_seq_resets_total", "Sequences that went backwards or vanished.", func(s *tiered.Stats) uint64 { return s.Invalidation.SeqResets }},
	{"nearcache_invalidation_lost_tails_total", "Partitions found behind Redis by anti-entropy.", func(s *tiered.Stats) uint64 { return s.Invalidation.LostTails }},
	{"nearcache_invalidation_disconnects_total", "Subscription failures.", func(s *tiered.Stats) uint64 { return s.Invalidation.Disconnects }},
	{"nearcache_invalidation_reconnects_total", "Subscriptions confirmed again after a failure or stall.", func(s *tiered.Stats) uint64 { return s.Invalidation.Reconnects }},
	{"nearcache_invalidation_reroutes_total", "Subscriptions moved to the server the commands go to (failover, restart).", func(s *tiered.Stats) uint64 { return s.Invalidation.Reroutes }},
	{"nearcache_invalidation_stalls_total", "Subscription pings left unanswered (black-holed connection).", func(s *tiered.Stats) uint64 { return s.Invalidation.Stalls }},
	{"nearcache_invalidation_decode_rejects_total", "Malformed invalidation messages.", func(s *tiered.Stats) uint64 { return s.Invalidation.DecodeRejects }},
	{"nearcache_invalidation_auth_rejects_total", "Unsigned or forged invalidation messages.", func(s *tiered.Stats) uint64 { return s.Invalidation.AuthRejects }},
	{"nearcache_invalidation_anti_entropy_rounds_total", "Anti-entropy rounds completed.", func(s *tiered.Stats) uint64 { return s.Invalidation.AERounds }},
	{"nearcache_invalidation_anti_entropy_errors_total", "Anti-entropy rounds that failed to read Redis.", func(s *tiered.Stats) uint64 { return s.Invalidation.AEErrors }},
}

// gauges are the plain gauges.
var gauges = [...]gauge{
	{"nearcache_l1_entries", "Entries held in L1 (approximate while fills are buffered).", func(s *tiered.Stats) float64 { return float64(s.L1.Entries) }},
	{"nearcache_l1_cost", "L1 capacity in use: entries, or bytes when sized in bytes.", func(s *tiered.Stats) float64 { return float64(s.L1.Cost) }},
	{"nearcache_l1_max_cost", "L1 capacity: entries, or bytes when sized in bytes.", func(s *tiered.Stats) float64 { return float64(s.L1.MaxCost) }},
}

// descs are a Collector's Descs, created once by NewCollector.
type descs struct {
	counters [len(counters)]*prometheus.Desc
	gauges   [len(gauges)]*prometheus.Desc

	breakerState     *prometheus.Desc // labels: cache, state
	repairs          *prometheus.Desc // labels: cache, cause
	healthy          *prometheus.Desc
	reasons          *prometheus.Desc // labels: cache, reason
	unhealthySeconds *prometheus.Desc
	roundTrip        *prometheus.Desc
	loadDuration     *prometheus.Desc
	lag              *prometheus.Desc
}

func newDescs() descs {
	cache := []string{labelCache}
	var d descs
	for i, m := range counters {
		d.counters[i] = prometheus.NewDesc(m.name, m.help, cache, nil)
	}
	for i, m := range gauges {
		d.gauges[i] = prometheus.NewDesc(m.name, m.help, cache, nil)
	}
	d.breakerState = prometheus.NewDesc("nearcache_breaker_state",
		"State of the circuit breaker in front of Redis: 1 for the current state (closed, open, half-open), 0 for the others.",
		[]string{labelCache, labelState}, nil)
	d.repairs = prometheus.NewDesc("nearcache_invalidation_repairs_total",
		"Whole-L1 drops by cause: clear by another instance, or a repair of a detected loss.",
		[]string{labelCache, labelCause}, nil)
	d.healthy = prometheus.NewDesc("nearcache_invalidation_healthy",
		"1 while the invalidation stream is healthy, 0 while local copies may miss invalidations.",
		cache, nil)
	d.reasons = prometheus.NewDesc("nearcache_invalidation_unhealthy_reasons",
		"1 for each reason the invalidation stream is unhealthy now, 0 for the others.",
		[]string{labelCache, labelReason}, nil)
	d.unhealthySeconds = prometheus.NewDesc("nearcache_invalidation_unhealthy_seconds",
		"Seconds since the invalidation stream became unhealthy, 0 while healthy.",
		cache, nil)
	d.roundTrip = prometheus.NewDesc("nearcache_redis_round_trip_seconds",
		"Duration of Redis round trips (one per operation or batch).",
		cache, nil)
	d.loadDuration = prometheus.NewDesc("nearcache_load_duration_seconds",
		"Duration of loader calls (Loader or BatchLoader).",
		cache, nil)
	d.lag = prometheus.NewDesc("nearcache_invalidation_lag_seconds",
		"Propagation delay of invalidation messages, from the publisher's clock to this instance's.",
		cache, nil)
	return d
}

// all lists every Desc.
func (d *descs) all() []*prometheus.Desc {
	out := make([]*prometheus.Desc, 0, len(d.counters)+len(d.gauges)+8)
	out = append(out, d.counters[:]...)
	out = append(out, d.gauges[:]...)
	return append(out, d.breakerState, d.repairs, d.healthy, d.reasons, d.unhealthySeconds,
		d.roundTrip, d.loadDuration, d.lag)
}
