package invalidation

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// startShardBus starts a bus on a fresh 3-master cluster, with long
// intervals so that only the test changes its subscriptions, and waits
// until it is healthy.
func startShardBus(t *testing.T) (*Bus, *hub) {
	t.Helper()
	cl := redistest.StartCluster(t)
	b, err := New(cl.Client(), Config{Namespace: "t", AntiEntropyInterval: time.Minute}, &causeLog{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "healthy after Start", func() bool { return b.Health().Healthy })
	return b, b.hub.Load()
}

// TestReviewShardSwapIsNotConfirmed: a look in which one master's
// subscription loses a slot and gains another (the same number of slots)
// must keep the members unhealthy on it until the new slot's SSUBSCRIBE is
// confirmed. settleLocked compared only the number of slots, so the swap
// settled at once, with the old slot's confirmation standing in for the
// new one's: healthy while the new slot was subscribed nowhere.
func TestReviewShardSwapIsNotConfirmed(t *testing.T) {
	b, h := startShardBus(t)
	topo, err := h.look(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var a, o string
	for addr := range topo.slots {
		if a == "" {
			a = addr
		} else if o == "" {
			o = addr
		}
	}
	var x, y int
	for sl := range topo.slots[a] {
		x = sl
		break
	}
	for sl := range topo.slots[o] {
		y = sl
		break
	}
	// x moved from a to o, y from o to a, between two looks.
	delete(topo.slots[a], x)
	topo.slots[a][y] = struct{}{}
	delete(topo.slots[o], y)
	topo.slots[o][x] = struct{}{}
	h.syncSubs(topo)
	// Nothing has been sent yet: the subscription must not vouch for the
	// member channel (Health also waits for the look's repair, which
	// hides this until the worker has run it).
	if r, confirmed := subState(h, b, a); r&reasonNotSubscribed == 0 || confirmed {
		t.Fatalf("right after a look gave %s slot %d (and took %d): its reasons %v, channel confirmed %v; want not_subscribed, unconfirmed (the SSUBSCRIBE of %d was not even sent)",
			a, y, x, HealthReason(r), confirmed, y)
	}
}

// TestReviewLostForgetsShardConfirmations: after a connection failure,
// go-redis resubscribes NS:inv (SUBSCRIBE) before the shard channels
// (one SSUBSCRIBE that Redis refuses: CROSSSLOT). The SUBSCRIBE's
// confirmation must not confirm the member channel with the shard
// confirmations of the failed connection.
func TestReviewLostForgetsShardConfirmations(t *testing.T) {
	b, h := startShardBus(t)
	h.mu.Lock()
	var s *sub
	for _, x := range h.subs {
		if len(x.slots) > 1 {
			s = x
			break
		}
	}
	h.mu.Unlock()
	if s == nil {
		t.Fatal("no subscription with shard channels")
	}
	h.lost(s, CauseDisconnect, reasonDisconnected, errors.New("i/o: connection reset"))
	h.confirmChannel(s, b.channel) // go-redis's resubscription: the plain channel first
	if r, confirmed := subState(h, b, s.addr); r&reasonDisconnected == 0 || confirmed {
		t.Fatalf("after a connection failure and the plain channel's confirmation: reasons %v, channel confirmed %v; want disconnected, unconfirmed (%d shard channels not subscribed again)",
			HealthReason(r), confirmed, len(s.slots))
	}
}

// subState returns b's health reasons on the subscription of addr and
// whether b's channel is confirmed there.
func subState(h *hub, b *Bus, addr string) (reason, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.subs[addr]
	b.health.mu.Lock()
	r := b.health.reasons[s.id]
	b.health.mu.Unlock()
	cs := s.chans[b.channel]
	return r, cs != nil && cs.confirmed
}

// TestReviewSlotAfterRecoveredStall: a stall (a silence past two pings)
// that ends without the connection failing leaves the subscription
// in place. A slot its master gains afterwards must settle once its
// SSUBSCRIBE is confirmed; lost had cleared plainOK for a stall too, and
// only a new connection's SUBSCRIBE sets it, so the members stayed
// unhealthy on that subscription until its connection next failed.
func TestReviewSlotAfterRecoveredStall(t *testing.T) {
	b, h := startShardBus(t)
	topo, err := h.look(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var a string
	for addr := range topo.slots {
		a = addr
		break
	}
	h.mu.Lock()
	s := h.subs[a]
	h.mu.Unlock()
	// The reader's stall, then its recovery (a reply arrives).
	h.lost(s, CauseStall, reasonStalled, errors.New("i/o timeout"))
	for _, m := range h.everyone() {
		m.health.clear(s.id, reasonStalled)
	}
	// A look that drops one of a's slots, then one that gives it back
	// (the slot left and came back, or a stale view, between looks).
	var x int
	for sl := range topo.slots[a] {
		x = sl
		break
	}
	less, err := h.look(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	delete(less.slots[a], x)
	h.syncSubs(less)
	eventually(t, "slot dropped", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		_, held := s.chans[b.channel].shards[x]
		return !held
	})
	h.syncSubs(topo)
	eventually(t, "the subscription to confirm the slot it got back", func() bool {
		r, confirmed := subState(h, b, a)
		return r == 0 && confirmed
	})
}
