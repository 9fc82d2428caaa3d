// Package tiered is the cache users hold: a local L1 (package l1, over
// ristretto) in front of a shared Redis L2 (package l2), with coalesced loads
// and cross-instance invalidation (package invalidation).
//
//	c, err := tiered.New(tiered.Config[User]{Redis: rdb, Namespace: "users"})
//	u, err := c.GetOrLoad(ctx, "42", loadUser) // loadUser returns ErrNotFound for a missing row
//	err = c.Set(ctx, "42", u, tiered.WithVersion(u.Version)) // after the database write
//
// # Reads and writes
//
// An L1 hit is one ristretto lookup (no allocation, lock of its own or Redis
// call; no clock read but after 100 ms without reads; ctx is not looked at).
// Misses of a key share one flight: fill ticket, L2 read, [Loader],
// compare-and-set write-back, L1 fill. Each caller
// waits on its own ctx; the loader runs detached from them, bounded by
// Config.LoadTimeout and cancelled by Close, and its panic is a [*PanicError]
// for every waiter. GetMany and GetManyOrLoad batch this (one L2 round trip, one
// [BatchLoader] call) and share flights with single-key calls.
//
// TTLs come from Config (TTL, MaxL1TTL, NegativeTTL), the leading call's
// options ([WithTTL], [WithL1TTL], [WithNegativeTTL]), or the loaded value
// itself: a loader calls [SetTTL], [SetKeyTTL] or [SetL1TTL] with its ctx
// (a token cached until it expires; <= 0: returned, stored nowhere), which
// overrides the options for what it returns.
//
// Set, SetMany, Delete and DeleteMany write Redis and publish the invalidation
// in one atomic script per partition (on Redis Cluster, a batch's partitions
// succeed or fail apart), then drop the writer's L1 copies; Delete leaves a
// short-lived tombstone. With Config.WriteBatchWindow, writes that overlap
// share one script and one message, each still acknowledged only once its
// script returned. [WithVersion] refuses a write not newer than
// the stored version ([ErrStale]). SetMany of a value encoded above
// Config.MaxValueSize fails before any I/O (l2.ErrTooLarge); such a loaded value
// stays in this instance's L1 only. Clear removes the namespace's keys (never
// FLUSHDB) and empties every instance's L1. A write whose ctx has ended does
// nothing and returns an error that errors.Is the ctx's error. A write that got
// no answer from Redis is in doubt: if its script runs within a minute, the
// writer still drops the copy it read back meanwhile.
//
// A program that changes the data without a Cache (another service, a
// migration, a change-data-capture follower) invalidates every instance's
// copies with an [Invalidator]: [Invalidator.Delete] after a database
// change, [Invalidator.Invalidate] after writing Redis itself,
// [Invalidator.InvalidateAll] after a bulk change, [Invalidator.InvalidateTags]
// after a change to what tags group. Programs in other languages follow the
// wire contract in docs/WIRE.md of the repository.
//
// Tags ([WithTags], or [SetTags] and [SetKeyTags] in a loader) group
// entries: [Cache.InvalidateTag] makes every entry carrying the tag a miss on
// this instance when it returns, on every other instance within the
// propagation bound, and in Redis, for one write and one message. A value
// made before the call (a write begun, or a loader started or SetTags
// called, before it) is never served after that, wherever it is stored; a
// value made while it runs may be a miss too.
//
// With Config.RefreshAhead, a GetOrLoad or GetManyOrLoad that finds an L1 value
// past that fraction of its TTL returns it and starts one background refresh:
// a fresher value in Redis is taken, else the one instance holding the key's
// claim in Redis calls the loader, and the result is written back like any
// load (compare-and-set, invalidation).
//
// # Consistency contract
//
//   - Once a write's or delete's invalidation is delivered (well under 2 ms on a
//     healthy network, given a free CPU), no instance serves the old value. The
//     writing instance reads its own writes.
//   - A load that raced with a write or delete is returned to its callers but
//     kept neither in L1 nor in Redis.
//   - A lost message, a dropped or black-holed subscription, a Redis restart,
//     flush or failover is repaired (every L1 entry dropped at O(1) cost) within
//     about 1.5 × Config.AntiEntropyInterval (2 s by default). Copies filled
//     while the stream is unhealthy live at most Config.UnhealthyL1TTL; with
//     every detector failing, at most Config.MaxL1TTL.
//   - After writes stop, every instance's L1 agrees with Redis.
//
// # Degradation and concurrency
//
// Each Redis call of a read or a write is bounded by Config.RedisTimeout (Clear
// by its ctx only). After Config.BreakerFailures consecutive connection failures
// (a caller's ctx ending is none) a circuit breaker skips Redis: L1 serves,
// misses go to the loader, writes fail with [ErrUnavailable]. Fail-safe serves a
// stale value read from Redis when the loader fails; while Redis is down the
// loader's error is returned. With Config.SoftTimeout, fail-safe also serves it
// when the loader is slow: once the loader has run that long, its callers (and
// those that join its flight later) get the stale value, while the load goes
// on and stores its value as usual when it returns, unless a write overtook
// it; such serves are counted and reported to Config.Observer, never logged.
// Corrupt values in Redis are reloaded. Config.Logger gets repeated failures
// once per episode (when it starts and ends, with counts), breaker changes and
// loader panics once per event.
//
// # Observability
//
// Stats reads every tier's counters without I/O: cumulative counts, latency
// percentiles and fixed-bucket histograms (Redis round trips, loader calls,
// invalidation lag), the breaker's state and the invalidation stream's health
// with its reasons. Any *Cache[V] is a [StatsSource], which exporters read at
// scrape time (the contrib/prometheus and contrib/otel modules). Config.Observer
// hears loads, writes, invalidations, repairs, breaker changes, stale values
// served and refreshes, off the L1-hit path; a panic in one of its callbacks is recovered
// and logged, never the Cache's failure. [SlogLogger] routes Config.Logger
// to a log/slog handler.
//
// A Cache is safe for concurrent use; Caches on one Config.Redis share one
// invalidation transport (a pub/sub connection per server). Build Config.Redis
// with ContextTimeoutEnabled; New refuses one that may read from a replica
// ([ErrReplicaRouting]) and a redis.Ring, and succeeds while Redis is down.
// Close is idempotent, never closes Config.Redis, and returns within
// invalidation.CloseWait (2 s) for the bus plus LoadTimeout (and a grace) for
// running loads, with an error naming whatever outlived its bound.
//
// NOTE: a loader may run concurrently with itself and should honour its ctx. It
// must not call GetOrLoad or GetManyOrLoad of the same Cache for a key it is
// loading: that call joins its own flight and waits until LoadTimeout. A
// Codec must not call its Cache at all: on context.Background such a call
// waits for the flight its own goroutine runs, without end.
//
// NOTE: a call that joins a flight another call started gets that flight's
// result, loaded with the other call's loader and options (WithTTL, WithL1TTL,
// WithNegativeTTL, and the TTLs that loader sets); its own are not used.
//
// NOTE: a caller whose ctx cannot end (context.Background) runs its flight's L2
// read itself, bounded by RedisTimeout and LoadTimeout, whichever is shorter;
// with RedisTimeout < 0 only the client's read timeout bounds that read, and
// the caller and its followers may wait past LoadTimeout.
//
// NOTE: values are shared: do not mutate a value the Cache returned. Expiries
// come from the writer's clock: instances' clocks must agree within a few ms.
//
// The design reasoning is in docs/DESIGN.md of the repository.
package tiered
