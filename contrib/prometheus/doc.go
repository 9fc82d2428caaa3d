// Package nearcacheprom exports the Stats of nearcache caches as Prometheus
// metrics. Its directory is contrib/prometheus; import it under its package
// name, nearcacheprom, so that it does not clash with client_golang's
// prometheus package:
//
//	import (
//		"github.com/prometheus/client_golang/prometheus"
//		"github.com/prometheus/client_golang/prometheus/promhttp"
//
//		nearcacheprom "github.com/nearcache/nearcache/contrib/prometheus"
//	)
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(nearcacheprom.NewCollector(users, products)) // any *tiered.Cache[V]
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// It is a module of its own, so the core module does not depend on
// client_golang.
//
// # Contract
//
// A [Collector] is pull-based: it holds no counters of its own and is never
// on a cache's read or write path. At each scrape, Collect calls Stats once
// per cache ([tiered.StatsSource], which every *tiered.Cache[V] satisfies)
// and turns the snapshot into constant metrics; it does no I/O (Stats reads
// counters in memory). Every series has a cache label, the cache's namespace;
// no label holds a key, and the other labels take a few fixed values.
// Counters are cumulative since the cache was created, durations are in
// seconds, and there are no ratios: compute them in PromQL.
//
// The Collector is safe for concurrent use: [Collector.Add] and
// [Collector.Remove] change the set of caches read while scrapes go on.
// Describe sends a fixed set of Descs, so a registry checks the Collector
// once at registration. Two caches with one namespace would make the same
// series: Add refuses the second ([ErrDuplicateNamespace]), and a Collector
// that NewCollector was given such caches cannot be registered (see
// [NewCollector]). Register one Collector per registry (a second one on the
// same registry collides with the first) and give it every cache, or wrap
// the registerer with prometheus.WrapRegistererWith to tell them apart.
//
// A cache without Redis (L1-only) exports its L2 and invalidation metrics
// too, as zeros (the breaker closed, the stream healthy), so dashboards and
// rules need no special case.
//
// # Metrics
//
// Every metric has the label cache. Counters:
//
//	nearcache_l1_hits_total                          lookups answered by L1
//	nearcache_l1_misses_total                        L1 lookups without a usable entry
//	nearcache_l1_stale_misses_total                  of which on an entry overtaken by an invalidation
//	nearcache_l1_expired_misses_total                of which on an entry past its local TTL
//	nearcache_l1_collision_misses_total              of which on another key's entry (hash collision)
//	nearcache_l1_fills_total                         values handed to the L1 store
//	nearcache_l1_fills_refused_total                 fills refused: the key was invalidated meanwhile
//	nearcache_l1_sets_dropped_total                  fills dropped: the store's set buffer was full
//	nearcache_l1_sets_rejected_total                 new entries rejected by the admission policy
//	nearcache_l1_evictions_total                     entries evicted to make room
//	nearcache_l1_invalidations_total                 keys invalidated in L1
//	nearcache_l1_epoch_bumps_total                   whole-L1 drops
//	nearcache_l2_lookups_total                       keys looked up in Redis on L1 misses
//	nearcache_l2_hits_total                          of which found fresh and decodable
//	nearcache_l2_errors_total                        Redis operations this cache saw fail
//	nearcache_l2_skipped_total                       Redis operations skipped by the open breaker
//	nearcache_breaker_opens_total                    times the circuit breaker opened
//	nearcache_redis_hits_total                       keys read from Redis and found
//	nearcache_redis_misses_total                     keys read from Redis and not found
//	nearcache_redis_sets_total                       keys written
//	nearcache_redis_deletes_total                    key deletes requested
//	nearcache_redis_notifications_total              invalidation notifications published by writes
//	nearcache_redis_errors_total                     failed Redis operations
//	nearcache_redis_timeouts_total                   of which timed out
//	nearcache_redis_corrupt_values_total             values that were not a valid envelope
//	nearcache_redis_too_large_values_total           values over the maximum value size
//	nearcache_redis_stale_writes_refused_total       versioned writes refused (a newer version held)
//	nearcache_load_callers_total                     calls that missed L1 and waited for a flight
//	nearcache_load_flights_total                     keys fetched by a flight this cache started
//	nearcache_load_coalesced_total                   callers served by another caller's flight
//	nearcache_loader_calls_total                     Loader or BatchLoader calls
//	nearcache_loader_keys_total                      keys passed to them
//	nearcache_loader_errors_total                    of the calls, failed (not found excluded)
//	nearcache_loader_panics_total                    loader panics turned into errors
//	nearcache_stale_served_total                     stale values served by fail-safe
//	nearcache_stale_served_soft_timeout_total        stale values served by the soft timeout
//	nearcache_negative_cached_total                  not-found results cached
//	nearcache_decode_errors_total                    Redis values that did not decode (reloaded)
//	nearcache_encode_errors_total                    values the codec could not encode
//	nearcache_load_conflicts_total                   loaded values not kept: a newer write won
//	nearcache_load_tag_misses_total                  values read from Redis whose tag was invalidated
//	nearcache_refresh_started_total                  refresh-ahead refreshes started
//	nearcache_refresh_from_redis_total               refreshes that took a fresher Redis value
//	nearcache_refresh_from_loader_total              refreshes that called the loader
//	nearcache_refresh_skipped_total                  refreshes left to the instance with the claim
//	nearcache_refresh_failed_total                   refreshes that failed (old value kept)
//	nearcache_claims_won_total                       loads run holding the key's fleet-wide claim
//	nearcache_claims_waited_total                    loads that waited for another instance's claim
//	nearcache_claims_from_other_total                values taken from another instance's claimed load
//	nearcache_claims_expired_total                   claims taken over: owner stored nothing, or died
//	nearcache_claims_wait_bound_total                waits that reached LoadClaimWait
//	nearcache_invalidation_published_total           invalidation messages published
//	nearcache_invalidation_received_total            payloads read from the subscription
//	nearcache_invalidation_applied_total             other instances' messages applied
//	nearcache_invalidation_own_total                 own messages seen
//	nearcache_invalidation_duplicates_total          Redis Cluster: further copies of a message
//	nearcache_invalidation_dropped_total             messages dropped: receive queue full
//	nearcache_invalidation_gaps_total                sequence gaps (lost messages)
//	nearcache_invalidation_seq_resets_total          sequences that went backwards or vanished
//	nearcache_invalidation_lost_tails_total          partitions found behind Redis by anti-entropy
//	nearcache_invalidation_disconnects_total         subscription failures
//	nearcache_invalidation_reconnects_total          subscriptions confirmed again
//	nearcache_invalidation_reroutes_total            subscriptions moved to the commands' server
//	nearcache_invalidation_stalls_total              subscription pings left unanswered
//	nearcache_invalidation_decode_rejects_total      malformed messages
//	nearcache_invalidation_auth_rejects_total        unsigned or forged messages
//	nearcache_invalidation_anti_entropy_rounds_total anti-entropy rounds completed
//	nearcache_invalidation_anti_entropy_errors_total anti-entropy rounds that failed
//	nearcache_invalidation_repairs_total{cause}      whole-L1 drops by cause, every cause always
//	                                                 present: clear, gap, seq_reset, lost_tail,
//	                                                 epoch, server_changed, disconnect,
//	                                                 resubscribe, stall, overflow, decode
//
// Gauges:
//
//	nearcache_l1_entries                             entries held in L1
//	nearcache_l1_cost                                L1 capacity in use (entries, or bytes)
//	nearcache_l1_max_cost                            L1 capacity (entries, or bytes)
//	nearcache_breaker_state{state}                   1 for the breaker's state, 0 for the others:
//	                                                 closed, open, half-open
//	nearcache_invalidation_healthy                   1 while the invalidation stream is healthy
//	nearcache_invalidation_unhealthy_reasons{reason} 1 for each reason it is not, 0 for the others:
//	                                                 not_subscribed, disconnected, stalled,
//	                                                 overflowed, anti_entropy_failing, rerouting,
//	                                                 repair_pending
//	nearcache_invalidation_unhealthy_seconds         seconds since it became unhealthy, 0 while healthy
//
// Histograms, with the same buckets from 100µs to 10s:
//
//	nearcache_redis_round_trip_seconds               Redis round trips (one per operation or batch)
//	nearcache_load_duration_seconds                  loader calls
//	nearcache_invalidation_lag_seconds               propagation delay of invalidation messages
//
// # What to alert on
//
// nearcache_invalidation_healthy == 0 for longer than a few anti-entropy
// intervals (or nearcache_invalidation_unhealthy_seconds above them): local
// copies may be stale, bounded only by the unhealthy L1 TTL, and the reasons
// gauge says why. nearcache_breaker_state{state="open"} == 1, or a rising
// rate of nearcache_l2_errors_total: Redis is failing and loads go to the
// backend. A rising rate of nearcache_invalidation_repairs_total with a
// cause other than clear (lost messages, a Redis restart or failover), of
// nearcache_loader_errors_total or nearcache_loader_panics_total, and a high
// quantile of nearcache_invalidation_lag_seconds or
// nearcache_redis_round_trip_seconds, round out the picture.
package nearcacheprom
