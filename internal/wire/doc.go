// Package wire is the one home of the contract between l2, which publishes an
// invalidation atomically with each write, and invalidation, which receives
// it: the names of the channel and keys, the layout of a published payload,
// and the Lua that advances a partition's sequence and publishes.
//
// # Names
//
// For a namespace NS:
//
//   - data keys are "NS:" + key ([KeyPrefix]); messages carry keys without it;
//   - the channel is "NS:inv" ([Channel]); an instance's route channel,
//     subscribed and never published to, is "NS:inv:route:<hex id>"
//     ([RouteChannel]);
//   - partition p's sequence key is "{tag(p)}NS:inv:seq" ([SeqKey]) and the
//     epoch key of the master owning slot p is "{tag(p)}NS:inv:epoch"
//     ([EpochKey]), where tag(p) hashes to Redis Cluster slot p. The tag
//     comes first, so a script that writes a data key of slot p and its
//     sequence key stays single-slot, and these keys never start with
//     "NS:": a SCAN of the namespace's data never sees them;
//   - the refresh claim of data key "NS:"+key is "{tag(s)}NS:claim:" + key
//     ([ClaimKey]), where s is the data key's slot.
//
// A partition is a hash slot on Redis Cluster and 0 elsewhere.
//
// # Payload
//
// A published payload is the body (built by invalidation, opaque here)
// followed immediately by the partition's new sequence number in ASCII
// decimal: 1 to 20 digits, no sign, no leading zero ([AppendSeq],
// [ParseSeq]). The receiver finds the end of the body from the body itself.
//
// # Scripts
//
// [NewScript] wraps a write in the notification: the script validates the
// sequence key before anything is written, runs the write, then stores the
// new sequence and PUBLISHes body..seq, so the write and its notification
// happen together or not at all. [PublishScript] is the frame with no write.
package wire
