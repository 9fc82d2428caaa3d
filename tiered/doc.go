// Package tiered is the cache users hold: a two-tier near cache with a local
// L1 (package l1, over ristretto) in front of a shared Redis L2 (package l2),
// coalesced loads, and cross-instance invalidation (package invalidation).
//
//	c, err := tiered.New(tiered.Config[User]{Redis: rdb, Namespace: "users"})
//	u, err := c.GetOrLoad(ctx, "42", func(ctx context.Context, id string) (User, error) {
//		return db.LoadUser(ctx, id) // return tiered.ErrNotFound for a missing row
//	})
//	err = c.Set(ctx, "42", u, tiered.WithVersion(u.Version)) // after updating the database
//	err = c.Delete(ctx, "42") // after deleting the row
//
// # Read path
//
// GetOrLoad looks in L1 first: a hit costs one ristretto lookup plus a few
// atomic loads, with no allocation, lock, clock read or Redis call. On a
// miss, concurrent callers for the key share one flight (x/sync
// singleflight): each caller waits on its own ctx, while the shared work runs
// on a context detached from every caller, bounded by Config.LoadTimeout and
// cancelled by Close. A loader panic becomes a *PanicError for every waiter
// (errors.As): it keeps the panic value and stack, and unwraps a value that
// is an error.
// One exception saves the goroutine hand-off (about a fifth of an L2 hit on
// a small machine): a caller whose ctx can never end (ctx.Done() is nil, as
// for context.Background), which has nothing to leave on, runs the flight it
// leads on its own goroutine up to the loader: the ticket, the L2 read
// (bounded by Config.RedisTimeout, which needs a client built with
// ContextTimeoutEnabled; with any other client this exception is off) and
// the fill. A loader call is always handed to a goroutine of its own, so no
// caller waits for a flight past LoadTimeout from its start. Followers of
// either kind of flight wait on their own ctx.
// The flight takes an L1 fill ticket, reads L2 (one GET), and on an L2 miss
// calls the loader, writes the result back to L2, then fills L1 through the
// ticket. The write-back is a compare-and-set against what the flight read.
// Unlike the architecture's first sketch, a write-back into an absent key or
// over a tombstone publishes no invalidation: no instance can hold a copy
// there that a published write has not already invalidated, so a message
// would only make other instances drop current copies and read them again.
// Write-backs over a stale, expired or corrupt value are announced. A
// loaded value whose encoded form exceeds Config.MaxValueSize is left out
// of the write-back, alone (the rest of its batch is written), counted in
// Stats().L2.Store.TooLarge and logged once per write-back; it is returned
// and kept in this instance's L1 only, so every other instance loads it
// itself.
//
// GetMany and GetManyOrLoad do the same for batches: L1 first, every L1 miss
// in one L2 round trip, every L2 miss in one BatchLoader call, one pipelined
// L2 write. A key already being loaded by another call is joined, and a
// single-key caller joins a key a batch is loading. A batch settles every key
// it leads itself, on one goroutine (not one per key), which is the caller's
// own when its ctx can never end, as above.
//
// # Write path
//
// Set, SetMany and Delete run one Lua script per Redis partition that writes
// (or deletes) the keys, advances the partition's sequence number and
// publishes the invalidation carrying it: a write is never acknowledged
// without its invalidation, and never published without the write. The
// writer then drops its own L1 copies, so it reads its own writes. Delete
// leaves a short-lived tombstone (Config.LoadTimeout plus a margin) instead
// of an absent key. A value above Config.MaxValueSize fails SetMany before
// any I/O, with an error wrapping l2.ErrTooLarge that names the key and the
// limit; otherwise each partition's script writes all of its keys (but for
// those a newer version refuses) or none, and on Redis Cluster one
// partition's script can fail while another's ran. Clear removes the
// namespace's keys in batches (SCAN, then a script that unlinks a batch and
// publishes its invalidation; never FLUSHDB) and makes every instance drop
// its whole L1.
//
// WithVersion makes Set, SetMany and DeleteMany versioned: the script keeps
// the version in the envelope (a delete, in a tombstone that lives for the
// TTL) and refuses a write whose version is not newer, with ErrStale and no
// invalidation, so two writers racing on a key end with the newer version
// everywhere. A load's write-back over a versioned value keeps its version.
//
// A write that fails without an answer from Redis (RedisTimeout, a broken
// connection, the caller's ctx ending mid-call) is in doubt: its script may
// still run later. The writer remembers the write's keys for a minute and
// applies its own invalidation messages for them (it ignores its own
// messages otherwise), so a copy it refilled meanwhile is dropped when the
// late script publishes; Clear removes each batch of keys in a script that
// publishes the batch's invalidation, so a late batch is heard too. A script
// held up longer than that means a stalled server, which the invalidation
// stream reports by itself.
//
// A write (Set, SetMany, Delete, DeleteMany, Clear) whose ctx has already
// ended does nothing and returns an error that errors.Is the ctx's error. A
// read served from L1 does no I/O and does not look at ctx; a read that
// misses waits on ctx. A caller's ctx ending a Redis call never counts
// against the circuit breaker (a half-open probe it held is released at
// once); the Cache's own deadlines (RedisTimeout, and LoadTimeout for a
// flight's Redis calls) do.
//
// # What Config.Redis must be
//
// Every read the contract rests on (the L2 read after a fill ticket,
// anti-entropy's sequence and epoch keys) must reach the master, so New
// refuses, with [ErrReplicaRouting], a client that may read from replicas:
// Cluster options ReadOnly, RouteByLatency or RouteRandomly (also what
// NewFailoverClusterClient builds), and a client whose server answers ROLE
// as a replica (a replica's address, FailoverOptions.ReplicaOnly). ROLE is
// asked once in New, bounded by StartTimeout (at most 2 s) or the client's
// ReadTimeout; a client with no timeout at all is not asked. A redis.Ring is
// refused too. Give the Cache a client of its own if the rest of the
// service reads from replicas. Namespaces may not contain ':' (it separates
// namespace from key, so "a" with key "b:c" and "a:b" with key "c" would
// share a Redis key but not a channel), '{' or '}'.
//
// # Consistency contract
//
//   - No resurrection: after Delete (or Set) returns on any instance, no
//     instance serves the old value once the invalidation has been delivered
//     (on a healthy loopback network, well under 2 ms at p99).
//   - Read-your-writes on the writing instance, always.
//   - Bounded staleness under faults: a lost message (sequence gap), a
//     dropped or black-holed subscription, a Redis restart or failover is
//     detected and repaired (every L1 entry dropped at O(1) cost) within
//     about 1.5 × Config.AntiEntropyInterval (default: within 2 s). While the
//     stream is unhealthy, L1 keeps values at most Config.UnhealthyL1TTL. With
//     every detector failing, a value lives in L1 at most Config.MaxL1TTL.
//     After a Sentinel failover, the invalidation subscription (which
//     go-redis would leave on the old master for about 10 s) is moved to
//     the new master within about 250 ms (invalidation.Config.RouteCheckInterval).
//   - Convergence: after writes stop, every instance's L1 agrees with L2.
//
// Two mechanisms make this hold for loads that race with writes, the race
// other near caches leave open. First, the L1 fill guard: a load takes a
// ticket (the key's generation and the L1 epoch) before it reads L2, and the
// fill is refused, or the entry never served, if an invalidation came in
// between. Second, compare-and-set in L2: a loaded value is written only if
// the key still holds exactly what the load read (absent, a stale or corrupt
// value, or a tombstone), so a load that began before a write or a delete
// cannot overwrite it; the loaded value is then returned to its callers but
// not kept.
//
// # Degradation
//
// Every Redis operation is bounded by Config.RedisTimeout. A circuit breaker
// skips Redis after Config.BreakerFailures consecutive connection failures,
// for Config.BreakerCooldown, then probes. While Redis is unusable, L1 keeps
// serving, misses go to the loader, and writes fail with ErrUnavailable
// (their invalidation could not be published). With Config.FailSafeMaxStale,
// values stay in Redis past their TTL and are served (counted in
// Stats().Loads.StaleServed) when the loader fails and Redis still holds
// one; nothing stale is served while Redis is unreachable. Corrupt or
// undecodable values in Redis are counted and reloaded, never a panic. If
// Redis is down when New runs, the Cache still works and recovers when Redis
// returns.
//
// # Concurrency
//
// A Cache is safe for concurrent use. It owns its goroutines (the
// invalidation subscriber and worker, anti-entropy, running loads); Close
// stops them, waits, and is idempotent. Close never closes the Redis client
// passed in Config.
//
// NOTE: a Loader must be safe to call concurrently for different keys, and
// should honour its ctx: when it does not, Close waits up to LoadTimeout.
//
// NOTE: a loader must not call the same Cache for the key it is loading: the
// call joins the loader's own flight and waits for itself until LoadTimeout.
//
// NOTE: per-call options (WithTTL, WithL1TTL, WithNegativeTTL) apply to the
// flight the call starts; a call that joins another caller's flight gets
// that flight's result, loaded with that caller's options.
//
// NOTE: expiries in Redis envelopes come from the writer's clock;
// instances' clocks are assumed to agree within a few milliseconds.
//
// NOTE: L1 values are shared between callers: do not mutate a value (for
// example a slice or map inside V) returned by the Cache.
package tiered
