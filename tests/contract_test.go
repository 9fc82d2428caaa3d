package tests

import (
	"context"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
	"github.com/nearcache/nearcache/tiered"
)

// defaultRepairBound is README's bound on repairing a lost invalidation with
// the default AntiEntropyInterval (1 s): "about 1.5 × AntiEntropyInterval,
// 2 s at most by default".
const defaultRepairBound = 2 * time.Second

// TestContractLostMessageRepairedWithinDefaultBound: an invalidation lost on
// a live connection (no disconnect, no later message in its partition: a
// lost tail, which only anti-entropy can see) stops being served within
// defaultRepairBound of the write, with every setting at its default. B
// loses A's messages by rejecting them: A signs with another HMAC key.
func TestContractLostMessageRepairedWithinDefaultBound(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	cfg := func(key string) tiered.Config[string] {
		return tiered.Config[string]{
			Redis:     newClient(t, srv.Addr(), healthyTimeouts),
			Namespace: "lost",
			MaxL1TTL:  time.Minute, // only the repair can end B's copy here
			HMACKey:   []byte(key),
		}
	}
	a := newCache(t, cfg("a's key"))
	b := newCache(t, cfg("b's key"))

	// B tracks the partition from its own first message on.
	if err := b.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "B to see its own message", func() bool { return b.Stats().Invalidation.Own >= 1 })
	if v := holdInL1(t, b, "k"); v != "v1" {
		t.Fatalf("B holds %q, want v1", v)
	}

	if err := a.Set(ctx, "k", "v2"); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 10*time.Second, "B to serve the write whose invalidation it lost", func() bool {
		v, err := b.Get(ctx, "k")
		return err == nil && v == "v2"
	})
	inv := b.Stats().Invalidation
	t.Logf("B served the new value %v after the write (bound %v); B's bus: %d auth rejects, %d disconnects, invalidate-all by cause %v",
		took, defaultRepairBound, inv.AuthRejects, inv.Disconnects, inv.InvalidateAll)
	if took > defaultRepairBound {
		t.Errorf("B served the overtaken value for %v after the write; the default bound is %v", took, defaultRepairBound)
	}
	if inv.AuthRejects == 0 || inv.InvalidateAll[invalidation.CauseLostTail] == 0 || inv.Disconnects != 0 {
		t.Errorf("B's bus: %d auth rejects, %d disconnects, invalidate-all by cause %v; want A's message rejected and the loss repaired by anti-entropy (lost_tail) without a disconnect",
			inv.AuthRejects, inv.Disconnects, inv.InvalidateAll)
	}
}
