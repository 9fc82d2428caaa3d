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
// The decoder checks every length against the bytes present before using or
// allocating, never panics (FuzzDecode), and rejects unknown versions,
// operations and flags. Keys are not namespace-prefixed.
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
// The bus's own keys (the sequence keys "{tag}NS:inv:seq" and the epoch key
// "{tag}NS:inv:epoch") start with a hash tag, so they never fall under the
// data prefix "NS:": a user key cannot collide with them, and clearing the
// namespace's data leaves them in place (they are a few bytes each, and
// other instances still track the sequences).
//
// The receiving side:
//
//   - skips its own messages (same origin id) but advances their sequence;
//   - calls [Handler.InvalidateKeys] for deletes and InvalidateAll(CauseClear)
//     for clears from other instances;
//   - keeps the last sequence per partition: a gap means lost messages
//     (CauseGap), a smaller number means the sequence key was reset
//     (CauseSeqReset);
//   - on a connection error (CauseDisconnect), an unanswered ping
//     (CauseStall), a full receive queue (CauseOverflow) or an undecodable
//     message (CauseDecode) invalidates everything at detection, and again
//     (CauseResubscribe) when Redis confirms the subscription once more;
//   - every [Config.AntiEntropyInterval] reads the tracked sequence keys
//     (CauseLostTail when Redis is still ahead after half an interval and
//     the queue drained: a lost tail is repaired within about 1.5
//     intervals; a message that was only slow arrives later as "late" and
//     is applied without another repair), the namespace epoch key, created
//     with SET NX
//     (CauseEpoch when missing or changed: flush, restart without
//     persistence, eviction), and the masters' run ids (CauseServerChanged:
//     restart, failover).
//
// [Bus.Health] is unhealthy from a detection until the subscription is
// confirmed and the repair applied (and while anti-entropy cannot read
// Redis), so a cache can shorten or skip local fills meanwhile.
//
// # Concurrency
//
// A started bus runs three goroutines, owned by the bus and stopped and
// awaited by [Bus.Close]: a reader that owns the dedicated pub/sub
// connection and never blocks on anything but Redis (it hands payloads to a
// bounded queue), a worker that decodes, tracks sequences and is the only
// caller of the [Handler], and the anti-entropy loop. The reader uses
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
//     needed; it can never keep a stale value alive. Without an HMAC key,
//     anyone who can PUBLISH to the channel can make instances drop keys, and
//     garbage on the channel invalidates everything (counted as a decode
//     reject), because a message the bus cannot read may be a lost
//     invalidation. With a key, unauthenticated payloads (garbage included)
//     are counted as auth rejects and ignored.
//   - Sequence tracking for a partition starts with the first message seen
//     for it. A message lost before that is caught only by the repairs of
//     the event that lost it (disconnect, overflow) — silent loss on a live
//     connection does not happen in Redis pub/sub. On Redis Cluster each
//     hash slot is a partition; anti-entropy reads at most 1024 tracked
//     sequence keys per round and takes turns when more are tracked.
//   - Anti-entropy is what bounds the damage of a lost last message, a
//     flushed database or a restart: turning it off (negative interval)
//     leaves those to the cache's TTLs.
//   - Propagation lag uses the publisher's clock; skew between hosts shifts
//     it (negative values count as zero).
//   - Own-message detection relies on unique instance ids; never copy a
//     Config with a fixed InstanceID to two buses.
package invalidation
