package l1

// Stats is a snapshot of a Cache's counters. Counters are cumulative since
// New; Entries and Cost are current.
type Stats struct {
	Hits         uint64 // Get calls that returned a value
	Misses       uint64 // Get calls that did not (including Stale, Expired, Collisions)
	Stale        uint64 // misses on an entry whose epoch or generation was outdated
	Expired      uint64 // misses on an entry past its TTL
	Collisions   uint64 // misses on an entry stored for another key with the same hash
	Fills        uint64 // staged fills handed to ristretto
	FillsRefused uint64 // fills refused by the guard (invalidated since Reserve), by Fill or at hand-over, or superseded while staged
	SetsDropped  uint64 // staged fills dropped because ristretto's set buffer was full
	SetsRejected uint64 // new entries rejected by ristretto's admission policy
	Evictions    uint64 // entries evicted to make room
	Invalidated  uint64 // keys passed to Invalidate
	EpochBumps   uint64 // InvalidateAll calls
	Entries      int64  // entries currently held by ristretto (approximate while sets are buffered)
	Cost         int64  // capacity in use: entries, or bytes with MaxBytes
	MaxCost      int64  // capacity: MaxEntries or MaxBytes
}

// Stats returns a snapshot of the counters. After Close, Entries and Cost
// are zero.
func (c *Cache[V]) Stats() Stats {
	st := Stats{
		Stale:        c.stale.Load(),
		Expired:      c.expired.Load(),
		Collisions:   c.collisions.Load(),
		Fills:        c.fills.Load(),
		FillsRefused: c.refused.Load(),
		SetsDropped:  c.dropped.Load(),
		SetsRejected: c.rejected.Load(),
		Evictions:    c.evicted.Load(),
		Invalidated:  c.invalidated.Load(),
		EpochBumps:   c.epochBumps.Load(),
		MaxCost:      c.maxCost,
	}
	for i := range c.shards {
		st.Hits += c.shards[i].hits.Load()
		st.Misses += c.shards[i].misses.Load()
	}
	s := &c.shards[0]
	if c.enter(s) {
		st.Cost = c.maxCost - c.rc.RemainingCost()
		s.leave()
		// Every accepted set either adds a value or replaces one, and every
		// value that leaves (evicted, rejected, replaced, deleted) passes
		// OnExit once.
		in := st.Fills + c.reapplied.Load()
		st.Entries = max(int64(in)-int64(c.exited.Load()), 0)
	}
	return st
}
