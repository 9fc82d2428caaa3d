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

	"github.com/nearcache/nearcache/internal/redisinfo"
)

// maxAEKeys bounds the sequence keys read per anti-entropy round; with more
// tracked partitions (Redis Cluster) the rounds take turns over them.
const maxAEKeys = 1024

// aeState belongs to the anti-entropy goroutine.
type aeState struct {
	epoch       string // last epoch key value seen; "" before the first round
	runIDs      string // sorted "addr=run_id" of the masters; "" before the first round
	noRunID     bool   // the server has no INFO server section (miniredis)
	cursor      int    // where the next round starts among tracked partitions
	partitions  []int  // scratch
	pendingRead []*redis.StringCmd
}

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
			b.log.Warn("anti-entropy round failed", zap.Error(err))
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
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	fresh := hex.EncodeToString(raw[:])
	created, err := b.client.SetNX(ctx, b.epochKey, fresh, 0).Result()
	if err != nil {
		return err
	}
	cur := fresh
	if !created {
		cur, err = b.client.Get(ctx, b.epochKey).Result()
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
			st.noRunID = true // e.g. miniredis: no server section
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

// checkSequences reads the sequence keys of (up to maxAEKeys) tracked
// partitions. Anything this bus applied was published before the read, so a
// Redis value below it means the key was reset. A Redis value above what has
// been applied once the messages in flight had time to arrive (a short
// grace, then the queue drained) means the tail was lost.
func (b *Bus) checkSequences(ctx context.Context, st *aeState) error {
	b.trackMu.Lock()
	parts := st.partitions[:0]
	for p := range b.last {
		parts = append(parts, p)
	}
	b.trackMu.Unlock()
	if len(parts) == 0 {
		return nil
	}
	slices.Sort(parts)
	if len(parts) > maxAEKeys {
		start := st.cursor % len(parts)
		parts = slices.Concat(parts[start:], parts[:start])[:maxAEKeys]
		st.cursor = start + maxAEKeys
	}
	st.partitions = parts

	// Snapshot what was applied, then read Redis.
	snap := make([]uint64, len(parts))
	b.trackMu.Lock()
	for i, p := range parts {
		snap[i] = b.last[p].last
	}
	b.trackMu.Unlock()
	pipe := b.client.Pipeline()
	cmds := st.pendingRead[:0]
	for _, p := range parts {
		cmds = append(cmds, pipe.Get(ctx, b.SeqKey(p)))
	}
	st.pendingRead = cmds
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
		if vals[i] < snap[i] {
			if b.last[p].last == snap[i] {
				b.last[p] = track{last: vals[i]}
			}
			b.stats.seqResets.Add(1)
			b.requestInvalidateAll(CauseSeqReset)
			b.log.Info("sequence key reset", zap.Int("partition", p), zap.Uint64("applied", snap[i]), zap.Uint64("redis", vals[i]))
		}
	}
	b.trackMu.Unlock()

	// Ahead: give messages in flight time to arrive and be applied.
	behind := false
	for i := range parts {
		if vals[i] > snap[i] {
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
			b.last[p] = track{last: vals[i], lateLo: cur, lateHi: vals[i]}
			b.stats.lostTails.Add(1)
			b.requestInvalidateAll(CauseLostTail)
			b.log.Info("lost tail", zap.Int("partition", p), zap.Uint64("applied", cur), zap.Uint64("redis", vals[i]))
		}
	}
	return nil
}

// drain waits a grace of half an interval for messages in flight (on Redis
// Cluster they cross the cluster bus asynchronously), then until the worker
// has handled everything the reader had queued by then. It reports false if
// that takes too long.
func (b *Bus) drain(ctx context.Context) bool {
	iv := b.cfg.AntiEntropyInterval
	grace := min(max(iv/2, 10*time.Millisecond), time.Second)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	target := b.enqueued.Load()
	deadline := time.Now().Add(max(iv/2, 50*time.Millisecond))
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
