// Package nearcacheotel exports nearcache caches to OpenTelemetry: metrics
// read from their Stats, and spans and a load-duration histogram from their
// Observer hooks. Its directory is contrib/otel; import it under its package
// name, nearcacheotel, so that it reads apart from OpenTelemetry's own
// otel package:
//
//	import (
//		"go.opentelemetry.io/otel"
//
//		nearcacheotel "github.com/nearcache/nearcache/contrib/otel"
//	)
//
//	users, err := tiered.New(tiered.Config[User]{
//		Redis:     rdb,
//		Namespace: "users",
//		Observer:  nearcacheotel.NewObserver(), // spans and nearcache.load.duration
//	})
//	reg, err := nearcacheotel.RegisterMetrics(otel.GetMeterProvider(), users) // any *tiered.Cache[V]
//	defer reg.Unregister()
//
// It is a module of its own, so the core module does not depend on
// OpenTelemetry. It depends on the API only (otel, otel/metric,
// otel/trace): the SDK and exporters are the application's choice.
//
// # Metrics
//
// [RegisterMetrics] creates asynchronous instruments and one callback. At
// each collection the callback calls Stats once per cache
// ([tiered.StatsSource], which every *tiered.Cache[V] satisfies) and
// observes every instrument from that one snapshot; it does no I/O (Stats
// reads atomic counters) and keeps no state of its own, so it is never on a
// cache's read or write path. [Registration.Add] and [Registration.Remove]
// change the set of caches read while collections go on, and
// [Registration.Unregister] removes the callback. Two caches with one
// namespace would make the same time series: they are refused
// ([ErrDuplicateNamespace]).
//
// Every measurement has the attribute nearcache.cache ([CacheKey]), the
// cache's namespace; no attribute holds a key. The other attributes,
// nearcache.cause ([CauseKey]), nearcache.state ([StateKey]),
// nearcache.reason ([ReasonKey]) and nearcache.quantile ([QuantileKey]),
// take a few fixed values; those of the first three are all observed at
// every collection (so that a series at 0 exists before its first 1).
// Counts are cumulative since the cache was created, durations are in
// seconds, and there are no ratios: compute them in the backend. A cache without Redis (L1-only)
// exports its L2 and invalidation counts too, as zeros (the breaker
// closed, the stream healthy).
//
// Cumulative counts, Int64ObservableCounter:
//
//	nearcache.l1.hits                           {hit}         lookups answered by L1
//	nearcache.l1.misses                         {miss}        L1 lookups without a usable entry
//	nearcache.l1.stale_misses                   {miss}        of which on an entry overtaken by an invalidation
//	nearcache.l1.expired_misses                 {miss}        of which on an entry past its local TTL
//	nearcache.l1.collision_misses               {miss}        of which on another key's entry (hash collision)
//	nearcache.l1.fills                          {fill}        values handed to the L1 store
//	nearcache.l1.fills_refused                  {fill}        fills refused: the key was invalidated meanwhile
//	nearcache.l1.sets_dropped                   {fill}        fills dropped: the store's set buffer was full
//	nearcache.l1.sets_rejected                  {entry}       new entries rejected by the admission policy
//	nearcache.l1.evictions                      {entry}       entries evicted to make room
//	nearcache.l1.invalidations                  {key}         keys invalidated in L1
//	nearcache.l1.epoch_bumps                    {drop}        whole-L1 drops
//	nearcache.l2.lookups                        {key}         keys looked up in Redis on L1 misses
//	nearcache.l2.hits                           {key}         of which found fresh and decodable
//	nearcache.l2.errors                         {operation}   Redis operations this cache saw fail
//	nearcache.l2.skipped                        {operation}   Redis operations skipped by the open breaker
//	nearcache.breaker.opens                     {open}        times the circuit breaker opened
//	nearcache.redis.hits                        {key}         keys read from Redis and found
//	nearcache.redis.misses                      {key}         keys read from Redis and not found
//	nearcache.redis.sets                        {key}         keys written
//	nearcache.redis.deletes                     {key}         key deletes requested
//	nearcache.redis.notifications               {message}     invalidation notifications published by writes
//	nearcache.redis.errors                      {operation}   failed Redis operations
//	nearcache.redis.timeouts                    {operation}   of which timed out
//	nearcache.redis.corrupt_values              {value}       values that were not a valid envelope
//	nearcache.redis.too_large_values            {value}       values over the maximum value size
//	nearcache.redis.stale_writes_refused        {key}         versioned writes refused (a newer version held)
//	nearcache.redis.round_trips                 {round_trip}  Redis round trips (one per operation or batch)
//	nearcache.load.callers                      {call}        calls that missed L1 and waited for a flight
//	nearcache.load.flights                      {key}         keys fetched by a flight this cache started
//	nearcache.load.coalesced                    {call}        callers served by another caller's flight
//	nearcache.load.calls                        {call}        Loader or BatchLoader calls
//	nearcache.load.keys                         {key}         keys passed to them
//	nearcache.load.errors                       {call}        of the calls, failed (not found excluded)
//	nearcache.load.panics                       {panic}       loader panics turned into errors
//	nearcache.load.stale_served                 {value}       stale values served by fail-safe
//	nearcache.load.stale_served_soft_timeout    {value}       stale values served by the soft timeout
//	nearcache.load.negative_cached              {key}         not-found results cached
//	nearcache.load.decode_errors                {value}       Redis values that did not decode (reloaded)
//	nearcache.load.encode_errors                {value}       values the codec could not encode
//	nearcache.load.conflicts                    {value}       loaded values not kept: a newer write won
//	nearcache.load.tag_misses                   {value}       values read from Redis whose tag was invalidated
//	nearcache.refresh.started                   {refresh}     refresh-ahead refreshes started
//	nearcache.refresh.from_redis                {refresh}     refreshes that took a fresher Redis value
//	nearcache.refresh.from_loader               {refresh}     refreshes that called the loader
//	nearcache.refresh.skipped                   {refresh}     refreshes left to the instance with the claim
//	nearcache.refresh.failed                    {refresh}     refreshes that failed (old value kept)
//	nearcache.claim.won                         {load}        loads run holding the key's fleet-wide claim
//	nearcache.claim.waited                      {load}        loads that waited for another instance's claim
//	nearcache.claim.from_other                  {load}        values taken from another instance's claimed load
//	nearcache.claim.expired                     {load}        claims taken over: owner stored nothing, or died
//	nearcache.claim.wait_bound                  {load}        waits that reached LoadClaimWait
//	nearcache.invalidation.published            {message}     invalidation messages published
//	nearcache.invalidation.received             {message}     payloads read from the subscription
//	nearcache.invalidation.applied              {message}     other instances' messages applied
//	nearcache.invalidation.own                  {message}     own messages seen
//	nearcache.invalidation.duplicates           {message}     Redis Cluster: further copies of a message
//	nearcache.invalidation.dropped              {message}     messages dropped: receive queue full
//	nearcache.invalidation.gaps                 {gap}         sequence gaps (lost messages)
//	nearcache.invalidation.seq_resets           {reset}       sequences that went backwards or vanished
//	nearcache.invalidation.lost_tails           {partition}   partitions found behind Redis by anti-entropy
//	nearcache.invalidation.disconnects          {disconnect}  subscription failures
//	nearcache.invalidation.reconnects           {reconnect}   subscriptions confirmed again
//	nearcache.invalidation.reroutes             {reroute}     subscriptions moved to the commands' server
//	nearcache.invalidation.stalls               {stall}       subscription pings left unanswered
//	nearcache.invalidation.decode_rejects       {message}     malformed messages
//	nearcache.invalidation.auth_rejects         {message}     unsigned or forged messages
//	nearcache.invalidation.anti_entropy_rounds  {round}       anti-entropy rounds completed
//	nearcache.invalidation.anti_entropy_errors  {round}       anti-entropy rounds that failed
//	nearcache.invalidation.repairs              {repair}      whole-L1 drops by nearcache.cause:
//	                                                          clear, gap, seq_reset, lost_tail, epoch,
//	                                                          server_changed, disconnect, resubscribe,
//	                                                          stall, overflow, decode
//
// Levels, additive across caches (so UpDownCounters, as OpenTelemetry's
// guidance has it for sizes and usage; Prometheus shows them as gauges),
// Int64ObservableUpDownCounter:
//
//	nearcache.l1.entries                        {entry}       entries held in L1
//	nearcache.l1.cost                           {cost}        L1 capacity in use (entries, or bytes)
//	nearcache.l1.max_cost                       {cost}        L1 capacity (entries, or bytes)
//
// States, 1 or 0, Int64ObservableGauge:
//
//	nearcache.breaker.state                     1             1 for the breaker's nearcache.state,
//	                                                          0 for the others: closed, open, half-open
//	nearcache.invalidation.healthy              1             1 while the invalidation stream is healthy
//	nearcache.invalidation.unhealthy_reason     1             1 for each nearcache.reason it is
//	                                                          not, 0 for the others: not_subscribed,
//	                                                          disconnected, stalled, overflowed,
//	                                                          anti_entropy_failing, rerouting,
//	                                                          repair_pending
//
// Durations, Float64ObservableGauge:
//
//	nearcache.invalidation.unhealthy_duration   s             time since the stream became unhealthy, 0 while healthy
//	nearcache.redis.round_trip_quantile         s             Redis round trips, by nearcache.quantile
//	nearcache.load.duration_quantile            s             loader calls, by nearcache.quantile
//	nearcache.invalidation.lag_quantile         s             invalidation propagation delay, by nearcache.quantile
//
// The three quantile gauges have the attribute nearcache.quantile
// ([QuantileKey]): "0.5", "0.9", "0.99", "0.999" and "1" (the maximum),
// over every observation since the cache was created, each the upper bound
// of a log-linear bucket (at most 12.5% above the true value); a cache has
// none before its first observation. They are gauges because the
// OpenTelemetry metric API has no asynchronous histogram: a callback
// observes single values and cannot hand over a precomputed distribution
// (such as the cumulative fixed buckets in Stats, which the Prometheus
// exporter turns into histograms), and a histogram instrument needs each
// duration as it happens, which the core hands out for loads (through the
// Observer) but not for Redis round trips or propagation lag: those stay in
// the core's own lock-free histograms, off the hot path. Quantiles cannot
// be aggregated across caches or instances; for loads there is a true
// histogram too, recorded as each load ends by [NewObserver]'s hooks,
// Float64Histogram:
//
//	nearcache.load.duration                     s             loader calls; nearcache.cache, and error.type when
//	                                                          the loader failed; buckets from 100µs to 10s
//	                                                          (those of the core's histograms)
//
// # Traces
//
// [NewObserver] returns hooks for tiered.Config.Observer: a "nearcache.load"
// span per loader call, the child of the span in the ctx of the caller that
// started the load, and a "nearcache.set", "nearcache.delete" or
// "nearcache.clear" span per write that goes to Redis. Span attributes:
// nearcache.cache, nearcache.batch, nearcache.key_count,
// nearcache.not_found and nearcache.coalesced (callers that joined the load),
// and, only with [WithKeys], nearcache.keys (the first [MaxSpanKeys]). A
// failed load or write has the Error status, an exception event and
// error.type. A Cache never calls its Observer on an L1 hit, so hits cost
// nothing here.
//
// # What to alert on
//
// nearcache.invalidation.healthy == 0 for longer than a few anti-entropy
// intervals (or nearcache.invalidation.unhealthy_duration above them):
// local copies may be stale, bounded only by the unhealthy L1 TTL, and
// nearcache.invalidation.unhealthy_reason says why.
// nearcache.breaker.state{nearcache.state="open"} == 1, or a rising rate of
// nearcache.l2.errors: Redis is failing and loads go to the backend. A
// rising rate of nearcache.invalidation.repairs with a cause other than
// clear (lost messages, a Redis restart or failover), of
// nearcache.load.errors or nearcache.load.panics, and a high
// nearcache.invalidation.lag_quantile or nearcache.redis.round_trip_quantile
// round out the picture.
package nearcacheotel
