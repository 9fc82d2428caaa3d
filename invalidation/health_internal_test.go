package invalidation

import (
	"sync"
	"testing"
)

// A Health read while the stream turns healthy and unhealthy again is one
// state, never a mix of two: unhealthy always comes with a reason and a
// time, healthy with neither.
func TestHealthConsistent(t *testing.T) {
	var h healthState
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			h.set(1, reasonDisconnected)
			h.clear(1, reasonDisconnected)
		}
	})
	defer wg.Wait()
	defer close(stop)
	for range 200000 {
		got := h.get()
		if got.Healthy != (got.Reasons == 0) || got.Healthy != got.UnhealthySince.IsZero() {
			t.Fatalf("Health %+v: healthy, reasons and time disagree", got)
		}
	}
}
