package invalidation_test

import (
	"testing"

	"github.com/nearcache/nearcache/invalidation"
)

// TestHealthyWhenStartReturns: Start returns once Redis has confirmed the
// subscription, and from then on the stream is healthy. (The reader used to
// release Start before it cleared the subscription's "not subscribed"
// reason, so a fill right after tiered.New could see the stream unhealthy
// and get UnhealthyL1TTL; that window is narrow, hence the repetitions.)
func TestHealthyWhenStartReturns(t *testing.T) {
	_, c := startMini(t)
	for i := range 50 {
		b := startBus(t, c, invalidation.Config{Namespace: "start"}, newRecorder())
		if h := b.Health(); !h.Healthy {
			t.Fatalf("start %d: Health right after Start: %+v, want healthy", i, h)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
