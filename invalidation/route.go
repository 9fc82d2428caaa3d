package invalidation

import (
	"context"
	"time"

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
// beside the invalidation channel, never published to). Zero subscribers
// while the subscription is confirmed means the subscription is on another
// server: the bus replaces it at once.

// routeWatch runs the route check every RouteCheckInterval. After a
// replacement that the next check does not vindicate (the new subscription
// landed on another server than the commands again: a client that sends
// commands to replicas, or a proxy) it waits twice as long before the next
// check, up to maxRouteBackoff, so that such a client costs a repair every
// half minute rather than every interval; one passing check ends the
// backoff.
func (b *Bus) routeWatch(ctx context.Context) {
	defer b.wg.Done()
	select {
	case <-b.confirmed:
	case <-ctx.Done():
		return
	}
	iv := b.cfg.RouteCheckInterval
	t := time.NewTimer(iv)
	defer t.Stop()
	var (
		failing bool // the last check failed (logged once per run of failures)
		streak  int  // replacements in a row, without a passing check between
	)
	for {
		res, err := b.checkRoute(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				failing = true
				b.log.Warn("route check failed (PUBSUB NUMSUB through the client); anti-entropy's run id check still follows a failover", zap.Error(err))
			}
		case res == routeMoved:
			failing = false
			streak++
			if streak == 3 {
				b.log.Warn("the invalidation subscription keeps landing on another server than the commands; does the client send commands to replicas, or go through a proxy?")
			}
		case res == routeOK:
			failing = false
			streak = 0
		}
		wait := iv
		for i := 0; i < streak && wait < maxRouteBackoff; i++ {
			wait *= 2
		}
		t.Reset(min(wait, max(maxRouteBackoff, iv)))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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
// client. If the answer is zero while one confirmation of the subscription
// stood from before the question to after the answer, the subscription is
// on another server than the commands, and checkRoute replaces it. A
// subscription that is not confirmed is being re-established by go-redis,
// whose dialer resolves the server anew, and is left alone.
func (b *Bus) checkRoute(ctx context.Context) (routeResult, error) {
	b.lifeMu.Lock()
	s := b.subs[""]
	b.lifeMu.Unlock()
	if s == nil || !s.live.Load() {
		return routeSkipped, nil
	}
	gen := s.confirms.Load()
	rctx, cancel := context.WithTimeout(ctx, max(2*b.cfg.RouteCheckInterval, time.Second))
	n, err := b.client.PubSubNumSub(rctx, b.routeChannel).Result()
	cancel()
	switch {
	case err != nil:
		return routeSkipped, err
	case !s.live.Load() || s.confirms.Load() != gen:
		return routeSkipped, nil
	case n[b.routeChannel] > 0:
		return routeOK, nil
	}
	b.reroute(s, "the subscription is on another server than the commands")
	return routeMoved, nil
}

// followServer is anti-entropy's reaction to a changed run id on a
// standalone or Sentinel-managed Redis: unless a route check proves the
// subscription already on the server behind the commands (or finds it
// being re-established by go-redis), replace it.
func (b *Bus) followServer(ctx context.Context) {
	b.lifeMu.Lock()
	s := b.subs[""]
	b.lifeMu.Unlock()
	if s == nil {
		return
	}
	if b.routeChannel != "" {
		if _, err := b.checkRoute(ctx); err == nil || ctx.Err() != nil {
			return // proven, replaced, or being re-established already
		}
	}
	b.reroute(s, "the server's run id changed")
}

// reroute replaces s's connection: unhealthy and InvalidateAll now, then
// the reader (woken by the closed PubSub) subscribes again through the
// client's dialer; the new confirmation repairs once more and clears the
// reason.
func (b *Bus) reroute(s *sub, why string) {
	b.lifeMu.Lock()
	ps := s.ps
	if b.closed || s.stopped || ps == nil {
		// Closing, or the reader is subscribing anew already.
		b.lifeMu.Unlock()
		return
	}
	s.replace.Store(true)
	b.lifeMu.Unlock()
	s.live.Store(false)
	b.health.set(s.id, reasonRerouted)
	b.stats.reroutes.Add(1)
	b.requestInvalidateAll(CauseServerChanged)
	b.log.Warn("moving the invalidation subscription", zap.String("why", why), zap.String("channel", b.channel))
	_ = ps.Close() // wakes the reader
}
