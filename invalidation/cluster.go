package invalidation

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis Cluster: one subscription per master, deduplication by sequence.
//
// A classic PUBLISH reaches subscribers on the node that ran it at once and
// subscribers on every other node over the cluster bus, which adds up to
// ~40 ms (Nagle and delayed ACKs on the node-to-node links). The bus
// therefore subscribes on every master: each message arrives first from the
// master that published it (the slot's owner) and again, later, from every
// other master. Each of these paths is FIFO and carries every message of the
// partition, so a sequence number arriving on a path means every smaller one
// of the same partition arrived on that path before, unless that path lost
// it. The first copy of a sequence is applied; later copies are duplicates.
// A sequence that skips ahead leaves a hole, which another path may still
// fill (it lost a copy the others did not); a hole still open after gapGrace
// is a gap. Each path also remembers, per partition, the highest sequence it
// delivered: a path going backwards reveals a reset of the sequence key (or
// a replay), which the number alone would pass off as a copy (trackMulti).

// maxHoles bounds the open holes per partition; beyond it the oldest is
// declared lost at once.
const maxHoles = 16

// errNoMasters: the cluster client knows no master.
var errNoMasters = errors.New("invalidation: the cluster has no master")

// gapGrace is how long a missing sequence may stay missing on Redis Cluster
// before it counts as lost: longer than the cluster bus's delay (~40 ms), and
// half the anti-entropy interval, clamped to [50 ms, 200 ms].
func gapGrace(antiEntropy time.Duration) time.Duration {
	if antiEntropy <= 0 {
		return 200 * time.Millisecond
	}
	return min(max(antiEntropy/2, 50*time.Millisecond), 200*time.Millisecond)
}

// hole is a run of missing sequences [lo, hi], declared lost at due.
type hole struct {
	lo, hi uint64
	due    time.Time
}

// observe classifies seq for a partition whose messages arrive over several
// FIFO paths, and updates t. apply: seq was neither applied nor accounted for
// before. newHole: seq skipped ahead and opened a hole due at now+grace.
// forced: holes declared lost at once because there were too many.
//
// By number alone, a sequence at or below t.last that is not in a hole is a
// duplicate; so is a smaller number after a reset of the sequence key.
// trackMulti tells the two apart by the path (fromPath).
func (t *track) observe(seq uint64, now time.Time, grace time.Duration) (apply, newHole bool, forced int) {
	if seq > t.last {
		if seq > t.last+1 {
			t.holes = append(t.holes, hole{lo: t.last + 1, hi: seq - 1, due: now.Add(grace)})
			newHole = true
		}
		t.last = seq
		return true, newHole, t.trim()
	}
	for i, h := range t.holes {
		if seq < h.lo {
			break
		}
		if seq > h.hi {
			continue
		}
		switch {
		case h.lo == h.hi:
			t.holes = slices.Delete(t.holes, i, i+1)
		case seq == h.lo:
			t.holes[i].lo++
		case seq == h.hi:
			t.holes[i].hi--
		default:
			t.holes[i].hi = seq - 1
			t.holes = slices.Insert(t.holes, i+1, hole{lo: seq + 1, hi: h.hi, due: h.due})
		}
		if len(t.holes) == 0 {
			t.holes = nil
		}
		return true, false, t.trim()
	}
	return false, false, 0
}

// trim declares the oldest holes lost while there are more than maxHoles.
func (t *track) trim() int {
	n := len(t.holes) - maxHoles
	if n <= 0 {
		return 0
	}
	t.holes = slices.Delete(t.holes, 0, n)
	return n
}

// expire removes the holes due at or before now and returns how many, and
// the earliest due time of those left (zero if none).
func (t *track) expire(now time.Time) (n int, next time.Time) {
	k := 0
	for _, h := range t.holes {
		if !h.due.After(now) {
			n++
			continue
		}
		t.holes[k] = h
		k++
		if next.IsZero() || h.due.Before(next) {
			next = h.due
		}
	}
	clear(t.holes[k:])
	t.holes = t.holes[:k]
	if k == 0 {
		t.holes = nil
	}
	return n, next
}

// pathSeq is the highest sequence of a partition that one subscription
// (path) delivered.
type pathSeq struct {
	id   int
	last uint64
}

// fromPath records seq arriving on path id, and reports whether that path
// went backwards: it had delivered seq or a higher one before. A path is
// FIFO and carries each message once, so that happens only when the
// sequence key was reset (eviction, flush, failover to a lagging replica),
// when a captured message is replayed, or across a slot migration (the old
// and the new owner's messages reach a third node over different links).
// The path keeps its highest sequence, so that every message of the new
// numbering below it is seen as backwards too.
func (t *track) fromPath(id int, seq uint64) (back bool) {
	for i := range t.paths {
		if t.paths[i].id == id {
			if seq <= t.paths[i].last {
				return true
			}
			t.paths[i].last = seq
			return false
		}
	}
	t.paths = append(t.paths, pathSeq{id: id, last: seq})
	return false
}

// trackMulti tracks a message on Redis Cluster and reports whether to apply
// it (false: a duplicate). The worker arms its gap timer from b.gapDue.
//
// A copy that is a duplicate by its number but went backwards on its own
// path is applied (applying an invalidation is always safe; skipping one is
// not) and makes the partition suspect: anti-entropy then reads its
// sequence key in its next round and repairs (CauseSeqReset). While a
// partition is suspect every copy is applied, so a reset can never make the
// bus drop a real invalidation as a copy.
func (b *Bus) trackMulti(partition, path int, seq uint64) bool {
	now := time.Now()
	b.trackMu.Lock()
	tr, seen := b.last[partition]
	var apply, newHole, back bool
	var forced int
	if !seen {
		tr, apply = track{last: seq}, true
		tr.fromPath(path, seq)
	} else {
		back = tr.fromPath(path, seq)
		apply, newHole, forced = tr.observe(seq, now, b.gapGrace)
		if back {
			tr.suspect = true
			tr.anomalies++
		}
		apply = apply || tr.suspect
	}
	tr.touched = true
	b.last[partition] = tr
	b.trackMu.Unlock()
	if back {
		b.log.Debug("sequence went backwards on a subscription", zap.Int("partition", partition), zap.Uint64("seq", seq))
	}
	if newHole {
		if due := now.Add(b.gapGrace); b.gapDue.IsZero() || due.Before(b.gapDue) {
			b.gapDue = due
		}
	}
	if forced > 0 {
		b.gap(partition, forced)
	}
	return apply
}

// expireHoles declares the holes due by now lost (Redis Cluster). Worker only.
func (b *Bus) expireHoles(now time.Time) {
	var next time.Time
	b.trackMu.Lock()
	for p, tr := range b.last {
		if len(tr.holes) == 0 {
			continue
		}
		n, nx := tr.expire(now)
		b.last[p] = tr
		if n > 0 {
			b.gap(p, n)
		}
		if !nx.IsZero() && (next.IsZero() || nx.Before(next)) {
			next = nx
		}
	}
	b.trackMu.Unlock()
	if !next.IsZero() && (b.gapDue.IsZero() || next.Before(b.gapDue)) {
		b.gapDue = next
	}
}

// forgetPaths drops the per-path state of subscriptions that were closed.
func (b *Bus) forgetPaths(ids []int) {
	if len(ids) == 0 {
		return
	}
	b.trackMu.Lock()
	defer b.trackMu.Unlock()
	for p, tr := range b.last {
		n := len(tr.paths)
		tr.paths = slices.DeleteFunc(tr.paths, func(ps pathSeq) bool { return slices.Contains(ids, ps.id) })
		if len(tr.paths) != n {
			b.last[p] = tr
		}
	}
}

// gap records n lost runs of sequences of a partition on Redis Cluster.
func (b *Bus) gap(partition, n int) {
	b.stats.gaps.Add(uint64(n))
	b.log.Info("sequence gap", zap.Int("partition", partition), zap.Int("runs", n))
	b.requestInvalidateAll(CauseGap)
}

// watchMasters keeps one subscription per master of the cluster: it learns
// the masters (retrying until it can), then looks again every anti-entropy
// interval (or when anti-entropy saw a server change, a slot left its
// subscription, or a subscription failed to reconnect) and follows changes.
func (h *hub) watchMasters(ctx context.Context) {
	defer h.wg.Done()
	iv := h.cfg.AntiEntropyInterval
	if iv <= 0 {
		iv = DefaultAntiEntropyInterval
	}
	var backoff time.Duration
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.topoPoke:
		}
		wait := iv
		mctx, cancel := context.WithTimeout(ctx, 2*iv+500*time.Millisecond)
		topo, err := h.look(mctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			wait = backoff
			h.topoFails.Fail("", err)
		default:
			backoff = 0
			h.syncSubs(topo)
			wait = time.Until(h.grid.after(time.Now(), iv)) // on the hub's grid (see grid.go)
			if h.shardOff.Load() {
				cctx, cancel := context.WithTimeout(ctx, 2*iv+500*time.Millisecond)
				h.checkShardListeners(cctx, topo)
				cancel()
				// Other instances' SPUBLISH does not reach this hub:
				// look for them every PingInterval at least.
				wait = min(wait, time.Until(h.grid.after(time.Now(), h.cfg.PingInterval)))
			}
		}
		t.Reset(wait)
		// At most one look per minLookGap, however often a moved slot
		// pokes: the masters' views of the slots converge over gossip.
		select {
		case <-ctx.Done():
			return
		case <-time.After(minLookGap):
		}
	}
}

// masters returns the cluster client's master node clients by address.
// ForEachMaster reloads the slot map (CLUSTER SLOTS) first.
func (h *hub) masters(ctx context.Context) (map[string]*redis.Client, error) {
	var mu sync.Mutex
	nodes := make(map[string]*redis.Client)
	err := h.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		nodes[c.Options().Addr] = c
		mu.Unlock()
		return nil
	})
	if err == nil && len(nodes) == 0 {
		err = errNoMasters
	}
	return nodes, err
}

// minLookGap is the least time between two looks at the cluster.
const minLookGap = 50 * time.Millisecond

// syncSubs makes the subscriptions match the masters: a new master gets one,
// a departed master's is closed, and each carries the shard channels of
// the slots its master owns (see shard.go). After the first set, any
// change invalidates everything (messages published during a failover or
// resharding may have been missed), and the new subscriptions' (and new
// slots') first confirmations repair again and keep the stream unhealthy
// until then.
func (h *hub) syncSubs(topo topology) {
	nodes, slots := topo.nodes, topo.slots
	if h.shardOff.Load() {
		slots = nil // refused: the plain channel only (see refuseShards)
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	var gone []*sub
	for addr, s := range h.subs {
		if c, ok := nodes[addr]; !ok || s.client != c {
			gone = append(gone, s)
			delete(h.subs, addr)
		}
	}
	added, moved := 0, 0
	for addr, c := range nodes {
		if s, ok := h.subs[addr]; !ok {
			h.newSubLocked(addr, c, slots[addr])
			added++
		} else if h.setSlotsLocked(s, slots[addr]) {
			moved++
		}
	}
	lostSlots := h.uncovered
	if lostSlots > 0 {
		// This look assigned every slot anew; those on a new master are
		// unhealthy on its subscription until confirmed.
		h.uncovered = 0
		for _, m := range h.everyone() {
			m.health.clear(uncoveredSrc, reasonNotSubscribed)
		}
	}
	first := !h.subsKnown
	h.subsKnown = true
	if first {
		// Under mu, so before Start may return; each new subscription
		// keeps the stream unhealthy until it is confirmed.
		h.knownLocked()
	}
	h.mu.Unlock()
	ids := make([]int, 0, len(gone))
	for _, s := range gone {
		h.stopSub(s)
		ids = append(ids, s.id)
	}
	for _, m := range h.everyone() {
		m.forgetPaths(ids)
	}
	if !first && (added > 0 || len(gone) > 0) {
		h.log.Warn("cluster masters changed; subscriptions follow", zap.Int("added", added), zap.Int("removed", len(gone)))
		h.invalidateAll(CauseServerChanged)
	} else if !first && moved > 0 {
		h.log.Info("cluster slots moved; shard subscriptions follow", zap.Int("masters", moved), zap.Int("slots_dropped_by_their_masters", lostSlots))
		h.invalidateAll(CauseServerChanged)
	}
}
