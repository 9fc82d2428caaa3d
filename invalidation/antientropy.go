package invalidation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/wire"
)

// maxAEKeys bounds the sequence keys of quiet partitions read per
// anti-entropy round; with more of them tracked (Redis Cluster) the rounds
// take turns over them. Partitions with traffic since the last round are
// read every round, however many.
const maxAEKeys = 1024

// aeState belongs to the anti-entropy goroutine.
type aeState struct {
	epoch      string                 // last epoch key value seen; "" before the first round
	epochs     map[string]masterEpoch // Redis Cluster: by master address
	runIDs     string                 // sorted "addr=run_id" of the masters; "" before the first round
	noRunID    bool                   // the server has no INFO server section (miniredis)
	cursor     int                    // where the next round starts among the quiet partitions
	hot, cold  []int                  // scratch
	partitions []int                  // scratch
	snap       []aeSnap               // scratch
}

// masterEpoch is the epoch key of one Redis Cluster master: the slot it is
// hash-tagged to (one the master owns) and the value last read.
type masterEpoch struct {
	slot  int
	value string
}

// aeSnap is what a partition's tracking said before its sequence key was read.
type aeSnap struct {
	last      uint64
	anomalies uint32
	suspect   bool
}

// Messages of the episodes of failed rounds (see Config.Logger); an
// episode's end is logged with the same message followed by
// episode.EndSuffix.
const (
	msgAEFails     = "anti-entropy rounds failing"
	msgTopoFails   = "cannot list the cluster's masters"
	msgDecodeFails = "undecodable invalidation messages; invalidating everything"
)

// antiEntropy finds the losses the stream cannot show: a lost last message
// (sequence key ahead of what arrived), a flushed or restarted server (epoch
// key missing or changed, run id changed), a failover (master set changed).
func (b *Bus) antiEntropy(ctx context.Context) {
	defer b.wg.Done()
	select {
	case <-b.confirmed:
	case <-ctx.Done():
		return
	}
	iv := b.cfg.AntiEntropyInterval
	t := time.NewTicker(iv)
	defer t.Stop()
	var st aeState
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*iv+500*time.Millisecond)
		err := b.aeRound(rctx, &st)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			b.stats.aeErrors.Add(1)
			b.health.set(busWide, reasonAntiEntropy)
			b.aeFails.Fail("", err)
		default:
			b.stats.aeRounds.Add(1)
			b.health.clear(busWide, reasonAntiEntropy)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *Bus) aeRound(ctx context.Context, st *aeState) error {
	if err := b.checkEpoch(ctx, st); err != nil {
		return err
	}
	if err := b.checkRunIDs(ctx, st); err != nil {
		return err
	}
	return b.checkSequences(ctx, st)
}

// checkEpoch creates the namespace epoch key if missing (SET NX of a random
// value) and reads it; a value different from the last one seen means the
// key was lost (flush, restart without persistence, eviction, failover to a
// replica that never had it).
func (b *Bus) checkEpoch(ctx context.Context, st *aeState) error {
	if b.cluster != nil {
		return b.checkClusterEpochs(ctx, st)
	}
	fresh := freshEpoch()
	key := b.epochKeyFor(0)
	created, err := b.client.SetNX(ctx, key, fresh, 0).Result()
	if err != nil {
		return err
	}
	cur := fresh
	if !created {
		cur, err = b.client.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			cur = "" // deleted between the two commands: changed
		} else if err != nil {
			return err
		}
	}
	if st.epoch != "" && cur != st.epoch {
		b.log.Warn("namespace epoch key changed", zap.String("was", st.epoch), zap.String("now", cur))
		b.requestInvalidateAll(CauseEpoch)
	}
	st.epoch = cur
	return nil
}

// checkRunIDs compares the masters' run ids with the last round's.
func (b *Bus) checkRunIDs(ctx context.Context, st *aeState) error {
	if st.noRunID {
		return nil
	}
	var ids []string
	if b.cluster != nil {
		var mu sync.Mutex
		err := b.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			info, err := c.Info(ctx, "server").Result()
			if err != nil {
				return err
			}
			mu.Lock()
			ids = append(ids, c.Options().Addr+"="+redisinfo.Field(info, "run_id"))
			mu.Unlock()
			return nil
		})
		if err != nil {
			return err
		}
		slices.Sort(ids)
	} else {
		info, err := b.client.Info(ctx, "server").Result()
		var rerr redis.Error
		if errors.As(err, &rerr) {
			// miniredis has no server section; an ACL user may be refused
			// INFO. Either way restarts are then found by the epoch key
			// alone: say so once when it is a refusal.
			st.noRunID = true
			if strings.HasPrefix(rerr.Error(), "NOPERM") {
				b.log.Warn("invalidation: INFO refused; restarts without persistence are detected by the epoch key only (grant +info to check run ids)",
					zap.String("namespace", b.cfg.Namespace), zap.Error(err))
			}
			return nil
		}
		if err != nil {
			return err
		}
		ids = []string{redisinfo.Field(info, "run_id")}
	}
	cur := strings.Join(ids, ",")
	if st.runIDs != "" && cur != st.runIDs {
		b.log.Warn("redis server changed", zap.String("was", st.runIDs), zap.String("now", cur))
		b.requestInvalidateAll(CauseServerChanged)
		if b.cluster != nil {
			// Follow a new master set now rather than at the next look.
			select {
			case b.topoPoke <- struct{}{}:
			default:
			}
		} else {
			// A failover client moved its commands to a new master;
			// move the subscription too (see route.go).
			b.followServer(ctx)
		}
	}
	st.runIDs = cur
	return nil
}

// freshEpoch is a random epoch key value.
func freshEpoch() string {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	return hex.EncodeToString(raw[:])
}

// epochKeyFor is the epoch key hash-tagged to slot (slot 0 on a standalone
// or Sentinel-managed Redis; one per master on Redis Cluster, see
// checkClusterEpochs).
func (b *Bus) epochKeyFor(slot int) string {
	return wire.EpochKey(b.cfg.Namespace, slot)
}

// checkClusterEpochs keeps one epoch key per master of a Redis Cluster, in
// a slot that master owns (the one used before while the master still owns
// it, else its lowest), so that a flush or a restart without persistence of
// any master is seen, not only of the master holding slot 0. It creates
// each with SET NX and reads it in one pipeline (split per master). A value
// that changed for the same master and slot invalidates everything and
// makes this round read the sequence keys of every tracked partition that
// master owns. A master seen for the first time, or whose slot moved away
// (resharding), starts from what is read now.
func (b *Bus) checkClusterEpochs(ctx context.Context, st *aeState) error {
	ranges, err := b.cluster.ClusterSlots(ctx).Result()
	if err != nil {
		return err
	}
	owned := make(map[string][]redis.ClusterSlot)
	for _, r := range ranges {
		if len(r.Nodes) == 0 || r.Start < 0 || r.End >= hashslot.Count || r.Start > r.End {
			continue
		}
		owned[r.Nodes[0].Addr] = append(owned[r.Nodes[0].Addr], r)
	}
	if len(owned) == 0 {
		return errNoMasters
	}
	fresh := freshEpoch()
	type read struct {
		addr string
		slot int
		get  *redis.StringCmd
	}
	reads := make([]read, 0, len(owned))
	pipe := b.cluster.Pipeline()
	for addr, rs := range owned {
		slot := -1
		if prev, ok := st.epochs[addr]; ok && inRanges(prev.slot, rs) {
			slot = prev.slot
		} else {
			for _, r := range rs {
				if slot < 0 || r.Start < slot {
					slot = r.Start
				}
			}
		}
		key := b.epochKeyFor(slot)
		pipe.SetNX(ctx, key, fresh, 0)
		reads = append(reads, read{addr: addr, slot: slot, get: pipe.Get(ctx, key)})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	next := make(map[string]masterEpoch, len(reads))
	for _, r := range reads {
		cur, err := r.get.Result()
		if errors.Is(err, redis.Nil) {
			cur = "" // deleted between the two commands: changed
		} else if err != nil {
			return err
		}
		if prev, ok := st.epochs[r.addr]; ok && prev.slot == r.slot && prev.value != cur {
			b.log.Warn("namespace epoch key changed", zap.String("node", r.addr), zap.String("was", prev.value), zap.String("now", cur))
			b.requestInvalidateAll(CauseEpoch)
			b.touchSlots(owned[r.addr])
		}
		next[r.addr] = masterEpoch{slot: r.slot, value: cur}
	}
	st.epochs = next
	return nil
}

func inRanges(slot int, rs []redis.ClusterSlot) bool {
	for _, r := range rs {
		if slot >= r.Start && slot <= r.End {
			return true
		}
	}
	return false
}

// touchSlots makes the next sequence check read every tracked partition in rs.
func (b *Bus) touchSlots(rs []redis.ClusterSlot) {
	b.trackMu.Lock()
	defer b.trackMu.Unlock()
	for p, tr := range b.last {
		if !tr.touched && inRanges(p, rs) {
			tr.touched = true
			b.last[p] = tr
		}
	}
}

// checkSequences reads the sequence keys of every partition with traffic
// since the last round (or suspect, see trackMulti) and of up to maxAEKeys
// quiet ones, in turns. Anything this bus applied was published before the
// read, so a Redis value below it means the key was reset. A Redis value
// above what has been applied once the messages in flight had time to
// arrive (a short grace, then the queue drained) means the tail was lost.
//
// A reset of a quiet partition drops nothing until a message arrives there;
// that message touches the partition (and, on Redis Cluster, is applied and
// makes it suspect), so the next round reads it.
func (b *Bus) checkSequences(ctx context.Context, st *aeState) error {
	b.trackMu.Lock()
	hot, cold := st.hot[:0], st.cold[:0]
	for p, tr := range b.last {
		if tr.touched || tr.suspect {
			hot = append(hot, p)
			if tr.touched {
				tr.touched = false
				b.last[p] = tr
			}
		} else {
			cold = append(cold, p)
		}
	}
	b.trackMu.Unlock()
	st.hot, st.cold = hot, cold
	if len(cold) > maxAEKeys {
		slices.Sort(cold)
		start := st.cursor % len(cold)
		cold = slices.Concat(cold[start:], cold[:start])[:maxAEKeys]
		st.cursor = start + maxAEKeys
	}
	parts := append(append(st.partitions[:0], hot...), cold...)
	st.partitions = parts
	if len(parts) == 0 {
		return nil
	}
	err := b.compareSequences(ctx, st, parts)
	if err != nil {
		b.retouch(hot) // read them again next round
	}
	return err
}

// retouch marks partitions for the next round again.
func (b *Bus) retouch(parts []int) {
	b.trackMu.Lock()
	defer b.trackMu.Unlock()
	for _, p := range parts {
		if tr, ok := b.last[p]; ok && !tr.touched {
			tr.touched = true
			b.last[p] = tr
		}
	}
}

// compareSequences reads the sequence keys of parts (one pipeline, split per
// master on Redis Cluster) and compares them with what was applied.
func (b *Bus) compareSequences(ctx context.Context, st *aeState, parts []int) error {
	// Snapshot what was applied, then read Redis.
	snap := slices.Grow(st.snap[:0], len(parts))[:len(parts)]
	st.snap = snap
	b.trackMu.Lock()
	for i, p := range parts {
		tr := b.last[p]
		snap[i] = aeSnap{last: tr.last, anomalies: tr.anomalies, suspect: tr.suspect}
	}
	b.trackMu.Unlock()
	pipe := b.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(parts))
	for i, p := range parts {
		cmds[i] = pipe.Get(ctx, b.SeqKey(p))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	vals := make([]uint64, len(parts))
	for i, c := range cmds {
		v, err := c.Uint64()
		switch {
		case errors.Is(err, redis.Nil):
			v = 0
		case err != nil:
			return err
		}
		vals[i] = v
	}

	// Backwards: decided at once against the snapshot.
	b.trackMu.Lock()
	for i, p := range parts {
		cur, ok := b.last[p]
		if !ok {
			continue
		}
		switch {
		case vals[i] < snap[i].last:
			if cur.last == snap[i].last {
				// Track from Redis's value; a message published before
				// the read and still in flight is covered by the repair.
				// Each path keeps its memory, lowered to Redis's value:
				// a later reset must still go backwards on it (see
				// clampPaths).
				b.last[p] = track{last: vals[i], touched: cur.touched, paths: clampPaths(cur.paths, vals[i])}
			}
			b.stats.seqResets.Add(1)
			b.requestInvalidateAll(CauseSeqReset)
			b.log.Info("sequence key reset", zap.Int("partition", p), zap.Uint64("applied", snap[i].last), zap.Uint64("redis", vals[i]))
		case snap[i].suspect:
			// A subscription went backwards but Redis is not below what
			// was applied: a reset already overtaken by new traffic, a
			// replayed message, or a slot migration. The messages of the
			// old and the new numbering were applied, but a loss among
			// them could not be seen as a gap: repair.
			// Each path keeps its memory: a reset after this repair, before
			// the next message on a path, must still go backwards on it.
			if cur.anomalies == snap[i].anomalies {
				cur.suspect = false
				b.last[p] = cur
			}
			b.stats.seqResets.Add(1)
			b.requestInvalidateAll(CauseSeqReset)
			b.log.Info("sequence went backwards on a subscription", zap.Int("partition", p), zap.Uint64("applied", snap[i].last), zap.Uint64("redis", vals[i]))
		}
	}
	b.trackMu.Unlock()

	// Ahead: give messages in flight time to arrive and be applied.
	behind := false
	for i := range parts {
		if vals[i] > snap[i].last {
			behind = true
			break
		}
	}
	if !behind {
		return nil
	}
	if !b.drain(ctx) {
		return nil // the worker is busy; decide next round
	}
	b.trackMu.Lock()
	defer b.trackMu.Unlock()
	for i, p := range parts {
		if tr, ok := b.last[p]; ok && tr.last < vals[i] {
			cur := tr.last
			tr.last, tr.lateLo, tr.lateHi, tr.holes = vals[i], cur, vals[i], nil
			b.last[p] = tr
			b.stats.lostTails.Add(1)
			b.requestInvalidateAll(CauseLostTail)
			b.log.Info("lost tail", zap.Int("partition", p), zap.Uint64("applied", cur), zap.Uint64("redis", vals[i]))
		}
	}
	return nil
}

// drain makes sure that every message published before the sequence keys
// were read has been handled, and reports false (decide next round) when it
// cannot tell in time. On one server (standalone, Sentinel) it is exact: a
// PING sent on the subscription after the read comes back after every
// message the server had already pushed to it (pingSub), so once its pong
// is in, those messages are queued. On Redis Cluster, messages of slots
// owned by other masters cross the cluster bus asynchronously, so it waits
// a grace of half an interval instead. Then it waits until the worker has
// handled everything queued by then. A busy machine can delay the pong or
// the worker well past a short interval: that makes it report false, never
// a lost tail that was only late.
func (b *Bus) drain(ctx context.Context) bool {
	iv := b.cfg.AntiEntropyInterval
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	if b.multiPath {
		t.Reset(min(max(iv/2, 10*time.Millisecond), time.Second))
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	} else {
		s := b.singleSub()
		if s == nil {
			return false
		}
		fctx, cancel := context.WithTimeout(ctx, max(iv, time.Second))
		ok := b.pingSub(fctx, s)
		cancel()
		if !ok {
			return false
		}
	}
	target := b.enqueued.Load()
	deadline := time.Now().Add(max(iv, time.Second))
	for b.processed.Load() < target {
		if time.Now().After(deadline) {
			return false
		}
		t.Reset(time.Millisecond)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// clampPaths lowers every path's memory of a partition to v, the value of
// its sequence key that anti-entropy read below what was applied (a
// reset). Forgetting the paths would blind the bus to the next reset: its
// first message, at or below the partition's last, would find no path
// memory and be dropped as a copy. Keeping the old numbering's values
// would make every message of the new one below them go backwards.
// Lowered to v, a path still goes backwards on a reset to v or below; a
// copy of a message published before the read that arrives afterwards
// also does, and costs one more repair (applying it is safe).
func clampPaths(paths []pathSeq, v uint64) []pathSeq {
	for i := range paths {
		paths[i].last = min(paths[i].last, v)
	}
	return paths
}
