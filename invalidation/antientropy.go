package invalidation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
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

// aeState belongs to the hub's anti-entropy goroutine.
type aeState struct {
	runIDs     string         // sorted "addr=run_id" of the masters; "" before the first round
	noRunID    bool           // the server has no INFO server section (miniredis)
	epochSlots map[string]int // Redis Cluster: the slot of each master's epoch keys
}

// memberAE is one member's anti-entropy state, used by the hub's
// anti-entropy goroutine only.
type memberAE struct {
	epoch      string                 // last epoch key value seen; "" before the first round
	epochs     map[string]masterEpoch // Redis Cluster: by master address
	cursor     int                    // where the next round starts among the quiet partitions
	hot, cold  []int                  // scratch
	partitions []int                  // scratch: the partitions of this round
	snap       []aeSnap               // scratch
	vals       []uint64               // scratch: their sequence keys' values
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
// One loop serves every member: each round reads every member's epoch and
// sequence keys in one command per slot (MGET), so its commands do not grow
// with the number of members. A round runs every AntiEntropyInterval, and
// soon after a member's Start is confirmed, so that its first view of the
// epoch key is taken before it fills anything it could lose.
func (h *hub) antiEntropy(ctx context.Context) {
	defer h.wg.Done()
	select {
	case <-h.aePoke:
	case <-ctx.Done():
		return
	}
	iv := h.cfg.AntiEntropyInterval
	t := time.NewTimer(iv)
	defer t.Stop()
	var st aeState
	var backoff time.Duration // after failed rounds
	for {
		began := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 2*iv+500*time.Millisecond)
		failed, err := h.aeRound(rctx, &st)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			h.aeFails.Fail("", err)
		}
		for _, m := range h.everyone() {
			if err != nil && (failed == nil || failed[m]) {
				m.stats.aeErrors.Add(1)
				m.health.set(busWide, reasonAntiEntropy)
			} else {
				m.stats.aeRounds.Add(1)
				m.health.clear(busWide, reasonAntiEntropy)
			}
		}
		// Every iv on the hub's grid (see grid.go): at the first point
		// after the round began. A round that overran that point is
		// followed at once, as a ticker's pending tick would have it
		// (the sequence keys are read at least every max(iv, round),
		// not up to a whole iv after a long round ends); the further
		// points it covered are skipped.
		next := time.Until(h.grid.after(began, iv))
		if err != nil {
			// A failed round keeps the members unhealthy until one
			// succeeds: retry soon (a master down during a failover is
			// replaced within seconds), not a whole interval later.
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			next = min(next, backoff)
		} else {
			backoff = 0
		}
		t.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.aePoke:
		}
	}
}

// aeRound runs one round for every member. It returns nil, nil when the
// round succeeded; failed == nil and an error when it failed for every
// member; else the members whose round failed and the first of their
// errors.
//
// A round reads every namespace's keys together, so a refusal or an
// unreadable key of one namespace (an ACL user without its keys, a key
// holding something else) fails the commands of all of them. Then the
// round is run again for each namespace alone, so that one namespace's
// keys never blind the loss detection of the others (each is judged on
// its own keys, as if it had its own transport).
func (h *hub) aeRound(ctx context.Context, st *aeState) (failed map[*Bus]bool, err error) {
	ms := h.everyone()
	var ahead *aeAhead
	if h.cluster == nil {
		ahead = h.readAhead(ctx, st, ms)
		defer func() {
			if !ahead.seqsJudged {
				// The round ended before the sequence keys read
				// ahead were judged: read their partitions again
				// next round.
				ahead.seqs.retouch(ms)
			}
		}()
	}
	eerr := h.checkEpochs(ctx, st, ms, ahead)
	if eerr != nil && !isKeyError(eerr) {
		return nil, eerr
	}
	if err := h.checkRunIDs(ctx, st, ahead); err != nil {
		return nil, err
	}
	if eerr == nil {
		var serr error
		if ahead != nil {
			ahead.seqsJudged = true
			_, serr = ahead.seqs.judge(ctx, ms, h.drain)
		} else {
			_, serr = checkSequences(ctx, h.client, ms, h.drain)
		}
		if serr == nil || !isKeyError(serr) {
			return nil, serr
		}
	}
	if ahead != nil && !ahead.seqsJudged {
		// Before the namespaces' own rounds collect again.
		ahead.seqsJudged = true
		ahead.seqs.retouch(ms)
	}
	byNS := make(map[string][]*Bus)
	var order []string
	for _, m := range ms {
		if byNS[m.cfg.Namespace] == nil {
			order = append(order, m.cfg.Namespace)
		}
		byNS[m.cfg.Namespace] = append(byNS[m.cfg.Namespace], m)
	}
	failed = make(map[*Bus]bool)
	for _, ns := range order {
		g := byNS[ns]
		gerr := h.checkEpochs(ctx, st, g, nil)
		if gerr == nil {
			_, gerr = checkSequences(ctx, h.client, g, h.drain)
		}
		if gerr == nil {
			continue
		}
		if !isKeyError(gerr) {
			return nil, gerr
		}
		for _, m := range g {
			failed[m] = true
		}
		if err == nil {
			err = fmt.Errorf("namespace %q: %w", ns, gerr)
		}
	}
	if err == nil {
		// The keys read fine one namespace at a time (fixed meanwhile).
		return nil, nil
	}
	return failed, err
}

// aeAhead is what a round on one server reads ahead in one pipeline (one
// round trip rather than three, see grid.go): the epoch keys, the run id
// (nil when the server has none) and the sequence keys. It is judged in the
// order the reads were made before, epoch keys first.
type aeAhead struct {
	epochs     *redis.SliceCmd
	info       *redis.StringCmd
	seqs       *seqReads
	seqsJudged bool // the sequence keys were handed to seqs.judge
}

// readAhead sends the round's reads on one server. The sequence keys'
// partitions are collected (and their applied values snapshot) before the
// pipeline is sent, as checkSequences does; errors stay in the commands.
func (h *hub) readAhead(ctx context.Context, st *aeState, ms []*Bus) *aeAhead {
	a := &aeAhead{seqs: collectSeqs(ms, false)}
	pipe := h.client.Pipeline()
	a.epochs = pipe.MGet(ctx, epochKeys(ms, 0)...)
	if !st.noRunID {
		a.info = pipe.Info(ctx, "server")
	}
	a.seqs.queue(ctx, pipe)
	_, _ = pipe.Exec(ctx)
	return a
}

// errNotSequence: a sequence key holds something else than a sequence.
var errNotSequence = errors.New("invalidation: not a sequence")

// isKeyError reports whether err concerns the keys read rather than the
// connection: Redis refused a command (ACL) or a key (wrong type), or a
// sequence key holds garbage.
func isKeyError(err error) bool {
	var re redis.Error
	return errors.Is(err, errNotSequence) || (errors.As(err, &re) && !errors.Is(err, redis.Nil))
}

// isPassingState reports whether err is Redis answering a state that
// passes rather than a lasting refusal: busy with a script, loading its
// data, a replica that lost its master, a slot in migration, a connection
// not authenticated yet. Such an answer to INFO fails the round; it never
// turns the run id check off for good (see checkRunIDs).
func isPassingState(err error) bool {
	for _, p := range []string{"BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "NOAUTH"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// epochKeys lists the distinct epoch keys of ms's namespaces in slot.
func epochKeys(ms []*Bus, slot int) []string {
	keys := make([]string, 0, len(ms))
	for _, m := range ms {
		k := wire.EpochKey(m.cfg.Namespace, slot)
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// readEpochs reads the epoch keys of each group (keys of one slot) with one
// MGET per group, creates the missing ones (SET NX of one random value)
// and reads them again: a key deleted between the two reads is "". The
// result maps each key to its value. ahead, when not nil, is the MGET of
// the only group, already sent (see readAhead).
func readEpochs(ctx context.Context, c redis.UniversalClient, groups [][]string, ahead *redis.SliceCmd) (map[string]string, error) {
	cmds := make([]*redis.SliceCmd, len(groups))
	if ahead != nil {
		cmds[0] = ahead
		if err := ahead.Err(); err != nil {
			return nil, err
		}
	} else {
		pipe := c.Pipeline()
		for i, g := range groups {
			cmds[i] = pipe.MGet(ctx, g...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
	}
	vals := make(map[string]string)
	var missing []string
	for i, g := range groups {
		for j, v := range cmds[i].Val() {
			if s, ok := v.(string); ok {
				vals[g[j]] = s
			} else {
				missing = append(missing, g[j])
			}
		}
	}
	if len(missing) == 0 {
		return vals, nil
	}
	fresh := freshEpoch()
	pipe := c.Pipeline()
	gets := make([]*redis.StringCmd, len(missing))
	for i, k := range missing {
		pipe.SetNX(ctx, k, fresh, 0)
		gets[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, k := range missing {
		v, err := gets[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
			v = "" // deleted between the two commands: changed
		case err != nil:
			return nil, err
		}
		vals[k] = v
	}
	return vals, nil
}

// checkEpochs reads each member's namespace epoch key, creating it if
// missing; a value different from the last one the member saw means the
// key was lost (flush, restart without persistence, eviction, failover to
// a replica that never had it).
func (h *hub) checkEpochs(ctx context.Context, st *aeState, ms []*Bus, ahead *aeAhead) error {
	if len(ms) == 0 {
		return nil
	}
	if h.cluster != nil {
		return h.checkClusterEpochs(ctx, st, ms)
	}
	var pre *redis.SliceCmd
	if ahead != nil {
		pre = ahead.epochs
	}
	vals, err := readEpochs(ctx, h.client, [][]string{epochKeys(ms, 0)}, pre)
	if err != nil {
		return err
	}
	for _, m := range ms {
		cur := vals[wire.EpochKey(m.cfg.Namespace, 0)]
		if m.ae.epoch != "" && cur != m.ae.epoch {
			m.log.Warn("namespace epoch key changed", zap.String("was", m.ae.epoch), zap.String("now", cur))
			m.requestInvalidateAll(CauseEpoch)
		}
		m.ae.epoch = cur
	}
	return nil
}

// checkRunIDs compares the masters' run ids with the last round's; on one
// server, ahead (when not nil) holds the INFO already sent.
func (h *hub) checkRunIDs(ctx context.Context, st *aeState, ahead *aeAhead) error {
	if st.noRunID {
		return nil
	}
	var ids []string
	if h.cluster != nil {
		var mu sync.Mutex
		err := h.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
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
		var (
			info string
			err  error
		)
		if ahead != nil && ahead.info != nil {
			info, err = ahead.info.Result()
		} else {
			info, err = h.client.Info(ctx, "server").Result()
		}
		var rerr redis.Error
		if errors.As(err, &rerr) && !isPassingState(err) {
			// miniredis has no server section; an ACL user may be refused
			// INFO. Either way restarts are then found by the epoch key
			// alone: say so once when it is a refusal.
			st.noRunID = true
			if strings.HasPrefix(rerr.Error(), "NOPERM") {
				h.log.Warn("invalidation: INFO refused; restarts without persistence are detected by the epoch key only (grant +info to check run ids)",
					zap.String("namespace", h.cfg.Namespace), zap.Error(err))
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
		h.log.Warn("redis server changed", zap.String("was", st.runIDs), zap.String("now", cur))
		h.invalidateAll(CauseServerChanged)
		if h.cluster != nil {
			// Follow a new master set now rather than at the next look.
			select {
			case h.topoPoke <- struct{}{}:
			default:
			}
		} else {
			// A failover client moved its commands to a new master;
			// move the subscription too (see route.go).
			h.followServer(ctx)
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

// checkClusterEpochs keeps one epoch key per namespace and master of a
// Redis Cluster, in a slot that master owns (the one used before while the
// master still owns it, else its lowest), so that a flush or a restart
// without persistence of any master is seen, not only of the master
// holding slot 0. The keys of one master share that slot, so one MGET per
// master reads every member's; missing ones are created with SET NX. A
// value that changed for the same master and slot invalidates the member's
// copies and makes its next sequence check read every tracked partition
// that master owns. A master seen for the first time, or whose slot moved
// away (resharding), starts from what is read now.
func (h *hub) checkClusterEpochs(ctx context.Context, st *aeState, ms []*Bus) error {
	ranges, err := h.cluster.ClusterSlots(ctx).Result()
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
	slots := make(map[string]int, len(owned))
	addrs := make([]string, 0, len(owned))
	groups := make([][]string, 0, len(owned))
	for addr, rs := range owned {
		slot := -1
		if prev, ok := st.epochSlots[addr]; ok && inRanges(prev, rs) {
			slot = prev
		} else {
			for _, r := range rs {
				if slot < 0 || r.Start < slot {
					slot = r.Start
				}
			}
		}
		slots[addr] = slot
		addrs = append(addrs, addr)
		groups = append(groups, epochKeys(ms, slot))
	}
	vals, err := readEpochs(ctx, h.cluster, groups, nil)
	if err != nil {
		return err
	}
	for _, m := range ms {
		next := make(map[string]masterEpoch, len(addrs))
		for _, addr := range addrs {
			slot := slots[addr]
			cur := vals[wire.EpochKey(m.cfg.Namespace, slot)]
			if prev, ok := m.ae.epochs[addr]; ok && prev.slot == slot && prev.value != cur {
				m.log.Warn("namespace epoch key changed", zap.String("node", addr), zap.String("was", prev.value), zap.String("now", cur))
				m.requestInvalidateAll(CauseEpoch)
				m.touchSlots(owned[addr])
			}
			next[addr] = masterEpoch{slot: slot, value: cur}
		}
		m.ae.epochs = next
	}
	st.epochSlots = slots
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

// checkSequences reads, for each member, the sequence keys of every
// partition with traffic since the last round (or suspect, see trackMulti)
// and of up to maxAEKeys quiet ones, in turns: one MGET per slot (the keys
// of a partition share its slot whatever the namespace). Anything a member
// applied was published before the read, so a Redis value below it means
// the key was reset. A Redis value above what has been applied once the
// messages in flight had time to arrive (drain) means the tail was lost.
// It returns how many keys it read.
//
// A reset of a quiet partition drops nothing until a message arrives there;
// that message touches the partition (and, on Redis Cluster, is applied and
// makes it suspect), so the next round reads it.
func checkSequences(ctx context.Context, c redis.UniversalClient, ms []*Bus, drain func(context.Context) bool) (int, error) {
	_, cluster := c.(*redis.ClusterClient)
	r := collectSeqs(ms, cluster)
	if r.empty() {
		return 0, nil
	}
	pipe := c.Pipeline()
	r.queue(ctx, pipe)
	_, _ = pipe.Exec(ctx) // each MGET holds its error
	return r.judge(ctx, ms, drain)
}

// seqReads is one round's read of sequence keys: one MGET per slot.
type seqReads struct {
	order  []int // slots, in the order their keys were first met
	bySlot map[int]*slotKeys
}

type slotKeys struct {
	keys []string
	cmd  *redis.SliceCmd
}

// collectSeqs picks every member's partitions of this round (aeCollect,
// which snapshots what was applied to them: do it before the read) and
// groups their sequence keys by slot (one group on one server).
func collectSeqs(ms []*Bus, cluster bool) *seqReads {
	r := &seqReads{bySlot: make(map[int]*slotKeys)}
	for _, m := range ms {
		for _, p := range m.aeCollect() {
			slot := 0 // one server: one MGET for everything
			if cluster {
				slot = wire.Partition(p)
			}
			g := r.bySlot[slot]
			if g == nil {
				g = &slotKeys{}
				r.bySlot[slot] = g
				r.order = append(r.order, slot)
			}
			if k := wire.SeqKey(m.cfg.Namespace, p); !slices.Contains(g.keys, k) {
				g.keys = append(g.keys, k)
			}
		}
	}
	return r
}

// empty reports whether no member has a partition to check.
func (r *seqReads) empty() bool { return r == nil || len(r.order) == 0 }

// queue adds the MGETs to pipe.
func (r *seqReads) queue(ctx context.Context, pipe redis.Pipeliner) {
	for _, slot := range r.order {
		g := r.bySlot[slot]
		g.cmd = pipe.MGet(ctx, g.keys...)
	}
}

// retouch marks the partitions collected for the next round again (their
// keys were not read, or not judged).
func (r *seqReads) retouch(ms []*Bus) {
	if r.empty() {
		return
	}
	for _, m := range ms {
		m.retouch(m.ae.hot)
	}
}

// judge compares the values the queued MGETs read with what the members
// applied (see checkSequences). It returns the number of keys read.
func (r *seqReads) judge(ctx context.Context, ms []*Bus, drain func(context.Context) bool) (int, error) {
	if r.empty() {
		return 0, nil
	}
	read := 0
	var err error
	for _, slot := range r.order {
		g := r.bySlot[slot]
		read += len(g.keys)
		if err == nil {
			err = g.cmd.Err()
		}
	}
	vals := make(map[string]uint64, read)
	for _, slot := range r.order {
		if err != nil {
			break
		}
		g := r.bySlot[slot]
		for i, v := range g.cmd.Val() {
			var n uint64
			if s, ok := v.(string); ok {
				if n, err = strconv.ParseUint(s, 10, 64); err != nil {
					err = fmt.Errorf("%w: sequence key %q holds %q: %w", errNotSequence, g.keys[i], s, err)
					break
				}
			}
			vals[g.keys[i]] = n
		}
	}
	if err != nil {
		for _, m := range ms {
			m.retouch(m.ae.hot) // read them again next round
		}
		return read, err
	}
	behind := false
	for _, m := range ms {
		if m.aeBackwards(vals) {
			behind = true
		}
	}
	if !behind || !drain(ctx) {
		return read, nil // nothing ahead, or the worker is busy: decide next round
	}
	for _, m := range ms {
		m.aeLostTails()
	}
	return read, nil
}

// aeCollect picks the member's partitions of this round (see
// checkSequences) and snapshots what was applied to them.
func (b *Bus) aeCollect() []int {
	st := &b.ae
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
	snap := slices.Grow(st.snap[:0], len(parts))[:len(parts)]
	st.snap = snap
	b.trackMu.Lock()
	for i, p := range parts {
		tr := b.last[p]
		snap[i] = aeSnap{last: tr.last, anomalies: tr.anomalies, suspect: tr.suspect}
	}
	b.trackMu.Unlock()
	return parts
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

// aeBackwards compares the member's partitions of this round with the
// values read (vals, by sequence key), repairs those Redis holds below what
// was applied (decided at once against the snapshot), and reports whether
// Redis is ahead on any.
func (b *Bus) aeBackwards(vals map[string]uint64) (ahead bool) {
	st := &b.ae
	parts, snap := st.partitions, st.snap
	st.vals = slices.Grow(st.vals[:0], len(parts))[:len(parts)]
	for i, p := range parts {
		st.vals[i] = vals[wire.SeqKey(b.cfg.Namespace, p)]
	}
	b.trackMu.Lock()
	defer b.trackMu.Unlock()
	for i, p := range parts {
		v := st.vals[i]
		if v > snap[i].last {
			ahead = true
		}
		cur, ok := b.last[p]
		if !ok {
			continue
		}
		switch {
		case v < snap[i].last:
			if cur.last == snap[i].last {
				// Track from Redis's value; a message published before
				// the read and still in flight is covered by the repair.
				// Each path keeps its memory, lowered to Redis's value:
				// a later reset must still go backwards on it (see
				// clampPaths).
				b.last[p] = track{last: v, touched: cur.touched, paths: clampPaths(cur.paths, v)}
			}
			b.stats.seqResets.Add(1)
			b.requestInvalidateAll(CauseSeqReset)
			b.log.Info("sequence key reset", zap.Int("partition", p), zap.Uint64("applied", snap[i].last), zap.Uint64("redis", v))
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
			b.log.Info("sequence went backwards on a subscription", zap.Int("partition", p), zap.Uint64("applied", snap[i].last), zap.Uint64("redis", v))
		}
	}
	return ahead
}

// aeLostTails repairs the member's partitions still behind the values read,
// once the messages in flight have been handled (see drain).
func (b *Bus) aeLostTails() {
	st := &b.ae
	b.trackMu.Lock()
	defer b.trackMu.Unlock()
	for i, p := range st.partitions {
		if tr, ok := b.last[p]; ok && tr.last < st.vals[i] {
			cur := tr.last
			tr.last, tr.lateLo, tr.lateHi, tr.holes = st.vals[i], cur, st.vals[i], nil
			b.last[p] = tr
			b.stats.lostTails.Add(1)
			b.requestInvalidateAll(CauseLostTail)
			b.log.Info("lost tail", zap.Int("partition", p), zap.Uint64("applied", cur), zap.Uint64("redis", st.vals[i]))
		}
	}
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
func (h *hub) drain(ctx context.Context) bool {
	iv := h.cfg.AntiEntropyInterval
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	if h.multiPath {
		t.Reset(min(max(iv/2, 10*time.Millisecond), time.Second))
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	} else {
		s := h.singleSub()
		if s == nil {
			return false
		}
		fctx, cancel := context.WithTimeout(ctx, max(iv, time.Second))
		ok := h.pingSub(fctx, s)
		cancel()
		if !ok {
			return false
		}
	}
	target := h.enqueued.Load()
	deadline := time.Now().Add(max(iv, time.Second))
	for h.processed.Load() < target {
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
