package invalidation

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/wire"
)

// Sharded pub/sub on Redis Cluster.
//
// A PUBLISH on Redis Cluster crosses the cluster bus to every node, so the
// bus traffic of a fleet grows with writes × masters. Redis 7 has sharded
// pub/sub: an SPUBLISH stays on the master that owns its channel's slot
// (and its replicas). On a cluster client a bus publishes each partition's
// messages on its shard channel ({tag(p)}NS:inv, see wire.ShardChannel),
// in the write's slot; the script falls back to PUBLISH on NS:inv where
// Redis refuses SPUBLISH (a server before 7.0, an ACL without the shard
// channels) or where SPUBLISH reached no subscriber: during a slot's
// migration the writes of its moved keys run on the importing node (ASK),
// where no one can SSUBSCRIBE the slot before it owns it, while the
// subscribers on the source stay healthy.
//
// Each master's subscription carries, beside NS:inv (which hears instances
// that publish plainly and programs that follow the plain contract), one
// SSUBSCRIBE per slot the master owns: Redis refuses shard channels of
// several slots in one command. A member's channel is confirmed on a
// subscription once NS:inv and the shard channel of every slot wanted
// there are confirmed (chanState). The masters watcher assigns the slots
// (CLUSTER SLOTS) at every look; a slot that moves is announced by its old
// owner with an SUNSUBSCRIBE of its channels (or refused with MOVED): the
// slot is then uncovered, every member invalidates everything and stays
// unhealthy until a look assigns the slot to its new owner, whose
// subscription keeps the members unhealthy until it confirms the slot and
// then repairs again. Sequences, holes and anti-entropy are unchanged: a
// partition's messages arrive on one path at a time, and a write that ran
// on the new owner before the slot was subscribed there leaves a hole, a
// sequence key ahead, or both.
//
// go-redis resubscribes every shard channel of a PubSub in one command
// after a reconnect, which Redis refuses (CROSSSLOT); so a subscription
// with shard channels is replaced after any connection failure instead, and
// its I/O goroutine subscribes every slot again.

// uncoveredSrc is the health source of slots that lost their subscription
// and have not been assigned to a master's subscription since.
const uncoveredSrc = -1

// shardCapable reports whether a server's INFO says Redis 7 or later (it
// has SSUBSCRIBE). A server whose INFO cannot be read is tried.
func shardCapable(ctx context.Context, c *redis.Client) bool {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return true
	}
	v := redisinfo.Field(info, "redis_version")
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	return err != nil || n >= 7
}

// topology is one look at the cluster: its masters' clients by address
// and, when sharded pub/sub is on, the slots each owns.
type topology struct {
	nodes map[string]*redis.Client
	slots map[string]map[int]struct{}
}

// look lists the masters (ForEachMaster reloads the client's slot map
// first) and, with sharded pub/sub on, which slots each owns (CLUSTER
// SLOTS). A master new to the hub is asked its version (INFO); one before
// Redis 7 gets no slots: its writes fall back to PUBLISH.
func (h *hub) look(ctx context.Context) (topology, error) {
	nodes, err := h.masters(ctx)
	if err != nil {
		return topology{}, err
	}
	ranges, err := h.cluster.ClusterSlots(ctx).Result()
	var re redis.Error
	if errors.As(err, &re) {
		// Refused (a client built with ClusterOptions.ClusterSlots over
		// servers that are not a Redis Cluster): the client's own map.
		ranges, err = h.clientSlots(ctx)
	}
	if err != nil {
		return topology{}, err
	}
	// The owner of each range, as a master the client knows: the address
	// CLUSTER SLOTS gives, or (a client that maps addresses, with its own
	// ClusterSlots or NewClient) the master the client sends the range's
	// first slot to.
	owners := make([]string, len(ranges))
	for i, r := range ranges {
		if len(r.Nodes) == 0 {
			continue
		}
		owners[i] = r.Nodes[0].Addr
		if _, ok := nodes[owners[i]]; ok {
			continue
		}
		m, err := h.cluster.MasterForKey(ctx, hashslot.Tag(min(max(r.Start, 0), hashslot.Count-1)))
		if err != nil {
			return topology{}, err
		}
		if _, ok := nodes[m.Options().Addr]; !ok {
			// The slot map moved between the reads: look again.
			return topology{}, errors.New("invalidation: CLUSTER SLOTS names a master the client does not know: " + owners[i])
		}
		owners[i] = m.Options().Addr
	}
	h.mu.Lock()
	var ask []string
	for addr := range nodes {
		if _, ok := h.capable[addr]; !ok {
			ask = append(ask, addr)
		}
	}
	h.mu.Unlock()
	if len(ask) > 0 {
		var mu sync.Mutex
		var wg sync.WaitGroup
		found := make(map[string]bool, len(ask))
		for _, addr := range ask {
			wg.Go(func() {
				ok := shardCapable(ctx, nodes[addr])
				mu.Lock()
				found[addr] = ok
				mu.Unlock()
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return topology{}, ctx.Err()
		}
		h.mu.Lock()
		for addr, ok := range found {
			h.capable[addr] = ok
			if !ok {
				h.log.Warn("a cluster master runs Redis before 7.0: its slots' invalidations use PUBLISH (over the cluster bus)", zap.String("node", addr))
			}
		}
		h.mu.Unlock()
	}
	slots := make(map[string]map[int]struct{}, len(nodes))
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, r := range ranges {
		addr := owners[i]
		if addr == "" || !h.capable[addr] {
			continue
		}
		set := slots[addr]
		if set == nil {
			set = make(map[int]struct{})
			slots[addr] = set
		}
		for sl := max(r.Start, 0); sl <= min(r.End, hashslot.Count-1); sl++ {
			set[sl] = struct{}{}
		}
	}
	return topology{nodes: nodes, slots: slots}, nil
}

// clientSlots is the cluster client's own slot map, in CLUSTER SLOTS
// form: the master it sends each slot's commands to.
func (h *hub) clientSlots(ctx context.Context) ([]redis.ClusterSlot, error) {
	var out []redis.ClusterSlot
	for sl := 0; sl < hashslot.Count; sl++ {
		c, err := h.cluster.MasterForKey(ctx, hashslot.Tag(sl))
		if err != nil {
			return nil, err
		}
		addr := c.Options().Addr
		if n := len(out); n > 0 && out[n-1].End == sl-1 && out[n-1].Nodes[0].Addr == addr {
			out[n-1].End = sl
			continue
		}
		out = append(out, redis.ClusterSlot{Start: sl, End: sl, Nodes: []redis.ClusterNode{{Addr: addr}}})
	}
	return out, nil
}

// setSlotsLocked makes want the slots of s: the I/O goroutine subscribes
// the new ones and unsubscribes the departed ones (see reconcile). A new
// slot keeps the members unhealthy on s until it is confirmed, which then
// repairs. It reports whether the set changed. h.mu is held.
func (h *hub) setSlotsLocked(s *sub, want map[int]struct{}) bool {
	changed := len(want) != len(s.slots)
	added := false
	for sl := range want {
		if _, ok := s.slots[sl]; !ok {
			changed, added = true, true
			break
		}
	}
	if !changed {
		return false
	}
	s.slots = want
	if added {
		for ch, cs := range s.chans {
			cs.confirmed, cs.failing = false, true
			for _, m := range h.members(ch) {
				m.health.set(s.id, reasonNotSubscribed)
			}
		}
	}
	for ch, cs := range s.chans {
		h.settleLocked(s, ch, cs)
	}
	s.pokeIO()
	return true
}

// lostShard handles the loss of slot's subscription on s: its master
// unsubscribed its channels (the slot moved away) or refused them (MOVED).
// Every member invalidates everything and stays unhealthy until a look at
// the cluster assigns the slot anew; the watcher looks now.
func (h *hub) lostShard(s *sub, slot int, why string) {
	h.mu.Lock()
	if _, ok := s.slots[slot]; !ok || s.stopped || h.closed {
		h.mu.Unlock()
		return
	}
	delete(s.slots, slot)
	first := h.uncovered == 0
	h.uncovered++
	for ch, cs := range s.chans {
		if done, ok := cs.shards[slot]; ok {
			delete(cs.shards, slot)
			if !done {
				cs.shardWait--
			}
		}
		h.settleLocked(s, ch, cs)
	}
	for _, m := range h.everyone() {
		m.health.set(uncoveredSrc, reasonNotSubscribed)
		m.requestInvalidateAll(CauseServerChanged)
	}
	h.mu.Unlock()
	if first {
		// Once per run of moved slots (a reshard moves thousands); the
		// look that assigns them again logs how many.
		h.log.Info("a slot's invalidation channel left its subscription; following the cluster", zap.Int("slot", slot), zap.String("node", s.addr), zap.String("why", why))
	}
	h.pokeTopology()
}

// pokeTopology asks the masters watcher to look at the cluster soon.
func (h *hub) pokeTopology() {
	select {
	case h.topoPoke <- struct{}{}:
	default:
	}
}

// refuseShards turns sharded subscriptions off for the hub's life: Redis
// refused SSUBSCRIBE (an ACL without the shard channels, or a server that
// lacks it). The subscriptions keep NS:inv; a publisher's script falls back
// to PUBLISH where Redis refuses it SPUBLISH too. Says once what to grant.
func (h *hub) refuseShards(err error) {
	if !h.shardOff.CompareAndSwap(false, true) {
		return
	}
	h.mu.Lock()
	for _, s := range h.subs {
		h.setSlotsLocked(s, nil)
	}
	h.uncovered = 0
	for _, m := range h.everyone() {
		m.health.clear(uncoveredSrc, reasonNotSubscribed)
		m.requestInvalidateAll(CauseServerChanged)
	}
	chs := h.channels()
	h.mu.Unlock()
	grants := make([]string, len(chs))
	for i, ch := range chs {
		grants[i] = "&{*}" + ch
	}
	h.log.Warn("Redis refused the shard channels (SSUBSCRIBE); subscriptions use the plain channel only. Writes of instances that may use the shard channels would not reach this one: while any instance subscribes them, this one stays unhealthy (local copies live at most the cache's unhealthy TTL). Grant the shard channels",
		zap.Strings("grant", grants), zap.Error(err))
	h.pokeTopology() // look for such instances now
}

// refusedSrc is the health source of a hub whose shard channels Redis
// refused while other instances subscribe them (see checkShardListeners).
const refusedSrc = -2

// checkShardListeners runs at every look of a hub whose shard channels
// Redis refused: it cannot hear SPUBLISH. That is safe while no instance
// subscribes them, since an SPUBLISH that reaches no one falls back to
// PUBLISH in the script. While some instance does (its user may use them),
// its writes' SPUBLISH reaches it and not this hub: every member is then
// unhealthy, and invalidates everything when that starts. A count that
// cannot be read counts as a listener. One shard channel per master and
// member is asked (PUBSUB SHARDNUMSUB): an instance that subscribes the
// shard channels subscribes every slot.
func (h *hub) checkShardListeners(ctx context.Context, topo topology) {
	chs := h.channels()
	seen := false
	var why error
	for addr, set := range topo.slots {
		c := topo.nodes[addr]
		if c == nil || len(set) == 0 {
			continue
		}
		slot := hashslot.Count
		for sl := range set {
			slot = min(slot, sl)
		}
		probe := make([]string, len(chs))
		for i, ch := range chs {
			probe[i] = wire.ShardOf(ch, slot)
		}
		n, err := c.PubSubShardNumSub(ctx, probe...).Result()
		if err != nil {
			seen, why = true, err
			break
		}
		for _, k := range n {
			if k > 0 {
				seen = true
			}
		}
	}
	h.mu.Lock()
	was := h.listeners
	h.listeners = seen
	for _, m := range h.everyone() {
		if seen {
			m.health.set(refusedSrc, reasonNotSubscribed)
			if !was {
				m.requestInvalidateAll(CauseServerChanged)
			}
		} else {
			m.health.clear(refusedSrc, reasonNotSubscribed)
		}
	}
	h.mu.Unlock()
	if seen && !was {
		h.log.Warn("other instances subscribe the shard channels this user may not use: their writes do not reach this instance, which stays unhealthy while they do", zap.Error(why))
	}
}

// shardReplyErr classifies an error reply read on a subscription with
// shard channels: MOVED names a slot its master no longer owns
// (moved >= 0); refused: Redis will not let the user (or cannot) use
// SSUBSCRIBE.
func shardReplyErr(err error) (moved int, refused bool) {
	var re redis.Error
	if !errors.As(err, &re) {
		return -1, false
	}
	msg := re.Error()
	if rest, ok := strings.CutPrefix(msg, "MOVED "); ok {
		f, _, _ := strings.Cut(rest, " ")
		if n, err := strconv.Atoi(f); err == nil && n >= 0 && n < hashslot.Count {
			return n, false
		}
	}
	if strings.HasPrefix(msg, "NOPERM") || strings.Contains(strings.ToLower(msg), "unknown command") {
		return -1, true
	}
	return -1, false
}

// shardPlan is what reconcile sends of shard channels: per slot, the
// channels to subscribe or unsubscribe.
type shardPlan struct {
	add, drop map[int][]string
}

// planShardsLocked brings the shard state of every channel of s in line
// with its members and slots: the departed slots (and every slot of a
// channel no member has) are forgotten and listed to unsubscribe, the
// wanted slots not sent on this connection are marked sent and listed to
// subscribe. member reports whether a channel still has members. h.mu is
// held.
func (h *hub) planShardsLocked(s *sub, ch string, cs *chanState, member bool, p *shardPlan) {
	for sl, done := range cs.shards {
		if _, ok := s.slots[sl]; ok && member {
			continue
		}
		delete(cs.shards, sl)
		if !done {
			cs.shardWait--
		}
		if h.shardOff.Load() {
			continue // refused: nothing to unsubscribe
		}
		if p.drop == nil {
			p.drop = make(map[int][]string)
		}
		p.drop[sl] = append(p.drop[sl], wire.ShardOf(ch, sl))
	}
	if !member {
		return
	}
	for sl := range s.slots {
		if _, ok := cs.shards[sl]; ok {
			continue
		}
		if cs.shards == nil {
			cs.shards = make(map[int]bool, len(s.slots))
		}
		cs.shards[sl] = false
		cs.shardWait++
		if p.add == nil {
			p.add = make(map[int][]string)
		}
		p.add[sl] = append(p.add[sl], wire.ShardOf(ch, sl))
	}
	h.settleLocked(s, ch, cs)
}

// sendShards sends the plan on ps: an SUNSUBSCRIBE, then an SSUBSCRIBE,
// per slot, in slot order. It returns the slots whose SSUBSCRIBE was not
// sent (the one that failed and those after it, or all those left once
// Redis refused the shard channels: off reports it), and the channels of
// the SUNSUBSCRIBEs that failed (taken for not sent: a reply that comes
// anyway is then taken for the master's, which only repairs).
func sendShards(ctx context.Context, ps *redis.PubSub, p shardPlan, off func() bool) (unsent []int, undropped []string) {
	for _, sl := range slices.Sorted(maps.Keys(p.drop)) {
		if err := ps.SUnsubscribe(ctx, p.drop[sl]...); err != nil {
			undropped = append(undropped, p.drop[sl]...)
		}
	}
	add := slices.Sorted(maps.Keys(p.add))
	for i, sl := range add {
		if off() {
			return add[i:], undropped
		}
		if err := ps.SSubscribe(ctx, p.add[sl]...); err != nil {
			return add[i:], undropped
		}
	}
	return nil, undropped
}

// unsentDropsLocked counts off the SUNSUBSCRIBEs of chs that were not sent
// on ps (see sub.ownUnsub). h.mu is held.
func unsentDropsLocked(s *sub, ps *redis.PubSub, chs []string) {
	if s.ps != ps {
		return // replaced: the counts went with the old connection
	}
	for _, c := range chs {
		switch n := s.ownUnsub[c]; {
		case n > 1:
			s.ownUnsub[c] = n - 1
		case n == 1:
			delete(s.ownUnsub, c)
		}
	}
}

// unsendShardsLocked marks slots' SSUBSCRIBE as not sent on s, to be sent
// again. h.mu is held.
func unsendShardsLocked(s *sub, slots []int) {
	for _, cs := range s.chans {
		for _, sl := range slots {
			if done, ok := cs.shards[sl]; ok {
				delete(cs.shards, sl)
				if !done {
					cs.shardWait--
				}
			}
		}
	}
}

// sharded reports whether s carries shard channels (wants any slot).
func (h *hub) sharded(s *sub) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(s.slots) > 0
}

// shardLeft handles an SUNSUBSCRIBE of a shard channel read on s. The
// replies to the bus's own are counted off first (ownUnsub: the slot may
// be wanted again by then, as when a namespace's bus closes and another
// starts); the bus's own are forgotten before they are sent
// (planShardsLocked), so any other reply for a channel still held is
// one its master dropped: the slot moved away. Should the master drop a
// slot while the bus's SUNSUBSCRIBE of it is in flight, Redis replies
// to both, so whichever is counted off, the other is seen.
func (h *hub) shardLeft(s *sub, channel string) {
	base, slot, shard := wire.SplitChannel(channel)
	if !shard {
		return
	}
	h.mu.Lock()
	if n := s.ownUnsub[channel]; n > 0 {
		if n == 1 {
			delete(s.ownUnsub, channel)
		} else {
			s.ownUnsub[channel] = n - 1
		}
		h.mu.Unlock()
		return
	}
	held := false
	if cs := s.chans[base]; cs != nil {
		_, held = cs.shards[slot]
	}
	h.mu.Unlock()
	if held {
		h.lostShard(s, slot, "the master unsubscribed the slot's channel")
	}
}
