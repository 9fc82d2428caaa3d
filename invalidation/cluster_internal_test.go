package invalidation

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

type causeLog struct {
	mu   sync.Mutex
	alls []Cause
	keys int
}

func (h *causeLog) InvalidateKeys(k []string) { h.mu.Lock(); h.keys += len(k); h.mu.Unlock() }
func (h *causeLog) InvalidateAll(c Cause)     { h.mu.Lock(); h.alls = append(h.alls, c); h.mu.Unlock() }
func (h *causeLog) has(c Cause) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.alls, c)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, what, cond)
}

// TestSyncSubsFollowsMasters: when the set of masters changes, the bus
// closes the departed master's subscription, opens one on the new master,
// invalidates everything, and repairs again once the new one is confirmed.
func TestSyncSubsFollowsMasters(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	h := &causeLog{}
	// Long intervals: only this test changes the subscriptions.
	b, err := New(c, Config{Namespace: "t", AntiEntropyInterval: time.Minute}, h)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nsubs := func() int {
		b.lifeMu.Lock()
		defer b.lifeMu.Unlock()
		return len(b.subs)
	}
	if n := nsubs(); n != 3 {
		t.Fatalf("subscriptions after Start: %d, want 3", n)
	}
	nodes, err := b.masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	less := maps.Clone(nodes)
	for addr := range less {
		delete(less, addr)
		break
	}
	b.syncSubs(less) // a master left
	if n := nsubs(); n != 2 {
		t.Fatalf("subscriptions after a master left: %d, want 2", n)
	}
	eventually(t, "InvalidateAll(server_changed)", func() bool { return h.has(CauseServerChanged) })
	if !b.Health().Healthy {
		t.Errorf("unhealthy with every remaining subscription confirmed: %+v", b.Health())
	}
	b.syncSubs(nodes) // and (re)joined
	if n := nsubs(); n != 3 {
		t.Fatalf("subscriptions after a master joined: %d, want 3", n)
	}
	eventually(t, "the new subscription's repair and health", func() bool {
		return h.has(CauseResubscribe) && b.Health().Healthy
	})
	// Messages from every master arrive again, each applied once.
	a, _ := New(c, Config{Namespace: "t"}, &causeLog{})
	for _, p := range []int{0, 8000, 16000} {
		if err := a.Publish(ctx, p, a.EncodeDelete(p, []string{"k"})); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "three messages", func() bool { return b.Stats().Applied == 3 })
	eventually(t, "their six copies", func() bool { return b.Stats().Duplicates == 6 })
}
