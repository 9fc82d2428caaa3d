package invalidation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/nearcache/nearcache/internal/wire"
)

// newSubLocked creates a subscription and starts its reader. h.mu is
// held, the hub is running.
func (h *hub) newSubLocked(addr string, client subscriber, slots map[int]struct{}) *sub {
	h.nextSub++
	sctx, cancel := context.WithCancel(h.runCtx)
	s := &sub{id: h.nextSub, addr: addr, client: client, cancel: cancel, done: make(chan struct{}),
		pongCh: make(chan struct{}, 1), io: make(chan struct{}, 1), slots: slots}
	for _, m := range h.everyone() {
		m.health.set(s.id, reasonNotSubscribed)
		if !m.confirmedClosed {
			m.awaiting[s.id] = struct{}{}
		}
	}
	h.subs[addr] = s
	h.wg.Add(2)
	go h.reader(sctx, s)
	go h.subIO(sctx, s)
	return s
}

// stopSub closes a subscription that is no longer wanted (its master left
// the cluster) and waits for its reader.
func (h *hub) stopSub(s *sub) {
	h.mu.Lock()
	s.stopped = true
	ps := s.ps
	s.ps = nil
	if h.subs[s.addr] == s {
		delete(h.subs, s.addr)
	}
	for _, m := range h.everyone() {
		if _, ok := m.awaiting[s.id]; ok {
			delete(m.awaiting, s.id)
			if h.subsKnown {
				h.checkConfirmedLocked(m)
			}
		}
	}
	h.mu.Unlock()
	s.cancel()
	if ps != nil {
		_ = ps.Close()
	}
	<-s.done
	for _, m := range h.everyone() {
		m.health.drop(s.id)
	}
}

// confirmChannel handles the confirmation of a member channel, or of one
// of its shard channels, on s (see settleLocked).
func (h *hub) confirmChannel(s *sub, channel string) {
	base, slot, shard := wire.SplitChannel(channel)
	h.mu.Lock()
	defer h.mu.Unlock()
	cs := s.chans[base]
	if cs == nil || s.stopped {
		return // unsubscribed meanwhile
	}
	if s.replace.Load() {
		// Read from the connection reroute has just closed (replace is
		// set under mu before it closes it): it proves nothing of the new
		// one, whose confirmation repairs.
		return
	}
	if shard {
		done, sent := cs.shards[slot]
		if !sent || done {
			return // not asked for on this connection, or confirmed already
		}
		cs.shards[slot] = true
		cs.shardWait--
	} else {
		cs.plainOK = true
	}
	h.settleLocked(s, base, cs)
}

// settleLocked confirms a member channel on s once its SUBSCRIBE and the
// SSUBSCRIBE of every slot s wants are confirmed: the members of that
// channel are healthy on s again, and repair (CauseResubscribe) unless
// this is the first confirmation their Start is waiting for. h.mu is held.
func (h *hub) settleLocked(s *sub, channel string, cs *chanState) {
	if cs.confirmed || !cs.plainOK || cs.shardWait != 0 || len(cs.shards) != len(s.slots) {
		return
	}
	// The same number is not the same set: a look that took one slot and
	// gave another leaves the old one's confirmation until reconcile.
	for sl := range s.slots {
		if !cs.shards[sl] {
			return
		}
	}
	repair := cs.everOK || cs.failing
	cs.confirmed, cs.everOK, cs.failing = true, true, false
	logged := false
	for _, m := range h.members(channel) {
		_, first := m.awaiting[s.id]
		if repair || !first || m.startReturned.Load() {
			m.stats.reconnects.Add(1)
			m.requestInvalidateAll(CauseResubscribe)
			if !logged {
				logged = true
				h.log.Info("subscription confirmed again", zap.String("channel", channel), zap.String("node", s.addr))
			}
		}
		// Healthy before Start may return, so that nothing filled after
		// Start sees the stream unhealthy.
		m.health.clear(s.id, reasonNotSubscribed|reasonDisconnected|reasonStalled|reasonRerouted)
		if first {
			delete(m.awaiting, s.id)
			if h.subsKnown {
				h.checkConfirmedLocked(m)
			}
		}
	}
}

// reader owns one subscription: it reads every reply, hands messages to the
// worker without blocking, and turns failures, confirmations and silences
// into repairs.
func (h *hub) reader(ctx context.Context, s *sub) {
	defer h.wg.Done()
	defer close(s.done)
	var (
		ps          = h.subscribe(ctx, s, false)
		failing     bool      // a failure was seen since the last confirmation
		pingAt      time.Time // when the unanswered ping was sent (zero: none is)
		lastHeard   time.Time // last reply of any kind
		backoff     time.Duration
		stalledOnce bool // the current silence was already reported
		// The route channel is subscribed by its own SUBSCRIBE once a
		// member channel is confirmed, so that Redis refusing it
		// (ACL) never costs the invalidation channel. routeSent: it is
		// among ps's channels (go-redis resubscribes them all in one
		// command after a reconnect); routePending: that SUBSCRIBE has not
		// been answered yet.
		routeSent, routePending bool
	)
	if ps == nil {
		return
	}
	lastHeard = time.Now()
	ping := h.cfg.PingInterval
	// The silence is looked at every ping of it, at points of the
	// hub's grid (see grid.go), up to slack early; an unanswered ping is
	// given its PingInterval (up to slack less) from when it was sent,
	// wherever that fell on the grid.
	slack := h.grid.slack(ping)
	for {
		v, err := ps.ReceiveTimeout(ctx, h.silenceWait(lastHeard, pingAt, ping))
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil && s.replace.Swap(false) {
			// The route check closed ps: the subscription is on another
			// server than the commands. Subscribe again now, so that the
			// client's dialer resolves the server anew; the confirmation
			// repairs (CauseResubscribe) and makes the stream healthy.
			if ps = h.resubscribe(ctx, s, ps); ps == nil {
				return
			}
			failing, pingAt, lastHeard, stalledOnce, backoff = true, time.Time{}, now, false, 0
			routeSent, routePending = false, false
			continue
		}
		if err != nil && routeSent && isNoPerm(err) {
			// Redis refused a SUBSCRIBE naming the route channel: the
			// user may not use it. Drop it from ps's channels (go-redis
			// would resend it after every reconnect) and turn the route
			// check off. If the refused SUBSCRIBE was go-redis's
			// resubscription after a reconnect, it named the member
			// channels too: subscribe them again (their confirmations
			// repair).
			h.routeRefused(err)
			uerr := ps.Unsubscribe(ctx, h.routeChannel)
			if !routePending && uerr == nil {
				h.subscribeAgain(s)
			}
			routeSent, routePending = false, false
			lastHeard, pingAt = now, time.Time{}
			if uerr != nil && !failing {
				failing = true
				h.lost(s, CauseDisconnect, reasonDisconnected, uerr)
			}
			continue
		}
		if err != nil && h.cluster != nil {
			var ne net.Error
			sharded := h.sharded(s)
			if slot, refused := shardReplyErr(err); slot >= 0 || (refused && (sharded || h.shardOff.Load())) {
				switch {
				case slot >= 0:
					// Redis refused a slot's SSUBSCRIBE: the master no
					// longer owns it (nothing to do if it was dropped
					// already).
					h.lostShard(s, slot, err.Error())
				case sharded:
					h.refuseShards(err)
				}
				// Else a late refusal of an SSUBSCRIBE sent before the
				// first one turned them off.
				lastHeard, pingAt = now, time.Time{}
				continue
			}
			if sharded && (!errors.As(err, &ne) || !ne.Timeout()) {
				// go-redis resubscribes every shard channel in one
				// command after a reconnect, which Redis refuses
				// (CROSSSLOT): replace the connection instead; the I/O
				// goroutine subscribes slot by slot.
				if !failing {
					h.lost(s, CauseDisconnect, reasonDisconnected, err)
				}
				// A master that stays unreachable may have been
				// replaced (failover): look at the cluster at each
				// retry, not only at the next scheduled look.
				h.pokeTopology()
				if !backOff(ctx, &backoff) {
					return
				}
				if ps = h.resubscribe(ctx, s, ps); ps == nil {
					return
				}
				failing, pingAt, lastHeard, stalledOnce = true, time.Time{}, time.Now(), false
				continue
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				silent := now.Sub(lastHeard)
				if pingAt.IsZero() {
					pingAt = now
					if perr := ps.Ping(ctx); perr != nil && !failing {
						failing = true
						h.lost(s, CauseDisconnect, reasonDisconnected, perr)
					}
					continue
				}
				// The ping had its interval: never a stall because
				// the look after it fell early on the grid.
				unanswered := now.Sub(pingAt) >= ping-slack
				if unanswered && silent >= 2*ping-slack && !stalledOnce {
					stalledOnce = true
					h.lost(s, CauseStall, reasonStalled, err)
				}
				if unanswered && silent >= 4*ping-slack {
					// Black hole: replace the connection; the new
					// subscription's confirmation repairs again.
					if ps = h.resubscribe(ctx, s, ps); ps == nil {
						return
					}
					failing, pingAt, lastHeard, stalledOnce = true, time.Time{}, now, false
					routeSent, routePending = false, false
				}
				continue
			}
			// go-redis has already dropped the connection and tried to
			// dial again and resend SUBSCRIBE; its confirmation, or the next
			// error, comes through ReceiveTimeout.
			if !failing {
				failing = true
				h.lost(s, CauseDisconnect, reasonDisconnected, err)
			}
			if h.cluster != nil {
				// As above: the master may have been replaced.
				h.pokeTopology()
			}
			if !backOff(ctx, &backoff) {
				return
			}
			continue
		}
		lastHeard, pingAt, backoff = now, time.Time{}, 0
		if stalledOnce {
			stalledOnce = false
			for _, mb := range h.everyone() {
				mb.health.clear(s.id, reasonStalled)
			}
		}
		switch m := v.(type) {
		case *redis.Message:
			channel, _, _ := wire.SplitChannel(m.Channel)
			members := h.members(channel)
			if len(m.Payload) > maxPayload {
				for _, mb := range members {
					mb.stats.received.Add(1)
					mb.rejectOversized(s, len(m.Payload))
				}
				continue
			}
			select {
			case h.queue <- item{payload: m.Payload, channel: channel, recv: now, path: s.id}:
				h.enqueued.Add(1)
			default:
				// Unhealthy first: whoever sees the drop counted sees the
				// bus unhealthy too.
				for _, mb := range members {
					mb.health.set(busWide, reasonOverflow)
					mb.stats.dropped.Add(1)
					mb.requestInvalidateAll(CauseOverflow)
				}
			}
			for _, mb := range members {
				mb.stats.received.Add(1)
			}
		case *redis.Pong:
			// The answer to a route check's PING (see checkRoute); the
			// reader's own PINGs carry no payload.
			if n, err := strconv.ParseUint(m.Payload, 10, 64); err == nil && n > s.pong.Load() {
				s.pong.Store(n)
				select {
				case s.pongCh <- struct{}{}:
				default:
				}
			}
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" {
				// Ours were forgotten before they were sent (see
				// planShardsLocked): this one is the master's, whose
				// slot moved away.
				h.shardLeft(s, m.Channel)
				continue
			}
			if m.Kind == "ssubscribe" {
				h.confirmChannel(s, m.Channel)
				continue
			}
			if m.Kind != "subscribe" {
				continue
			}
			if h.routeChannel != "" && m.Channel == h.routeChannel {
				routePending = false
				if s.replace.Load() {
					continue // from the connection reroute replaced (see confirmChannel)
				}
				s.confirms.Add(1)
				s.live.Store(true)
				continue
			}
			h.confirmChannel(s, m.Channel)
			failing = false
			if h.routeOn.Load() && !routeSent {
				routeSent, routePending = true, true
				if err := ps.Subscribe(ctx, h.routeChannel); err != nil {
					// go-redis reconnected (or will) and resubscribes
					// every channel in one command.
					routePending = false
					failing = true
					h.lost(s, CauseDisconnect, reasonDisconnected, err)
				}
			}
		}
	}
}

// backOff doubles *d (from 10 ms, at most 1 s) and waits that long. It
// reports false if ctx ended first.
func backOff(ctx context.Context, d *time.Duration) bool {
	*d = min(max(2**d, 10*time.Millisecond), time.Second)
	select {
	case <-ctx.Done():
		return false
	case <-time.After(*d):
		return true
	}
}

// silenceWait is how long the reader waits for a reply before it looks at
// the subscription's silence again: until the first of lastHeard + k·ping
// (k ≥ 1), moved onto the hub's grid, that is still ahead; and, while a
// ping sent at pingAt (zero: none) is unanswered, not before pingAt + ping
// moved onto the grid. Without that floor, a ping sent late (a reader
// that ran late, or a ping interval that is no multiple of the grid's
// step) would be looked at again less than one PingInterval after it
// left, and a pong on its way taken for a stall. Either end is a point
// of the grid, so the wait still shares its wake-up; when the floor is
// the later one, the silence is past 2·ping - slack there too (it is
// after the lastHeard + 2·ping point).
func (h *hub) silenceWait(lastHeard, pingAt time.Time, ping time.Duration) time.Duration {
	now := time.Now()
	var floor time.Duration
	if !pingAt.IsZero() {
		floor = h.grid.deadline(pingAt.Add(ping), ping).Sub(now)
	}
	for k := max(now.Sub(lastHeard)/ping, 1); ; k++ {
		if d := h.grid.deadline(lastHeard.Add(k*ping), ping).Sub(now); d > 0 {
			return max(d, floor)
		}
	}
}

// lost records a detected failure of the stream on s: every member is
// unhealthy on s now and invalidates all; every member channel on s
// repairs again when it is confirmed anew.
func (h *hub) lost(s *sub, c Cause, r reason, err error) {
	s.live.Store(false)
	s.fails.Add(1)
	h.mu.Lock()
	for _, cs := range s.chans {
		cs.confirmed, cs.failing = false, true
		if c == CauseStall {
			// The connection and its subscriptions stay: a stall that
			// ends leaves them confirmed, and the next confirmation on
			// it (a slot gained) settles; one that does not end
			// replaces the connection.
			continue
		}
		cs.plainOK = false
		// The shard channels are not confirmed on the next connection
		// either: go-redis resubscribes them in one command that Redis
		// refuses (CROSSSLOT, after the SUBSCRIBE's confirmation), and
		// the reader replaces the connection.
		for sl, done := range cs.shards {
			if done {
				cs.shards[sl] = false
				cs.shardWait++
			}
		}
	}
	for _, m := range h.everyone() {
		// Unhealthy first: whoever sees the count sees the bus
		// unhealthy too.
		m.health.set(s.id, r)
		switch c {
		case CauseDisconnect:
			m.stats.disconnects.Add(1)
		case CauseStall:
			m.stats.stalls.Add(1)
		}
		m.requestInvalidateAll(c)
	}
	h.mu.Unlock()
	h.log.Warn("invalidation stream interrupted", zap.Stringer("cause", c), zap.String("node", s.addr), zap.Error(err))
}

// rejectOversized counts a payload longer than any publisher following the
// contract produces, which the reader drops before it reaches the queue (a
// full queue of them would hold BufferSize times their size). It is
// treated as decode would treat it: without an HMAC key it may have been a
// lost invalidation, so everything is invalidated (CauseDecode); with a key
// it cannot be authentic, and is counted as an auth reject and ignored.
func (b *Bus) rejectOversized(s *sub, n int) {
	if b.cfg.HMACKey != nil {
		b.stats.authRejects.Add(1)
		b.log.Debug("rejected oversized unauthenticated message", zap.Int("bytes", n), zap.String("node", s.addr))
		return
	}
	b.stats.decodeRejects.Add(1)
	b.decodeFails.Fail("", fmt.Errorf("invalidation: oversized message dropped: %d bytes, at most %d (node %s)", n, maxPayload, s.addr))
	b.requestInvalidateAll(CauseDecode)
}

// subscribe creates s's subscription and has its I/O goroutine subscribe
// every member channel (the confirmations arrive through ReceiveTimeout);
// failing: the channels repair when confirmed (a replaced connection). It
// returns nil when the hub is closing or s was stopped.
//
// It names the member channels only: the reader subscribes the route
// channel once one is confirmed, by its own SUBSCRIBE, so that a user
// whose ACL refuses the route channel still gets the invalidations.
func (h *hub) subscribe(ctx context.Context, s *sub, failing bool) *redis.PubSub {
	ps := s.client.Subscribe(ctx) // no channel yet: no I/O
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || s.stopped {
		_ = ps.Close()
		return nil
	}
	s.ps = ps
	s.ownUnsub = nil // the old connection's replies are never read
	want := *h.byChannel.Load()
	s.chans = make(map[string]*chanState, len(want))
	for ch := range want {
		s.chans[ch] = &chanState{failing: failing}
	}
	s.pokeIO()
	return ps
}

// subscribeAgain has s's I/O goroutine subscribe every member channel
// again, after Redis refused go-redis's resubscription of all of them with
// the route channel (see reader); their confirmations repair.
func (h *hub) subscribeAgain(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, cs := range s.chans {
		cs.sent, cs.failing = false, true
	}
	s.pokeIO()
}

// resubscribe replaces a silent subscription with a new connection.
func (h *hub) resubscribe(ctx context.Context, s *sub, old *redis.PubSub) *redis.PubSub {
	s.live.Store(false)
	s.fails.Add(1)
	s.replace.Store(false) // this replacement serves a route check's request too
	h.mu.Lock()
	if s.ps == old {
		s.ps = nil
	}
	h.mu.Unlock()
	_ = old.Close()
	return h.subscribe(ctx, s, true)
}
