// Package invalidation is the near cache's invalidation bus: sequenced messages
// over Redis pub/sub that tell every instance which local copies to drop, and
// that detect their own loss. Redis pub/sub delivers at most once, so a [Bus]
// numbers messages per partition, watches its subscription and compares its view
// with Redis; whenever it cannot prove that nothing was lost it calls
// [Handler.InvalidateAll] (for the near cache, an O(1) epoch bump).
//
// # What the Handler gets
//
// The bus calls the [Handler] from one goroutine, in order: InvalidateKeys for
// other instances' deletes, InvalidateAll(CauseClear) for their clears, and
// InvalidateAll with another [Cause] whenever a message may have been lost:
//
//   - a partition's sequence skipped (CauseGap) or went backwards
//     (CauseSeqReset);
//   - the subscription failed or went silent (CauseDisconnect, CauseStall), and
//     again once Redis confirms it anew (CauseResubscribe); the receive queue
//     overflowed (CauseOverflow); a message did not decode (CauseDecode);
//   - every [Config.AntiEntropyInterval], anti-entropy reads the sequence keys
//     (CauseLostTail: Redis is ahead of what arrived; CauseSeqReset: behind),
//     the namespace epoch key (CauseEpoch: flush, restart without persistence,
//     eviction) and the masters' run ids (CauseServerChanged);
//   - on a *redis.Client, every [Config.RouteCheckInterval] the bus asks the
//     server behind the commands (PUBSUB NUMSUB) whether its subscription is
//     there, and moves it when it is not (CauseServerChanged), as go-redis does
//     not after a Sentinel failover.
//
// Own messages (same [InstanceID]) only advance their sequence and go to an
// [OwnHandler], if the Handler is one. [Bus.Health] is unhealthy while the
// subscription is not confirmed, while a repair is pending and while
// anti-entropy cannot read Redis; a cache shortens or skips fills meanwhile. On
// Redis Cluster the bus subscribes on every master, applies the first copy of
// each message, and counts a sequence no copy brings within a short grace as a
// gap.
//
// # Sharded pub/sub on Redis Cluster
//
// On a cluster client a bus publishes each partition's messages with SPUBLISH
// on the partition's shard channel {tag(p)}NS:inv (Redis 7), which stays on the
// master that owns the slot instead of crossing the cluster bus to every node;
// the script falls back to PUBLISH on NS:inv where Redis refuses SPUBLISH (a
// server before 7.0, an ACL without the shard channels).
// [Config.DisableShardedPubSub] keeps PUBLISH. Each master's subscription
// carries NS:inv and the shard channel of every slot the master owns (one
// SSUBSCRIBE per slot), so buses hear both kinds whatever they publish. When a
// slot moves (resharding, failover), its old master drops its shard channels
// (or refuses them with MOVED): the bus invalidates everything, looks at the
// cluster again at once, and stays unhealthy until the new owner has confirmed
// the slot's channel, whose confirmation repairs once more.
//
// # Wire contract and ACL
//
// The wire contract (channel, sequence and epoch keys, payload layout, the
// publishing scripts) is owned by package internal/wire; package l2's scripts
// and [Bus.Publish] follow it. For namespace NS the bus uses the channel NS:inv,
// the keys {tag}NS:inv:seq (one per partition) and {tag}NS:inv:epoch (one per
// master), which begin with a hash tag, so they never fall under the data prefix
// "NS:", and carry no TTL, and the route channels NS:inv:route:<instance id>.
// An ACL user needs &NS:inv, the keys (~*NS:inv:* covers them) and EVALSHA,
// EVAL, PUBLISH, GET, SET, INFO, SUBSCRIBE, UNSUBSCRIBE, PING and PUBSUB
// (CLUSTER SLOTS on Redis Cluster, and for the shard channels &{*}NS:inv,
// SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE; without them one Warn names the grant,
// the subscriptions keep NS:inv, and the bus stays unhealthy while other
// instances subscribe the shard channels, whose writes it cannot hear); the
// route check also needs &NS:inv:route:*.
// Without that grant the subscription still works, the route check turns itself
// off with one warning, and anti-entropy's run id check follows a failover.
//
// # Concurrency
//
// Every method is safe for concurrent use; [Bus.Health] is one atomic load.
// Started buses on one Redis client share one transport (see [Bus.Start]): a
// pub/sub connection per server carrying every namespace's channel, with its
// reader, the worker that calls every Handler in turn, anti-entropy, the route
// check, and on Redis Cluster a watcher of the masters. The first bus to start
// creates it; [Bus.Close] of the last stops it, waits at most [CloseWait], and
// is idempotent; a Handler is never called after its bus's Close returns. The
// bus shares the Redis client and never closes it.
//
// NOTE: without [Config.HMACKey], anyone who can PUBLISH to the channel can make
// instances drop keys, and garbage on it invalidates everything. With a key,
// unsigned payloads are counted and ignored; a replayed signed body costs extra
// invalidations, never a stale value.
//
// NOTE: tracking a partition starts with its first message: a loss before it is
// caught only by the repair of the event that caused it (a disconnect, an
// overflow).
//
// NOTE: a negative AntiEntropyInterval turns anti-entropy off, which leaves a
// lost last message, a flush or a restart to the cache's TTLs.
//
// NOTE: delivery needs a CPU: with every CPU busy, messages wait for the Go
// scheduler, tens of milliseconds (figures in docs/DESIGN.md).
//
// NOTE: propagation lag uses the publisher's clock. Own messages are told by
// instance id: never give two buses the same [Config.InstanceID].
package invalidation
