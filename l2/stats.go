package l2

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hist"
	"github.com/nearcache/nearcache/internal/redisinfo"
)

// Stats are a Store's own counters since New. Reading them does no I/O.
type Stats struct {
	Hits, Misses  uint64       // Get/GetMany keys found / not found (corrupt counts as a miss)
	Sets, Deletes uint64       // keys written / deletes requested
	Notifications uint64       // notifications published (at most one per partition group and write)
	Errors        uint64       // failed operations (all kinds)
	Timeouts      uint64       // of which timed out
	Corrupt       uint64       // values that were not a valid envelope
	TooLarge      uint64       // values refused (writes, CheckSize) or skipped (reads) for exceeding MaxValueSize
	StaleRefused  uint64       // keys of versioned writes refused because Redis held a version as new or newer
	Batches       uint64       // scripts a Batcher ran for several writes together (one notification each)
	BatchedWrites uint64       // the writes those scripts carried
	Latency       LatencyStats // per round trip (one per operation or batch)
	// LatencyHistogram is the same round trips in fixed buckets (100µs
	// to 10s), cumulative, with their sum: for exporters.
	LatencyHistogram Histogram
}

// Histogram is a cumulative histogram with fixed bounds: Counts[i]
// observations were at most Bounds[i], Count is every observation and Sum
// their total (which stops at the largest Duration rather than wrap). The
// same type as invalidation.Histogram.
type Histogram = hist.Buckets

// LatencyStats summarises round-trip times. Percentiles are upper bounds of
// log-linear histogram buckets (at most 12.5% above the true value, never
// above Max). It is the same type as invalidation.LagStats.
type LatencyStats = hist.Percentiles

// Stats returns the Store's counters and latency percentiles.
func (s *Store) Stats() Stats {
	return Stats{
		Hits: s.hits.Load(), Misses: s.misses.Load(),
		Sets: s.sets.Load(), Deletes: s.deletes.Load(),
		Notifications: s.notifies.Load(),
		Errors:        s.errs.Load(), Timeouts: s.timeouts.Load(),
		Corrupt: s.corrupt.Load(), TooLarge: s.large.Load(), StaleRefused: s.stale.Load(),
		Batches: s.batches.Load(), BatchedWrites: s.batched.Load(),
		Latency: s.latency.Snapshot(), LatencyHistogram: s.latency.Buckets(),
	}
}

// ServerInfo holds figures from one server's INFO. Fields a server does not
// report stay zero.
type ServerInfo struct {
	Addr             string
	Version          string
	RunID            string
	UsedMemory       int64
	MaxMemory        int64
	MaxMemoryPolicy  string
	EvictedKeys      int64
	KeyspaceHits     int64
	KeyspaceMisses   int64
	ConnectedClients int64
}

// ServerStats reads INFO from the server, or from every master of a Cluster.
func (s *Store) ServerStats(ctx context.Context) ([]ServerInfo, error) {
	if s.closed.Load() {
		return nil, s.closedErr("info")
	}
	var mu sync.Mutex
	var out []ServerInfo
	one := func(ctx context.Context, c *redis.Client) error {
		txt, err := c.Info(ctx, "server", "memory", "stats", "clients").Result()
		if err != nil {
			return err
		}
		si := parseInfo(txt)
		si.Addr = c.Options().Addr
		mu.Lock()
		out = append(out, si)
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, one)
	case *redis.Client:
		err = one(ctx, c)
	default:
		var txt string
		txt, err = s.client.Info(ctx, "server", "memory", "stats", "clients").Result()
		if err == nil {
			out = append(out, parseInfo(txt))
		}
	}
	if err != nil {
		return nil, s.fail("info", err)
	}
	return out, nil
}

func parseInfo(txt string) ServerInfo {
	return ServerInfo{
		Version:          redisinfo.Field(txt, "redis_version"),
		RunID:            redisinfo.Field(txt, "run_id"),
		UsedMemory:       redisinfo.Int(txt, "used_memory"),
		MaxMemory:        redisinfo.Int(txt, "maxmemory"),
		MaxMemoryPolicy:  redisinfo.Field(txt, "maxmemory_policy"),
		EvictedKeys:      redisinfo.Int(txt, "evicted_keys"),
		KeyspaceHits:     redisinfo.Int(txt, "keyspace_hits"),
		KeyspaceMisses:   redisinfo.Int(txt, "keyspace_misses"),
		ConnectedClients: redisinfo.Int(txt, "connected_clients"),
	}
}
