// Package l2 is nearcache's shared tier: a [Store] that keeps values in Redis
// (standalone, Sentinel or Cluster) under a key prefix, each in one Redis
// string, an envelope that also carries the value's soft and hard expiry,
// metadata, version and tombstone flag. tiered.Cache uses it as the source
// every instance shares; it is usable on its own.
//
// # Operations
//
// Every method that talks to Redis takes a ctx first. Get is one GET; GetMany
// one MGET, or on a Cluster one pipeline per node, run concurrently; SetMany and
// DeleteMany one pipelined round trip. Keys and Clear walk SCAN (on every master
// of a Cluster), never KEYS or FLUSHDB: a Store touches only keys under its
// prefix, and Clear refuses to run without one. A value whose encoding exceeds
// Config.MaxValueSize fails its write before any I/O, and a batch holding one
// writes nothing; [Store.CheckSize] tells in advance.
//
// # Write and notify
//
// With [Notify], a write runs as one Lua script per partition (the hash slot on
// a Cluster, 0 elsewhere) that writes or deletes the keys, advances the
// partition's sequence key and publishes the notification: a write is never
// acknowledged without its notification, and never notified without the write.
// The wire contract (channel, sequence and epoch keys, payload layout, scripts)
// is owned by package internal/wire; l2 does not interpret the body. A
// [Batcher] lets writes that overlap share one such script, and so one
// notification: a write with nothing of its partition in flight runs at once;
// one that queues behind another waits at most the Batcher's window, and is
// acknowledged only once the shared script has returned.
//
// # Replacing what was read
//
// [Store.SetIf] stores a value only if the key still holds exactly the bytes an
// earlier [Store.Read] returned (or is still absent), and Delete with
// [Tombstone] leaves a short-lived tombstone instead of an absent key, so a
// value loaded before a write or delete cannot overwrite it. Get and GetMany
// report tombstones as not found; Read and ReadMany (and AppendReadMany, which
// reads into a caller's slice) return them, and a corrupt value's raw bytes,
// so that it can be replaced.
//
// # Versions
//
// A write with a version ([Entry].Version, or [Version] with Tombstone for a
// delete) is refused when the stored version is as new or newer: [ErrStale],
// with a [*StaleError] naming the keys, and nothing written or notified for
// them. Every other write run by the script keeps the stored version, and a
// tombstone over a versioned value lives at least as long as that value would
// have; a plain SET (SetMany without Notify, Delete without Tombstone) forgets
// the version.
//
// # Errors, clients and concurrency
//
// A miss is [ErrNotFound]; redis.Nil never leaves the package. Failures are
// [*Error] values with Op and Key, wrapping [ErrConnection] (unreachable or too
// slow; with [ErrTimeout] for timeouts) or [ErrOperation] (an error reply or
// unusable data: [ErrCorrupt] for bytes that are not an envelope, never a panic;
// [ErrTooLarge], [ErrStale], [ErrClosed]).
//
// [Open] builds its own client (ContextTimeoutEnabled, at most one retry,
// Config.SocketTimeout) and closes it in Close; [New] wraps a caller's client,
// which should have ContextTimeoutEnabled, and never closes it. MaxMemory and
// EvictionPolicy change the server (CONFIG SET) only with ApplyServerConfig. A
// Store is safe for concurrent use; Close is idempotent, and later operations
// fail with an error wrapping ErrClosed.
//
// NOTE: with Redis ACLs the user needs the prefix's keys (~PREFIX*) and GET,
// MGET, SET, SCAN, UNLINK, EVALSHA and EVAL (the scripts run GET, SET, PTTL,
// UNLINK and PUBLISH; CLUSTER SLOTS on a Cluster; EXISTS, PING, INFO and CONFIG
// for the methods that send them). With Notify it also needs the notification's
// sequence key and channel (for tiered: {tag}NS:inv:seq and NS:inv).
//
// NOTE: the hard expiry in the envelope comes from the writer's clock; clocks
// that differ by more than a few milliseconds make entries expire earlier or
// later (Redis's own TTL is unaffected).
//
// NOTE: Clear is not atomic with respect to concurrent writers: a key written
// while it runs may survive it.
package l2
