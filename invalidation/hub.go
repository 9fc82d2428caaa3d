package invalidation

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/nearcache/nearcache/internal/episode"
	"github.com/nearcache/nearcache/internal/wait"
	"github.com/nearcache/nearcache/internal/wire"
)

// Sharing: every started Bus on the same Redis client (and with the same
// AntiEntropyInterval, PingInterval, RouteCheckInterval and BufferSize)
// joins one hub. The hub owns the transport: one subscription connection
// per server (per master on Redis Cluster) carrying every member's channel,
// its reader, one worker that calls every member's Handler, one
// anti-entropy loop that reads every member's keys in one command per
// slot, the route check and the masters watcher. A member (a Bus) keeps
// what is its own: its namespace, instance id, HMAC key, sequence
// tracking, Handler, counters, health and logger. The first member to
// start creates the hub; the last to close stops it.
//
// Events of a connection (a disconnect, a stall, a reroute, a changed run
// id or master set) reach every member; events of a channel (its
// confirmation, an overflow of one of its messages) reach the members of
// that channel; sequence events reach their member only.

// hubKey identifies the hub a Bus joins.
type hubKey struct {
	client      redis.UniversalClient
	antiEntropy time.Duration
	ping        time.Duration
	routeCheck  time.Duration
	bufferSize  int
}

// hubs is the process's registry of running hubs.
var hubs = struct {
	mu sync.Mutex
	m  map[hubKey]*hub
}{m: make(map[hubKey]*hub)}

// hub is the transport shared by the buses of one client (see above).
type hub struct {
	key     hubKey
	client  redis.UniversalClient
	cluster *redis.ClusterClient // non-nil when client is a cluster client
	cfg     Config               // the first member's, for the transport settings and Logger
	log     *zap.Logger
	grid    grid // the schedule of the periodic work (see grid.go)
	refs    int  // guarded by hubs.mu: members that started and have not closed

	// routeChannel is subscribed beside the members' channels on a
	// standalone or Sentinel-managed Redis, with the route check on, and
	// never published to: PUBSUB NUMSUB of it through the command client
	// tells whether the subscription is on the server the commands go to
	// (see route.go). Named after the first member's namespace and
	// instance id. "" when not checked. routeOn turns false for good
	// when Redis refuses it (ACL).
	routeChannel string
	routeOn      atomic.Bool

	// Failures logged once per episode (see Config.Logger), reported by
	// their goroutines and closed by close.
	aeFails   *episode.Tracker // anti-entropy rounds that failed
	topoFails *episode.Tracker // Redis Cluster: failed listings of the masters

	queue      chan item
	wake       chan struct{} // cap 1: pokes the worker after a member's pending changed
	pendingAny atomic.Bool   // some member may have pending InvalidateAll bits
	enqueued   atomic.Uint64 // items put in queue (readers)
	processed  atomic.Uint64 // items fully handled (worker)
	// workMu is held by the worker while it calls members' Handlers, so
	// that a member that left is never called again once leave has taken
	// it.
	workMu    sync.Mutex
	gapDue    time.Time // worker only: earliest hole deadline a member reported
	multiPath bool
	topoPoke  chan struct{} // cap 1: asks the masters watcher (Redis Cluster) to look again
	// shardOff: Redis refused SSUBSCRIBE, subscriptions carry the plain
	// channels only (see shard.go).
	shardOff atomic.Bool
	aePoke   chan struct{} // cap 1: asks anti-entropy for a round soon (a member was confirmed)

	// members by channel and in all, published as snapshots (copy on
	// write under mu) for the readers and the worker.
	byChannel atomic.Pointer[map[string][]*Bus]
	all       atomic.Pointer[[]*Bus]

	mu        sync.Mutex         // guards closed, runCtx, cancel, subs, nextSub, subsKnown, every sub's ps, stopped, chans, and every member's awaiting, confirmedClosed
	closed    bool               // close was called
	runCtx    context.Context    // the goroutines' context
	cancel    context.CancelFunc // stops the goroutines
	subs      map[string]*sub    // the subscriptions, by master address ("" on a standalone server)
	nextSub   int                // last sub id handed out
	subsKnown bool               // the set of subscriptions has been established once
	capable   map[string]bool    // Redis Cluster: whether each master seen has sharded pub/sub (Redis >= 7)
	uncovered int                // slots that lost their subscription since the last look assigned them (see shard.go)
	listeners bool               // shard channels refused, and other instances subscribe them (see checkShardListeners)
	wg        sync.WaitGroup     // every goroutine of the hub
}

// chanState is the state of one member channel on one subscription.
type chanState struct {
	sent    bool // SUBSCRIBE sent on the subscription's current connection (see reconcile)
	plainOK bool // the SUBSCRIBE was confirmed on this connection
	// shards: Redis Cluster, sharded pub/sub: the slots whose shard
	// channel's SSUBSCRIBE was sent on this connection, each true once
	// confirmed; shardWait counts those not confirmed (see shard.go).
	shards    map[int]bool
	shardWait int
	confirmed bool // plainOK and every wanted shard confirmed, since it was subscribed or the connection last failed
	everOK    bool // confirmed at least once on this subscription
	failing   bool // the connection failed (or was replaced) since its last confirmation
}

// acquireHub joins b to the hub of its client, creating and starting it if
// there is none.
func acquireHub(b *Bus) *hub {
	key := hubKey{
		client:      b.client,
		antiEntropy: b.cfg.AntiEntropyInterval,
		ping:        b.cfg.PingInterval,
		routeCheck:  b.cfg.RouteCheckInterval,
		bufferSize:  b.cfg.BufferSize,
	}
	hubs.mu.Lock()
	h := hubs.m[key]
	if h == nil {
		h = newHub(key, b)
		h.refs = 1
		hubs.m[key] = h
		h.start(b)
		hubs.mu.Unlock()
		return h
	}
	h.refs++
	hubs.mu.Unlock()
	h.join(b)
	return h
}

// release takes b out of the hub; the last member stops it.
func (h *hub) release(b *Bus) error {
	hubs.mu.Lock()
	h.refs--
	last := h.refs == 0
	if last && hubs.m[h.key] == h {
		delete(hubs.m, h.key)
	}
	hubs.mu.Unlock()
	if last {
		return h.close()
	}
	h.leave(b)
	return nil
}

func newHub(key hubKey, b *Bus) *hub {
	cfg := b.cfg
	h := &hub{
		key:      key,
		client:   b.client,
		cfg:      cfg,
		log:      b.log,
		queue:    make(chan item, cfg.BufferSize),
		wake:     make(chan struct{}, 1),
		topoPoke: make(chan struct{}, 1),
		aePoke:   make(chan struct{}, 1),
		subs:     make(map[string]*sub),
		capable:  make(map[string]bool),
	}
	h.cluster, _ = b.client.(*redis.ClusterClient)
	h.multiPath = h.cluster != nil
	if _, ok := b.client.(*redis.Client); ok && cfg.RouteCheckInterval > 0 {
		h.routeChannel = wire.RouteChannel(cfg.Namespace, cfg.InstanceID)
		h.routeOn.Store(true)
	}
	route := cfg.RouteCheckInterval
	if h.routeChannel == "" {
		route = 0
	}
	h.grid = newGrid(route, cfg.AntiEntropyInterval, cfg.PingInterval)
	quiet := max(episode.DefaultQuiet, 3*cfg.AntiEntropyInterval)
	if cfg.testEpisodeQuiet > 0 {
		quiet = cfg.testEpisodeQuiet
	}
	h.aeFails = episode.New(h.log, msgAEFails, quiet)
	h.topoFails = episode.New(h.log, msgTopoFails, quiet)
	empty := map[string][]*Bus{}
	h.byChannel.Store(&empty)
	h.all.Store(new([]*Bus))
	return h
}

// start registers the first member and starts the goroutines. hubs.mu is
// held; nothing here blocks on Redis.
func (h *hub) start(first *Bus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.runCtx, h.cancel = context.WithCancel(context.Background())
	h.addMemberLocked(first)
	h.wg.Add(1)
	go h.worker(h.runCtx)
	if h.cluster == nil {
		h.newSubLocked("", h.client, nil)
		h.subsKnown = true
		h.knownLocked()
	} else {
		h.wg.Add(1)
		go h.watchMasters(h.runCtx)
	}
	if h.cfg.AntiEntropyInterval > 0 {
		h.wg.Add(1)
		go h.antiEntropy(h.runCtx)
	}
	if h.routeChannel != "" {
		h.wg.Add(1)
		go h.routeWatch(h.runCtx)
	}
}

// members returns the members of channel (a snapshot; do not modify).
func (h *hub) members(channel string) []*Bus { return (*h.byChannel.Load())[channel] }

// everyone returns every member (a snapshot; do not modify).
func (h *hub) everyone() []*Bus { return *h.all.Load() }

// channels lists the member channels, sorted.
func (h *hub) channels() []string {
	m := *h.byChannel.Load()
	chs := make([]string, 0, len(m))
	for ch := range m {
		chs = append(chs, ch)
	}
	slices.Sort(chs)
	return chs
}

// addMemberLocked registers b: it awaits the confirmation of its channel
// on every subscription where that is not confirmed yet. h.mu is held.
func (h *hub) addMemberLocked(b *Bus) {
	old := *h.byChannel.Load()
	next := make(map[string][]*Bus, len(old)+1)
	for ch, ms := range old {
		next[ch] = ms
	}
	next[b.channel] = append(slices.Clip(old[b.channel]), b)
	h.byChannel.Store(&next)
	all := append(slices.Clip(h.everyone()), b)
	h.all.Store(&all)

	b.awaiting = make(map[int]struct{})
	for _, s := range h.subs {
		if cs := s.chans[b.channel]; cs != nil && cs.confirmed {
			continue
		}
		b.health.set(s.id, reasonNotSubscribed)
		b.awaiting[s.id] = struct{}{}
	}
	if h.listeners {
		b.health.set(refusedSrc, reasonNotSubscribed)
	}
	if h.subsKnown {
		b.health.clear(busWide, reasonNotSubscribed)
		h.checkConfirmedLocked(b)
	}
	if b.pending.Load() != 0 {
		h.poke()
	}
}

// removeMemberLocked unregisters b. h.mu is held.
func (h *hub) removeMemberLocked(b *Bus) {
	old := *h.byChannel.Load()
	next := make(map[string][]*Bus, len(old))
	for ch, ms := range old {
		next[ch] = ms
	}
	ms := slices.DeleteFunc(slices.Clone(old[b.channel]), func(m *Bus) bool { return m == b })
	if len(ms) == 0 {
		delete(next, b.channel)
	} else {
		next[b.channel] = ms
	}
	h.byChannel.Store(&next)
	all := slices.DeleteFunc(slices.Clone(h.everyone()), func(m *Bus) bool { return m == b })
	h.all.Store(&all)
	b.awaiting = nil
}

// join adds b to a running hub; each subscription's I/O goroutine
// subscribes its channel if no other member has (see reconcile).
func (h *hub) join(b *Bus) {
	h.mu.Lock()
	if !h.closed {
		h.addMemberLocked(b)
	}
	h.mu.Unlock()
	h.reconcileAll()
}

// leave takes b out of a hub that keeps other members; each
// subscription's I/O goroutine unsubscribes its channel if no other member
// has it. b's Handler is never called after leave returns.
func (h *hub) leave(b *Bus) {
	h.mu.Lock()
	h.removeMemberLocked(b)
	h.mu.Unlock()
	h.workMu.Lock()
	h.workMu.Unlock() //nolint:staticcheck // a barrier: the worker is out of b's Handler
	h.reconcileAll()
}

// reconcileAll pokes every subscription's I/O goroutine.
func (h *hub) reconcileAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.subs {
		s.pokeIO()
	}
}

// subscribeTimeout bounds a SUBSCRIBE or UNSUBSCRIBE of member channels
// (a dial included, when the connection had failed).
const subscribeTimeout = time.Second

// subIO is a subscription's I/O goroutine: the only one that sends
// SUBSCRIBE and UNSUBSCRIBE of member channels, so that they reach the
// server in the order of the decisions, and so that a server that does
// not answer blocks no one else (join, leave and Close never wait for it).
// A SUBSCRIBE that failed is sent again after a backoff (10 ms doubling to
// 1 s) until one goes through.
func (h *hub) subIO(ctx context.Context, s *sub) {
	defer h.wg.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.io:
		case <-retry.C:
		}
		if h.reconcile(ctx, s) {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
		retry.Reset(backoff)
	}
}

// reconcile makes the channels subscribed on s's connection match the
// members': it subscribes the member channels not sent yet on this
// connection and unsubscribes those no member has any more. It reports
// false when the SUBSCRIBE failed: its channels are then marked not sent,
// to be sent again. go-redis adds a channel to the set it resubscribes
// after a reconnect only once its SUBSCRIBE returns, so a SUBSCRIBE whose
// write failed while go-redis reconnected within the call (resubscribing
// only the older channels) would otherwise leave the new channel
// unsubscribed until the next reconnect. A channel sent twice is confirmed
// twice, which repairs once more. An UNSUBSCRIBE needs no retry: go-redis
// forgets the channel before sending it.
func (h *hub) reconcile(ctx context.Context, s *sub) bool {
	h.mu.Lock()
	ps := s.ps
	if ps == nil || s.stopped || h.closed {
		h.mu.Unlock()
		return true
	}
	want := *h.byChannel.Load()
	var add, drop []string
	var plan shardPlan
	for ch := range want {
		if s.chans[ch] == nil {
			s.chans[ch] = &chanState{}
		}
	}
	for ch, cs := range s.chans {
		h.planShardsLocked(s, ch, cs, want[ch] != nil, &plan)
		switch {
		case want[ch] == nil:
			if cs.sent {
				drop = append(drop, ch)
			}
			delete(s.chans, ch)
		case !cs.sent:
			cs.sent = true
			add = append(add, ch)
		}
	}
	for _, chs := range plan.drop {
		for _, c := range chs {
			if s.ownUnsub == nil {
				s.ownUnsub = make(map[string]int)
			}
			s.ownUnsub[c]++
		}
	}
	h.mu.Unlock()
	if len(drop) > 0 {
		uctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
		_ = ps.Unsubscribe(uctx, drop...)
		cancel()
	}
	var err error
	if len(add) > 0 {
		slices.Sort(add)
		sctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
		err = ps.Subscribe(sctx, add...)
		cancel()
	}
	var unsent []int
	var undropped []string
	if err == nil && (len(plan.add) > 0 || len(plan.drop) > 0) {
		// One command per slot: a second per thousand slots.
		sctx, cancel := context.WithTimeout(ctx, subscribeTimeout*time.Duration(1+len(plan.add)/1000))
		unsent, undropped = sendShards(sctx, ps, plan, h.shardOff.Load)
		cancel()
	} else if err != nil {
		unsent = slices.Collect(maps.Keys(plan.add))
		for _, chs := range plan.drop {
			undropped = append(undropped, chs...)
		}
	}
	if len(undropped) > 0 {
		h.mu.Lock()
		unsentDropsLocked(s, ps, undropped)
		h.mu.Unlock()
	}
	if (err == nil && (len(unsent) == 0 || h.shardOff.Load())) || ctx.Err() != nil {
		if len(unsent) > 0 {
			// Refused meanwhile: forget them (refuseShards dropped the
			// slots), so the channel can settle without them.
			h.mu.Lock()
			if s.ps == ps {
				unsendShardsLocked(s, unsent)
				for ch, cs := range s.chans {
					h.settleLocked(s, ch, cs)
				}
			}
			h.mu.Unlock()
		}
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.ps != ps {
		return true // replaced meanwhile: the new connection subscribes everything
	}
	if err != nil {
		for _, ch := range add {
			if cs := s.chans[ch]; cs != nil {
				cs.sent = false
			}
		}
	}
	unsendShardsLocked(s, unsent)
	return false
}

// close stops every goroutine of the hub, closes its subscriptions and
// waits for them, at most CloseWait.
func (h *hub) close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.cancel()
	var pss []*redis.PubSub
	for _, s := range h.subs {
		if s.ps != nil {
			pss = append(pss, s.ps)
		}
	}
	h.mu.Unlock()
	for _, ps := range pss {
		// Closing unblocks the reader. It waits for a SUBSCRIBE still
		// blocked on a server that does not answer (with a client without
		// timeouts): then it ends when the client gives up, and Close
		// does not wait for it past CloseWait.
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			_ = ps.Close()
		}()
	}
	defer h.topoFails.Close()
	defer h.aeFails.Close() // after the goroutines that report to it
	if !wait.Within(&h.wg, CloseWait) {
		return fmt.Errorf("invalidation: Close: a subscription is still blocked in the Redis client after %v (no read timeout, and a server that does not answer?); it ends when the client gives up", CloseWait)
	}
	return nil
}

// knownLocked records that the set of subscriptions is established: each
// member may now be confirmed. h.mu is held.
func (h *hub) knownLocked() {
	for _, m := range h.everyone() {
		m.health.clear(busWide, reasonNotSubscribed)
		h.checkConfirmedLocked(m)
	}
}

// checkConfirmedLocked lets m's Start return once each subscription has
// confirmed its channel (the set of subscriptions is known), and asks
// anti-entropy for a round, which takes m's first view of the keys it
// watches. h.mu is held.
func (h *hub) checkConfirmedLocked(m *Bus) {
	if len(m.awaiting) != 0 || m.confirmedClosed {
		return
	}
	m.confirmedClosed = true
	close(m.confirmed)
	select {
	case h.aePoke <- struct{}{}:
	default:
	}
}

// poke wakes the worker to apply members' pending InvalidateAll requests.
func (h *hub) poke() {
	h.pendingAny.Store(true)
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// invalidateAll asks every member to invalidate everything.
func (h *hub) invalidateAll(c Cause) {
	for _, m := range h.everyone() {
		m.requestInvalidateAll(c)
	}
}

// worker decodes queued messages, and has each member of their channel
// track and deliver them. It is the only goroutine that calls Handlers.
func (h *hub) worker(ctx context.Context) {
	defer h.wg.Done()
	gapTimer := time.NewTimer(time.Hour)
	gapTimer.Stop()
	var (
		armed time.Time // when gapTimer fires; zero when stopped
		keys  []string  // decode buffer, reused: no allocation per message
	)
	for {
		if h.pendingAny.Swap(false) {
			h.workMu.Lock()
			for _, m := range h.everyone() {
				m.applyPending()
			}
			h.workMu.Unlock()
		}
		if due := h.gapDue; !due.IsZero() {
			h.gapDue = time.Time{}
			if armed.IsZero() || due.Before(armed) {
				armed = due
				gapTimer.Reset(time.Until(due))
			}
		}
		select {
		case <-ctx.Done():
			gapTimer.Stop()
			return
		case <-h.wake:
		case <-gapTimer.C:
			armed = time.Time{}
			now := time.Now()
			h.workMu.Lock()
			for _, m := range h.everyone() {
				m.expireHoles(now)
				h.takeGapDue(m)
			}
			h.workMu.Unlock()
		case it := <-h.queue:
			h.workMu.Lock()
			for _, m := range h.members(it.channel) {
				m.applyPending()
				keys = m.handle(it, keys)
				h.takeGapDue(m)
			}
			h.workMu.Unlock()
			h.processed.Add(1)
		}
	}
}

// takeGapDue moves a member's earliest new hole deadline to the hub's.
// Worker only.
func (h *hub) takeGapDue(m *Bus) {
	if due := m.gapDue; !due.IsZero() {
		m.gapDue = time.Time{}
		if h.gapDue.IsZero() || due.Before(h.gapDue) {
			h.gapDue = due
		}
	}
}
