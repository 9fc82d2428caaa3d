// Package l2 is nearcache's shared tier: a Store that keeps envelopes of
// bytes in Redis (standalone, Sentinel or Cluster) under a key prefix. It is
// the Go counterpart of the seed's RedisBackend; tiered.Cache uses it as the
// source of truth every instance shares, and it is usable on its own.
//
// # Operations
//
// Every operation takes a context first and costs one round trip: Get is one
// GET; GetMany is one MGET on a standalone server and, on a Cluster, one
// pipeline per node run concurrently; SetMany and DeleteMany are pipelined.
// Keys walks SCAN (on every master of a Cluster), never KEYS, and Clear is
// SCAN + UNLINK in batches, never FLUSHDB: the server may be shared with other
// applications, so a Store only ever touches keys under its prefix, and Clear
// refuses to run without one.
//
// A write whose encoded value exceeds Config.MaxValueSize is refused before
// any I/O; SetMany and SetManyIf then write none of their entries. CheckSize
// tells a caller in advance, so it can leave such a value out of a batch.
//
// # The envelope
//
// Each key holds one Redis string: a magic byte (0xC7), a format version,
// flags (negative entry, metadata, soft and hard expiry, tombstone, version),
// the soft expiry used by fail-safe, the hard expiry (so readers can bound
// their local copies without a PTTL round trip), the 8-byte version (see
// Versions), optional metadata (stored inline, so TTL, MGET and atomicity
// work on one key; the seed used a second ":meta" key), then the payload. Decoding checks every length against the input before allocating
// and is fuzzed (FuzzDecode). Bytes that are not an envelope, such as a value
// written by another program, are an *Error wrapping ErrCorrupt, counted in
// Stats, never a panic.
//
// # Atomic write-and-notify
//
// With the Notify option a write runs as one Lua script per partition: it
// checks the partition's sequence key, writes or deletes the data keys, stores
// the incremented sequence and PUBLISHes the notification body followed by
// that sequence in ASCII decimal. A write is never acknowledged without its
// notification having been published, and never published without the write.
// Partitions are hash slots on a Cluster (the caller's sequence key carries a
// hash tag for the slot, so the script stays single-slot) and a single
// partition 0 elsewhere. l2 does not interpret the body: package invalidation
// defines it.
//
// # Replacing what was read
//
// A value loaded from a database can be older than a write or delete that
// happened while it was loading. SetIf stores it only if the key still holds
// exactly the bytes an earlier Read returned (or is still absent), and Delete
// with the Tombstone option leaves a short-lived tombstone instead of an
// absent key, so a load that began before the delete cannot write its value
// back. Get and GetMany report tombstones as not found; Read and ReadMany
// return them, and return corrupt values' raw bytes, so they can be replaced.
//
// # Versions
//
// An Entry with a Version (and Delete with the Version option, which needs
// Tombstone) is written by a script that reads the stored envelope's version
// and refuses a write whose version is not above it (ErrStale, with a
// *StaleError naming the keys; nothing is written or published for them).
// Every other write run by the script (an unversioned write with Notify,
// Delete with Tombstone, SetIf) keeps the stored version in its envelope, so
// Redis remembers the highest version of a key while the key lives, and a
// tombstone over a versioned value lives at least as long as that value
// would have; a plain SET (SetMany without Notify, Delete without
// Tombstone) forgets it. Config.MaxValueSize leaves 8 bytes free in every
// unversioned value for that. In a batch, the notification is built before
// the script runs, so it names refused keys too.
//
// # Errors
//
// A miss is ErrNotFound (redis.Nil never leaves the package). Failures are
// *Error values carrying Op and Key, wrapping ErrConnection (Redis unreachable
// or too slow, with ErrTimeout for timeouts) or ErrOperation (Redis answered
// with an error, or the data is unusable: ErrCorrupt, ErrTooLarge, ErrClosed).
// These correspond to the seed's CacheConnectionError and CacheOperationError.
//
// # Configuration
//
// Open builds its own client from Config with go-redis ContextTimeoutEnabled,
// at most one retry and the given socket timeout, and closes it in Close. New
// wraps a caller's client, which Close never closes. MaxMemory and
// EvictionPolicy change the server with CONFIG SET, so they apply only with
// ApplyServerConfig. The seed's decode_responses has no Go meaning: values
// are always []byte.
//
// # Concurrency
//
// A Store is safe for concurrent use. Close is idempotent; later operations
// return an error wrapping ErrClosed.
//
// NOTE: the hard expiry in the envelope comes from the writer's clock;
// instances whose clocks differ by more than a few milliseconds see entries
// expire correspondingly earlier or later (Redis's own TTL is unaffected).
//
// NOTE: Clear is not atomic with respect to concurrent writers: a key written
// while the SCAN runs may survive it.
package l2
