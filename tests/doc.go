// Package tests holds nearcache's end-to-end suites: several tiered.Cache
// instances, in one process, sharing real redis-server processes that
// internal/redistest starts (a standalone server, a 3-master Redis Cluster,
// and a master and replica watched by a Sentinel). Nothing imports it; it has
// only tests.
//
// # What the suites prove
//
//   - Propagation: after a write is acknowledged on one instance, the others
//     serve the new value within 100 ms; the delay is logged as p50/p99.
//   - Consistency (standalone and Cluster): writers (database first, then Set),
//     deleters (database first, then Delete) and readers (Get, and GetOrLoad
//     whose loader reads the database) run on three instances over a small key
//     set. Every read is checked against the acknowledged history of its key:
//     no read that starts more than 100 ms after an acknowledgement returns an
//     older version (stale read), a deleted one (resurrection) or nothing (lost
//     write), and no read returns a version never written. After the writers
//     stop, every instance converges to the database and to Redis.
//   - Consistency through a Sentinel failover: the same checker over go-redis
//     failover clients, with SENTINEL FAILOVER half-way through. Every bus must
//     move its subscription to the new master within 5 s of the switch; reads
//     are held to the bound for operations acknowledged after that (earlier
//     ones, including writes the failover lost, are counted and logged), and
//     every instance converges to the new master.
//   - Faults: Redis killed under load (reads keep succeeding through L1 and the
//     loader, every call is bounded, writes fail fast with ErrUnavailable, and
//     after a restart the instances repair themselves); a paused (black-holed)
//     server; a lost invalidation (the pub/sub connections killed right before
//     a write); bytes in Redis written by a foreign program.
//   - Contract: an invalidation lost on a live connection is repaired within
//     2 s with default settings.
//
// Without redis-server on PATH the suites skip; with NEARCACHE_REQUIRE_REDIS=1
// they fail instead. Each consistency checker runs 10 s (2 s with -short);
// NEARCACHE_CHECKER_DURATION (a Go duration) overrides that for all of them.
package tests
