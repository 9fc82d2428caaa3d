package invalidation

import (
	"context"
	"strconv"
	"time"

	"github.com/nearcache/nearcache/internal/wire"
	"go.uber.org/zap"
)

// Following the server behind the client (standalone and Sentinel).
//
// go-redis's failover client moves its command connections to a new master
// as soon as Sentinel announces it, but leaves a PubSub on the old master
// until that server drops the connection (when Sentinel demotes it, about
// 10 s later). Meanwhile the bus would hear nothing of the writes on the
// new master. The route check asks the server behind the command client,
// with PUBSUB NUMSUB, whether it holds this bus's route channel (subscribed
// on the same connection as the invalidation channel, never published to).
// Zero subscribers while the subscription is confirmed, and a PING sent on
// the subscription after that answer coming back on it, mean the
// subscription is alive on another server: the bus replaces it at once.
//
// The route channel is subscribed by its own SUBSCRIBE after the
// invalidation channel is confirmed: a user whose ACL grants the
// invalidation channel only (&NS:inv) keeps its subscription, and the
// refusal turns the route check off (routeRefused).

// routeWatch runs the route check every RouteCheckInterval (on the hub's
// grid, see grid.go). After a
// replacement that the next check does not vindicate (the new subscription
// landed on another server than the commands again: a client that sends
// commands to replicas, or a proxy) it waits twice as long before the next
// check, up to maxRouteBackoff, so that such a client costs a repair every
// half minute rather than every interval; one passing check ends the
// backoff.
func (h *hub) routeWatch(ctx context.Context) {
	defer h.wg.Done()
	iv := h.cfg.RouteCheckInterval
	t := time.NewTimer(iv)
	defer t.Stop()
	var (
		failing bool // the last check failed (logged once per run of failures)
		streak  int  // replacements in a row, without a passing check between
	)
	for {
		res, err := h.checkRoute(ctx)
		switch {
		case ctx.Err() != nil || !h.routeOn.Load():
			return
		case err != nil:
			if !failing {
				failing = true
				h.log.Warn("route check failed (PUBSUB NUMSUB through the client); anti-entropy's run id check still follows a failover", zap.Error(err))
			}
		case res == routeMoved:
			failing = false
			streak++
			if streak == 3 {
				h.log.Warn("the invalidation subscription keeps landing on another server than the commands; does the client send commands to replicas, or go through a proxy?")
			}
		case res == routeOK:
			failing = false
			streak = 0
		}
		wait := iv
		for i := 0; i < streak && wait < maxRouteBackoff; i++ {
			wait *= 2
		}
		wait = min(wait, max(maxRouteBackoff, iv))
		// The next point of the grid at least wait-iv away: every iv,
		// phase-locked with the hub's other periodic work.
		t.Reset(time.Until(h.grid.after(time.Now().Add(wait-iv), iv)))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// singleSub is the subscription on a standalone or Sentinel-managed Redis
// (nil before Start, after Close, and on Redis Cluster).
func (h *hub) singleSub() *sub {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.subs[""]
}

// maxRouteBackoff bounds the wait between route checks after replacements
// in a row.
const maxRouteBackoff = 30 * time.Second

// routeResult is the outcome of one route check.
type routeResult int

const (
	routeSkipped routeResult = iota // no settled subscription to check (or an error)
	routeOK                         // the subscription is on the server behind the commands
	routeMoved                      // it was not, and is being replaced
)

// checkRoute sends PUBSUB NUMSUB of the route channel through the command
// client. If the answer is zero while one confirmation of the route
// channel's subscription stood from before the question to after the
// answer, either the subscription is on another server than the commands,
// or its connection has just died (a server drops a closed connection's
// subscriptions at once; CLIENT KILL, or client-output-buffer-limit
// pubsub) and the reader has not noticed yet. To tell them apart it sends
// a PING on the subscription: a pong coming back on it, with the same
// confirmation still standing, proves the connection alive after the
// answer, so the subscription is elsewhere and checkRoute replaces it. A
// dead connection never answers; the reader sees it fail and repairs it as
// a disconnect. A subscription that is not confirmed is being
// re-established by go-redis, whose dialer resolves the server anew, and
// is left alone.
func (h *hub) checkRoute(ctx context.Context) (routeResult, error) {
	if !h.routeOn.Load() {
		return routeSkipped, nil
	}
	s := h.singleSub()
	if s == nil || !s.live.Load() {
		return routeSkipped, nil
	}
	gen := s.confirms.Load()
	rctx, cancel := context.WithTimeout(ctx, max(2*h.cfg.RouteCheckInterval, time.Second))
	defer cancel()
	n, err := h.client.PubSubNumSub(rctx, h.routeChannel).Result()
	switch {
	case err != nil:
		return routeSkipped, err
	case !s.live.Load() || s.confirms.Load() != gen:
		return routeSkipped, nil
	case n[h.routeChannel] > 0:
		return routeOK, nil
	}
	if !h.pingSub(rctx, s) || !s.live.Load() || s.confirms.Load() != gen {
		return routeSkipped, nil
	}
	h.reroute(s, "the subscription is on another server than the commands")
	return routeMoved, nil
}

// pingSub sends a PING with a fresh number as payload on s's subscription
// and waits until the reader gets that pong back. It reports false when
// the PING cannot be sent, the subscription fails meanwhile, or ctx ends.
func (h *hub) pingSub(ctx context.Context, s *sub) bool {
	h.mu.Lock()
	ps := s.ps
	h.mu.Unlock()
	if ps == nil {
		return false
	}
	fails := s.fails.Load()
	tok := s.pingSent.Add(1)
	if err := ps.Ping(ctx, strconv.FormatUint(tok, 10)); err != nil {
		return false
	}
	// The reader wakes us on the pong; a failure it sees only counts in
	// fails, so look at that every few milliseconds. Not live: that needs
	// the route channel, which is not subscribed with the route check
	// off, and anti-entropy's drain pings without it.
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for s.pong.Load() < tok {
		if s.fails.Load() != fails {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.pongCh:
		case <-poll.C:
		}
	}
	return true
}

// routeRefused turns the route check off for good when Redis refuses the
// route channel (an ACL user without the channel), and says once what to
// grant. The invalidation subscription is unaffected.
func (h *hub) routeRefused(err error) {
	if !h.routeOn.CompareAndSwap(true, false) {
		return
	}
	h.log.Warn("Redis refused the route channel; the route check is off, so after a Sentinel failover the subscription follows the new master only at anti-entropy's run id check (about one AntiEntropyInterval) instead of within RouteCheckInterval: for fast failover detection grant the user the channel pattern",
		zap.String("grant", "&"+wire.RouteChannels(h.cfg.Namespace)), zap.String("channel", h.routeChannel), zap.Error(err))
}

// followServer is anti-entropy's reaction to a changed run id on a
// standalone or Sentinel-managed Redis: unless a route check proves the
// subscription already on the server behind the commands (or finds it
// being re-established by go-redis), replace it.
func (h *hub) followServer(ctx context.Context) {
	s := h.singleSub()
	if s == nil {
		return
	}
	if h.routeOn.Load() {
		if _, err := h.checkRoute(ctx); err == nil || ctx.Err() != nil {
			return // proven, replaced, or being re-established already
		}
	}
	h.reroute(s, "the server's run id changed")
}

// reroute replaces s's connection: unhealthy and InvalidateAll now, then
// the reader (woken by the closed PubSub) subscribes again through the
// client's dialer; the new confirmation repairs once more and clears the
// reason.
func (h *hub) reroute(s *sub, why string) {
	h.mu.Lock()
	ps := s.ps
	if h.closed || s.stopped || ps == nil {
		// Closing, or the reader is subscribing anew already.
		h.mu.Unlock()
		return
	}
	s.replace.Store(true)
	for _, cs := range s.chans {
		cs.confirmed, cs.plainOK, cs.failing = false, false, true
	}
	for _, m := range h.everyone() {
		m.health.set(s.id, reasonRerouted)
		m.stats.reroutes.Add(1)
		m.requestInvalidateAll(CauseServerChanged)
	}
	h.mu.Unlock()
	s.live.Store(false)
	s.fails.Add(1)
	h.log.Warn("moving the invalidation subscription", zap.String("why", why), zap.Strings("channels", h.channels()))
	_ = ps.Close() // wakes the reader
}
