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
)

// newSubLocked creates a subscription and starts its reader. lifeMu is
// held, Start has run and Close has not.
func (b *Bus) newSubLocked(addr string, client subscriber) *sub {
	b.nextSub++
	sctx, cancel := context.WithCancel(b.runCtx)
	s := &sub{id: b.nextSub, addr: addr, client: client, cancel: cancel, done: make(chan struct{}), pongCh: make(chan struct{}, 1)}
	b.health.set(s.id, reasonNotSubscribed)
	if !b.confirmedClosed {
		s.initial = true
		b.awaiting++
	}
	b.subs[addr] = s
	b.wg.Add(1)
	go b.reader(sctx, s)
	return s
}

// stopSub closes a subscription that is no longer wanted (its master left
// the cluster) and waits for its reader.
func (b *Bus) stopSub(s *sub) {
	b.lifeMu.Lock()
	s.stopped = true
	ps := s.ps
	s.ps = nil
	if b.subs[s.addr] == s {
		delete(b.subs, s.addr)
	}
	if s.initial {
		s.initial = false
		b.awaitedLocked()
	}
	b.lifeMu.Unlock()
	s.cancel()
	if ps != nil {
		_ = ps.Close()
	}
	<-s.done
	b.health.drop(s.id)
}

// confirm records the first confirmation of s.
func (b *Bus) confirm(s *sub) {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	if s.initial {
		s.initial = false
		b.awaitedLocked()
	}
}

// awaitedLocked accounts for one initial subscription confirmed or gone;
// when none is left, Start may return. lifeMu is held.
func (b *Bus) awaitedLocked() {
	b.awaiting--
	if b.awaiting == 0 && b.subsKnown && !b.confirmedClosed {
		b.confirmedClosed = true
		close(b.confirmed)
	}
}

// reader owns one subscription: it reads every reply, hands messages to the
// worker without blocking, and turns failures, confirmations and silences
// into repairs.
func (b *Bus) reader(ctx context.Context, s *sub) {
	defer b.wg.Done()
	defer close(s.done)
	var (
		ps          = b.subscribe(ctx, s)
		everOK      bool      // a confirmation has been seen
		failing     bool      // a failure was seen since the last confirmation
		pingOut     bool      // a ping is unanswered
		lastHeard   time.Time // last reply of any kind
		backoff     time.Duration
		stalledOnce bool // the current silence was already reported
		// The route channel is subscribed by its own SUBSCRIBE once the
		// invalidation channel is confirmed, so that Redis refusing it
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
	ping := b.cfg.PingInterval
	for {
		v, err := ps.ReceiveTimeout(ctx, ping)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil && s.replace.Swap(false) {
			// The route check closed ps: the subscription is on another
			// server than the commands. Subscribe again now, so that the
			// client's dialer resolves the server anew; the confirmation
			// repairs (CauseResubscribe) and makes the stream healthy.
			if ps = b.resubscribe(ctx, s, ps); ps == nil {
				return
			}
			failing, pingOut, lastHeard, stalledOnce, backoff = true, false, now, false, 0
			routeSent, routePending = false, false
			continue
		}
		if err != nil && routeSent && isNoPerm(err) {
			// Redis refused a SUBSCRIBE naming the route channel: the
			// user may not use it. Drop it from ps's channels (go-redis
			// would resend it after every reconnect) and turn the route
			// check off. If the refused SUBSCRIBE was go-redis's
			// resubscription after a reconnect, it named the invalidation
			// channel too: subscribe that again (its confirmation repairs).
			b.routeRefused(err)
			uerr := ps.Unsubscribe(ctx, b.routeChannel)
			if !routePending && uerr == nil {
				uerr = ps.Subscribe(ctx, b.channel)
			}
			routeSent, routePending = false, false
			lastHeard, pingOut = now, false
			if uerr != nil && !failing {
				failing = true
				b.lost(s, CauseDisconnect, reasonDisconnected, uerr)
			}
			continue
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				silent := now.Sub(lastHeard)
				if !pingOut {
					pingOut = true
					if perr := ps.Ping(ctx); perr != nil && !failing {
						failing = true
						b.lost(s, CauseDisconnect, reasonDisconnected, perr)
					}
					continue
				}
				if silent >= 2*ping && !stalledOnce {
					stalledOnce = true
					b.stats.stalls.Add(1)
					b.lost(s, CauseStall, reasonStalled, err)
				}
				if silent >= 4*ping {
					// Black hole: replace the connection; the new
					// subscription's confirmation repairs again.
					if ps = b.resubscribe(ctx, s, ps); ps == nil {
						return
					}
					failing, pingOut, lastHeard, stalledOnce = true, false, now, false
					routeSent, routePending = false, false
				}
				continue
			}
			// go-redis has already dropped the connection and tried to
			// dial again and resend SUBSCRIBE; its confirmation, or the next
			// error, comes through ReceiveTimeout.
			if !failing {
				failing = true
				b.lost(s, CauseDisconnect, reasonDisconnected, err)
			}
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		lastHeard, pingOut, backoff = now, false, 0
		if stalledOnce {
			stalledOnce = false
			b.health.clear(s.id, reasonStalled)
		}
		switch m := v.(type) {
		case *redis.Message:
			if len(m.Payload) > maxPayload {
				b.stats.received.Add(1)
				b.rejectOversized(s, len(m.Payload))
				continue
			}
			select {
			case b.queue <- item{payload: m.Payload, recv: now, path: s.id}:
				b.enqueued.Add(1)
			default:
				// Unhealthy first: whoever sees the drop counted sees the
				// bus unhealthy too.
				b.health.set(busWide, reasonOverflow)
				b.stats.dropped.Add(1)
				b.requestInvalidateAll(CauseOverflow)
			}
			b.stats.received.Add(1)
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
			if m.Kind != "subscribe" {
				continue
			}
			if b.routeChannel != "" && m.Channel == b.routeChannel {
				routePending = false
				s.confirms.Add(1)
				s.live.Store(true)
				continue
			}
			if m.Channel != b.channel {
				continue
			}
			if everOK || failing || b.startReturned.Load() {
				b.stats.reconnects.Add(1)
				b.requestInvalidateAll(CauseResubscribe)
				b.log.Info("subscription confirmed again", zap.String("channel", b.channel), zap.String("node", s.addr))
			}
			failing = false
			// Healthy before Start may return (confirm), so that nothing
			// filled after Start sees the stream unhealthy.
			b.health.clear(s.id, reasonNotSubscribed|reasonDisconnected|reasonStalled|reasonRerouted)
			if !everOK {
				everOK = true
				b.confirm(s)
			}
			if b.routeOn.Load() && !routeSent {
				routeSent, routePending = true, true
				if err := ps.Subscribe(ctx, b.routeChannel); err != nil {
					// go-redis reconnected (or will) and resubscribes
					// both channels in one command.
					routePending = false
					failing = true
					b.lost(s, CauseDisconnect, reasonDisconnected, err)
				}
			}
		}
	}
}

// lost records a detected failure of the stream: unhealthy now, invalidate all.
func (b *Bus) lost(s *sub, c Cause, r reason, err error) {
	s.live.Store(false)
	if c == CauseDisconnect {
		b.stats.disconnects.Add(1)
	}
	b.health.set(s.id, r)
	b.requestInvalidateAll(c)
	b.log.Warn("invalidation stream interrupted", zap.Stringer("cause", c), zap.String("node", s.addr), zap.Error(err))
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

// subscribe creates the subscription (the SUBSCRIBE confirmation arrives
// through ReceiveTimeout). It returns nil when the bus is closing or s was
// stopped.
//
// It names the invalidation channel only: the reader subscribes the route
// channel once this one is confirmed, by its own SUBSCRIBE, so that a user
// whose ACL refuses the route channel still gets the invalidations.
func (b *Bus) subscribe(ctx context.Context, s *sub) *redis.PubSub {
	ps := s.client.Subscribe(ctx, b.channel)
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	if b.closed || s.stopped {
		_ = ps.Close()
		return nil
	}
	s.ps = ps
	return ps
}

// resubscribe replaces a silent subscription with a new connection.
func (b *Bus) resubscribe(ctx context.Context, s *sub, old *redis.PubSub) *redis.PubSub {
	s.live.Store(false)
	s.replace.Store(false) // this replacement serves a route check's request too
	b.lifeMu.Lock()
	if s.ps == old {
		s.ps = nil
	}
	b.lifeMu.Unlock()
	_ = old.Close()
	return b.subscribe(ctx, s)
}
