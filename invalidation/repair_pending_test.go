package invalidation_test

import (
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
)

// gatedAll is a recorder whose InvalidateAll waits on a gate.
type gatedAll struct {
	*recorder
	entered chan invalidation.Cause
	gate    chan struct{}
}

func (g *gatedAll) InvalidateAll(c invalidation.Cause) {
	g.entered <- c
	<-g.gate
	g.recorder.InvalidateAll(c)
}

// A repair that is decided but not applied yet keeps the stream unhealthy
// (RepairPending) until the Handler has returned: Health never reports
// healthy while a decided InvalidateAll is still to come, which a cache
// relies on to keep its fills short meanwhile.
func TestHealthUnhealthyWhileRepairPending(t *testing.T) {
	mr, c := startMini(t)
	h := &gatedAll{recorder: newRecorder(), entered: make(chan invalidation.Cause, 4), gate: make(chan struct{})}
	b := startBus(t, c, invalidation.Config{Namespace: "rp", AntiEntropyInterval: -1}, h)
	t.Cleanup(func() {
		select {
		case <-h.gate:
		default:
			close(h.gate)
		}
	})
	if !b.Health().Healthy {
		t.Fatalf("Health after Start: %+v", b.Health())
	}
	mr.Publish(wire.Channel("rp"), "not an invalidation message") // a decode reject repairs
	var cause invalidation.Cause
	select {
	case cause = <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no InvalidateAll within 10s of a malformed message")
	}
	if cause != invalidation.CauseDecode {
		t.Fatalf("InvalidateAll(%v), want CauseDecode", cause)
	}
	if hl := b.Health(); hl.Healthy || hl.Reasons&invalidation.RepairPending == 0 || b.Healthy() {
		t.Errorf("Health while the repair is being applied: %+v (%s), want unhealthy: repair_pending", hl, hl.Reasons)
	}
	close(h.gate)
	waitFor(t, 10*time.Second, "healthy once the repair is applied", func() bool { return b.Health().Healthy })
	if got := h.Alls(); len(got) != 1 || got[0] != invalidation.CauseDecode {
		t.Errorf("InvalidateAll calls %v, want [decode]", got)
	}
}
