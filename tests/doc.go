// Package tests holds nearcache's end-to-end suites: several tiered.Cache
// instances, in one process, sharing real redis-server processes that
// internal/redistest starts (a standalone server, a 3-master Redis
// Cluster, and a master and replica watched by a Sentinel). Nothing imports
// it; it has only tests.
//
// # What the suites prove
//
//   - Propagation: a write acknowledged on one instance stops the others
//     from serving the old value within the propagation bound; the delay
//     (Set returned → another instance's Get returns the new value) is
//     measured and logged as p50/p99.
//   - Consistency (standalone and Cluster): writers (database first, then
//     Set), deleters (database first, then Delete) and readers (Get, and
//     GetOrLoad whose loader reads the database) run on three instances for
//     several seconds over a small key set. Every read is checked after the
//     run against the acknowledged history of its key: no read that starts
//     more than the bound after an acknowledgement returns an older version
//     (stale read), a deleted version (resurrection) or nothing (lost write);
//     no read returns a version that was never written. After writers stop,
//     every instance converges to the database and to Redis. The bound is
//     100 ms on a standalone server and on Cluster (measured worst cases are
//     a few ms: on Cluster each instance subscribes on every master, so a
//     message never waits for Redis's cluster bus).
//   - Consistency through a Sentinel failover: the same checker on three
//     instances over go-redis failover clients, with SENTINEL FAILOVER
//     half-way through under load. Every instance's bus must move its
//     subscription to the new master within 5 s of the switch (go-redis
//     alone leaves it on the old master for about 10 s); reads are held to
//     the bound for every operation acknowledged after that (earlier ones,
//     including writes the old master acknowledged and the failover lost,
//     are counted and logged), and every instance converges to the new
//     master after the writers stop.
//   - Faults: Redis killed under load (reads keep succeeding through L1 and
//     the loader, every call is bounded, writes fail fast with
//     ErrUnavailable, and after a restart the instances repair themselves
//     and see each other's writes again); a paused (black-holed) server; a
//     lost invalidation (the pub/sub connections killed right before a
//     write); bytes in Redis written by a foreign program.
//
// Without redis-server on PATH the suites skip; with
// NEARCACHE_REQUIRE_REDIS=1 they fail instead. NEARCACHE_CHECKER_DURATION
// (a Go duration) overrides how long the standalone consistency checker
// runs; the Cluster checker runs half as long.
package tests
