// Package invalidation is the near cache's invalidation bus: sequenced
// messages over Redis pub/sub that tell every instance which local copies to
// drop, and that detect their own loss.
//
// Redis pub/sub delivers at most once. A message published while a
// subscriber reconnects is gone, and a subscriber that falls behind is
// disconnected by the server. A [Bus] therefore numbers every message per
// partition, watches its connection, and compares its view with Redis every
// few seconds; whenever it cannot prove that nothing was lost it calls
// [Handler.InvalidateAll], which for the near cache is an O(1) epoch bump.
//
// # Message format
//
// A payload is a body followed directly by the partition's new sequence
// number in ASCII decimal (1 to 20 digits, no sign, no leading zero), which
// the publishing Lua script appends after INCR of the sequence key. The body
// (big-endian integers):
//
//	offset size
//	 0      1   magic 0xCE
//	 1      1   version (1)
//	 2      1   op: 1 delete keys, 2 clear all
//	 3      1   flags: bit 0 = signed (HMAC-SHA256 trailer)
//	 4     16   origin instance id (random 128-bit)
//	20      2   partition (hash slot on Redis Cluster, 0 otherwise)
//	22      8   publish timestamp, unix nanoseconds (for lag metrics)
//	30      4   body length in bytes, header and trailer included
//	34      4   key count (0 for clear)
//	38      …   keys: uvarint length, bytes; repeated
//	end-32 32   HMAC-SHA256(key, body without trailer), if signed
//
// The body length tells the decoder where the sequence starts. Bodies are at
// most [MaxBodySize]; [Bus.EncodeDelete] turns a larger delete into a clear.
// The reader drops a payload longer than MaxBodySize plus 20 digits before
// it is queued, and counts it as the decoder would count it (see the sharp
// edges below). The decoder checks every length against the bytes present
// before using or allocating, never panics (FuzzDecode), and rejects
// unknown versions, operations and flags. Keys are not namespace-prefixed.
//
// # Contract with l2
//
// l2 writes data keys, INCRs [Bus.SeqKey](partition) and PUBLISHes
// body..seq to [Bus.Channel] in one Lua script, with the body from
// [Bus.EncodeDelete]. The partition is the data key's hash slot on Redis
// Cluster (the sequence key carries a hash tag for that slot, tag first, so
// the script stays single-slot) and 0 on a standalone or Sentinel-managed
// Redis. The script must append the sequence with string.format('%d', seq):
// Lua's tostring switches to exponent notation at 1e14, which the decoder
// rejects. [Bus.Publish] runs the same contract for messages the bus sends
// itself (clear-all). A write is thus never visible without its message
// having been published.
//
// The bus's own keys (the sequence keys "{tag}NS:inv:seq" and the epoch
// keys "{tag}NS:inv:epoch": one on a standalone or Sentinel-managed Redis,
// one per master on Redis Cluster) start with a hash tag, so they never
// fall under the data prefix "NS:": a user key cannot collide with them,
// and clearing the namespace's data leaves them in place (they are a few
// bytes each, and other instances still track the sequences). They never
// carry a TTL.
//
// The receiving side:
//
//   - calls [Handler.InvalidateKeys] for deletes and InvalidateAll(CauseClear)
//     for clears from other instances; its own messages (same origin id)
//     advance their sequence and go only to an [OwnHandler] (a write that
//     timed out may run in Redis after the writer refilled the old value,
//     and its own message is the only thing that tells the writer);
//   - keeps the last sequence per partition: a gap means lost messages
//     (CauseGap), a smaller number means the sequence key was reset
//     (CauseSeqReset) — on a standalone or Sentinel-managed Redis; Redis
//     Cluster, where every message arrives several times, tracks
//     differently (see below);
//   - on a connection error (CauseDisconnect), an unanswered ping
//     (CauseStall), a full receive queue (CauseOverflow) or an undecodable
//     message (CauseDecode) invalidates everything at detection, and again
//     (CauseResubscribe) when Redis confirms the subscription once more;
//   - every [Config.AntiEntropyInterval] reads the sequence keys of every
//     partition that had traffic since the last round, however many, and of
//     up to 1024 quiet ones in turn (CauseSeqReset when Redis is below what
//     was applied; CauseLostTail when Redis is still ahead once every
//     message published before the read has been handled: on one server a
//     PING on the subscription after the read fences them exactly, on Redis
//     Cluster a grace of half an interval; a lost tail is repaired within
//     about one to 1.5 intervals; a message that was only slow arrives later
//     as "late" and is applied without another repair), the namespace epoch key (one
//     per master on Redis Cluster), created with SET NX (CauseEpoch when
//     missing or changed: flush, restart without persistence, eviction),
//     and the masters' run ids (CauseServerChanged: restart, failover; on a
//     standalone or Sentinel-managed Redis the subscription is also
//     replaced, unless a route check proves it is on the new server
//     already). A reset of a quiet partition's key drops nothing until a
//     message arrives there, and that message makes the next round read the
//     key;
//   - on a *redis.Client (plain or from NewFailoverClient) checks every
//     [Config.RouteCheckInterval] that the subscription is on the server
//     behind the command connections, and replaces it at once when it is
//     not (see below).
//
// [Bus.Health] is unhealthy from a detection until the subscription is
// confirmed and the repair applied (and while anti-entropy cannot read
// Redis), so a cache can shorten or skip local fills meanwhile. On Redis
// Cluster it is unhealthy while any master's subscription is.
//
// # Sentinel failover: following the server behind the client
//
// go-redis's failover client moves its command pools to the new master as
// soon as Sentinel announces +switch-master, but its PubSub keeps its
// connection (and only reconnects, through the dialer that asks Sentinel,
// when that connection fails): the subscription stays on the old master
// until Sentinel demotes it, about 10 s later, and meanwhile nothing
// published on the new master arrives. go-redis offers no hook for this
// (only a dial hook on the caller's shared client, which the bus does not
// own). So the subscription also holds a route channel,
// "NS:inv:route:<instance id>", never published to, and every
// RouteCheckInterval (250 ms) the bus sends PUBSUB NUMSUB of it through the
// command client. Zero, while one confirmation of the route channel stood
// from before the question to after the answer, means the subscription is on
// another server, or that its connection has just died (a server drops a
// closed connection's subscriptions at once: CLIENT KILL,
// client-output-buffer-limit pubsub) and the reader has not noticed yet. The
// bus then sends a PING with a fresh payload on the subscription: its pong
// coming back, with the same confirmation standing, proves the connection
// alive after the answer, hence on another server (one more round trip); a
// dead connection never answers, and the reader repairs it as a disconnect
// (Stats.Disconnects, not Reroutes). When moved, the bus invalidates
// everything (CauseServerChanged), turns unhealthy (short L1 copies), closes
// the PubSub and subscribes again, which dials the master the client
// resolves now; the confirmation repairs again (CauseResubscribe) and makes
// the stream healthy. Stats.Reroutes counts the replacements. A failover is
// so followed within one interval plus two round trips, without waiting for the
// 1 s anti-entropy round (whose run id check replaces the subscription as
// well, as a fallback).
//
// Why NUMSUB rather than an echo (a probe published through the command
// client that must come back on the subscription): the answer is exact and
// immediate, needs no timing bound that a loaded machine could break, and no
// message ever reaches the reader. The route channel is subscribed by its
// own SUBSCRIBE, sent once the invalidation channel is confirmed, on the
// same connection (go-redis resubscribes both in one command after a
// reconnect); the check starts from the route channel's confirmation. The
// check costs one small command per interval; an error (a proxy or ACL that
// refuses PUBSUB) is logged once per run of failures and leaves
// anti-entropy's run id check to follow the server. A client whose commands
// and subscriptions keep landing on different servers (commands sent to
// replicas, a proxy) would be repaired every interval: after replacements in
// a row that no passing check separates, the checks back off, doubling up to
// 30 s. With RouteCheckInterval negative the route channel is not subscribed
// at all.
//
// ACL: the bus's user needs the channel "NS:inv" (&NS:inv) and its keys
// "{<tag>}NS:inv:seq" and "{<tag>}NS:inv:epoch" (a pattern such as
// ~*NS:inv:* covers them), with the commands it sends: EVALSHA/EVAL
// (Publish), GET, SET, INFO, SUBSCRIBE, UNSUBSCRIBE, PING and PUBSUB (and
// CLUSTER SLOTS on Redis Cluster). For the route check it also needs the
// route channels: &NS:inv:route:* . Without that grant Redis refuses the
// route channel's SUBSCRIBE (NOPERM); the invalidation channel stays
// subscribed, the bus unsubscribes the route channel (so that no reconnect
// resends it), turns the route check off and logs one Warn naming the grant;
// a failover is then followed by anti-entropy's run id check, about one
// AntiEntropyInterval later. If the grant is revoked later, Redis closes the
// subscription and refuses go-redis's resubscription of both channels; the
// bus subscribes the invalidation channel again alone, the same way.
//
// # Redis Cluster: one subscription per master
//
// A classic PUBLISH reaches the subscribers of the node that ran it at once
// and those of every other node over the cluster bus, whose node-to-node
// links Redis opens without TCP_NODELAY: Nagle and delayed ACKs hold a
// message for up to ~40 ms (redis/redis#11869). One subscription would thus
// receive the messages of the slots its node does not own tens of
// milliseconds late. So with a *redis.ClusterClient the bus subscribes on
// every master, through the client's own node clients (ForEachMaster); only
// the subscriptions are closed by [Bus.Close], never the clients. Each
// message then arrives first from the master that published it (the slot's
// owner, ~0.1–1 ms on loopback) and once more from every other master.
//
// Tracking per partition: each path (one subscription) is FIFO and carries
// every message of the partition, so when sequence n arrives on a path,
// every smaller one arrived on that path before, unless that path lost it.
// The first copy of a sequence is applied, later copies are counted as
// Duplicates and dropped. A sequence that skips ahead leaves a hole that a
// copy from another path may still fill (applied then, not a duplicate);
// a hole still open after a grace of half the anti-entropy interval,
// clamped to [50 ms, 200 ms] (200 ms with anti-entropy off), is a gap.
// At most 16 holes stay open per partition; beyond that the oldest is a gap
// at once. A copy that arrives after its hole was declared lost, or after
// anti-entropy repaired it as a lost tail, is dropped rather than applied
// late: the repair came after it was published and covers it.
//
// Resets: by its number alone, a message at or below the last one cannot
// be told from a copy. But each path carries each message once, so the bus
// also keeps, per partition and subscription, the highest sequence that
// subscription delivered: a subscription delivering one at or below it went
// backwards. That happens when the sequence key was reset (evicted, a flush
// of its master, a failover to a replica that lagged), when a captured
// message is replayed, and across a slot migration (the old and the new
// owner's messages reach a third master over different links). Such a copy
// is applied (applying an invalidation is always safe; only skipping one
// is dangerous), and the partition becomes suspect: every copy is then
// applied (counted as Applied, not Duplicates) until the next anti-entropy
// round reads its sequence key, invalidates everything (CauseSeqReset:
// losses in the mixed numbering could not be seen as gaps) and tracks from
// Redis's value (with anti-entropy off, it stays suspect). The per-path
// memory survives these repairs, so a reset that comes after a repair,
// before the next message on a path, still goes backwards on it: a repair
// that only clears the suspicion keeps it as it is; one that finds Redis
// below what was applied lowers every path's value to Redis's (a copy
// published before that read and arriving after it then goes backwards too
// and costs one more repair; so does a path whose value still comes from
// the old numbering, after a reset that new traffic overtook, when the new
// numbering reaches it). So a reset never
// makes the bus drop a real invalidation as a copy, even when new traffic
// climbs past the old number before a round could see the key go
// backwards; the repair follows at the next round, within about one
// interval plus the round (at most two intervals). Applying every copy at
// or below the last one, always, would be simpler but would call the
// Handler once per master for every message, and each later copy (~40 ms
// on) would drop a local copy filled after the first. The cost of the
// per-path test is an extra repair when a slot migrates under traffic.
//
// Epoch keys: the bus keeps one per master, in a slot that master owns
// (read from CLUSTER SLOTS each round; the same slot while the master keeps
// it, its lowest otherwise), so a flush or a restart without persistence of
// any master is seen within a round (CauseEpoch), and that round reads the
// sequence keys of every tracked partition the master owns. A master seen
// for the first time, or whose epoch slot moved away, starts a new
// baseline without a repair.
//
// Consequences:
//
//   - Anti-entropy reads every partition with traffic since the last round
//     in one pipeline, which go-redis splits per master: with all 16384
//     slots active that is 16384 GETs per round per instance (about 20 ms on
//     the 3-master loopback test cluster; 80 to 180 ms under the race
//     detector).
//   - A disconnect, stall or resubscription of any master's subscription
//     repairs as on a single server, although the other paths usually
//     carried the messages it missed.
//   - The watcher lists the masters every anti-entropy interval (every
//     second when anti-entropy is off) and at once when anti-entropy sees a
//     run id change. When the set differs from the subscriptions (a master
//     added or removed, a failover to another address) it closes the
//     departed masters' subscriptions, opens the new ones and invalidates
//     everything (CauseServerChanged); each new subscription repairs again
//     when confirmed (CauseResubscribe). go-redis refreshes the slot map
//     that ForEachMaster reads on each call.
//   - Stats.Received counts every copy; with N masters, Duplicates grows by
//     about N-1 per message, and Lag is measured on the first copy.
//
// # Eviction policies
//
// The bus's keys (sequence and epoch keys) never carry a TTL; the near
// cache (package tiered) writes every data key and tombstone with one.
//
//   - noeviction: safe. A full Redis fails writes, which the cache reports,
//     and evicts nothing.
//   - volatile-lru, volatile-lfu, volatile-random, volatile-ttl: safe for
//     the bus. They evict only keys with a TTL, so data keys and never the
//     bus's keys; an evicted value is a miss, as if it had expired. When no
//     key with a TTL is left, Redis fails writes as under noeviction. (A
//     value written through l2 directly with no TTL is never evicted.)
//     NOTE: the tombstones a Delete leaves are data keys too; one evicted
//     early reopens, for its key, the race it closes (a load that began
//     before the Delete and read no value writes its older value back).
//     volatile-ttl evicts the keys closest to expiry, tombstones first;
//     prefer volatile-lru or volatile-lfu, which seldom pick a key just
//     written.
//   - allkeys-lru, allkeys-lfu, allkeys-random: consistent for the bus but
//     costly (and tombstones as above). They can evict the bus's keys. An
//     evicted sequence key is a reset of its partition: on a standalone or
//     Sentinel-managed Redis the next message goes backwards and invalidates everything at once (CauseSeqReset); on
//     Redis Cluster its messages are applied and the reset repaired within
//     two intervals (see "Resets"). An evicted epoch key invalidates
//     everything at the next round (CauseEpoch). Under memory pressure
//     every instance may thus drop its whole local cache again and again:
//     use volatile-lru or volatile-lfu.
//
// # Concurrency
//
// A started bus runs up to four goroutines, owned by the bus and stopped and
// awaited by [Bus.Close]: a reader that owns the dedicated pub/sub
// connection and never blocks on anything but Redis (it hands payloads to a
// bounded queue), a worker that decodes, tracks sequences and is the only
// caller of the [Handler], the anti-entropy loop, and (on a
// *redis.Client, until Redis refuses the route channel) the route check. On Redis Cluster
// there is one reader per master, all feeding the same queue, and a
// watcher that keeps the readers in step with the masters. The reader uses
// ReceiveTimeout rather than go-redis's Channel, so it sees every error and
// every subscription confirmation; go-redis redials and resubscribes by
// itself after an error, and the bus replaces a connection that stays
// silent. Every method of Bus is safe for concurrent use; [Bus.Health] is
// one atomic load. The Redis client is shared and never closed by the bus.
//
// # NOTE: sharp edges
//
//   - The HMAC signature cannot cover the sequence number, which the script
//     appends on the server. Replaying a captured signed body with any
//     sequence makes receivers see a gap or a reset and invalidate more than
//     needed; it can never keep a stale value alive: on a standalone or
//     Sentinel-managed Redis every message is applied whatever its number,
//     and on Redis Cluster a genuine message numbered below a replayed one
//     goes backwards on its subscription and is applied (see "Resets").
//     Without an HMAC key, anyone who can PUBLISH to the channel can make
//     instances drop keys, and garbage on the channel invalidates
//     everything (counted as a decode reject), because a message the bus
//     cannot read may be a lost invalidation. With a key, unauthenticated
//     payloads (garbage included) are counted as auth rejects and ignored.
//   - Sequence tracking for a partition starts with the first message seen
//     for it. A message lost before that is caught only by the repairs of
//     the event that lost it (disconnect, overflow) — silent loss on a live
//     connection does not happen in Redis pub/sub. On Redis Cluster each
//     hash slot is a partition; anti-entropy reads every partition with
//     traffic since the last round, and takes turns over the quiet ones,
//     1024 per round.
//   - Anti-entropy is what bounds the damage of a lost last message, a
//     flushed database or a restart: turning it off (negative interval)
//     leaves those to the cache's TTLs.
//   - Delivery needs a CPU. The reader is woken by the Go runtime's network
//     poller; when every P is busy, the runtime polls the network only from
//     sysmon (at most every 10 ms) and queues the reader behind the running
//     goroutines, which each keep a P for a 10–20 ms time slice. With three
//     goroutines per P spinning on L1 hits, on 2 cores, messages reached the
//     Handler 20–30 ms after publication at the median and 80–110 ms at p99,
//     against about 1 ms on an idle machine. A bare goroutine woken from a
//     socket under the same load waits as long (25–40 ms median, 80–120 ms
//     p99), and one woken by a timer, the runtime's fastest path, about
//     20 ms median and 40–50 ms p99: BenchmarkInvalidationUnderLoad in
//     package tiered measures all of them in one run. The hop from reader
//     to worker costs nothing measurable (a goroutine readied by a running
//     one runs as soon as that one blocks), so applying messages on the
//     reader would save nothing and make the reader block on the Handler.
//     Reading with 1 ms deadlines, to be woken by a timer, halves the pairs
//     stale by more than 30 ms but not the tail, wakes an idle process 1000
//     times a second, and a deadline that expires inside a reply breaks
//     go-redis's reading of the stream; the bus does not do it. Handling a
//     message allocates nothing but the HMAC check (the worker reuses its
//     decode buffer).
//   - Propagation lag uses the publisher's clock; skew between hosts shifts
//     it (negative values count as zero).
//   - Own-message detection relies on unique instance ids; never copy a
//     Config with a fixed InstanceID to two buses.
package invalidation
