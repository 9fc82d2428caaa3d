package invalidation

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

type nopHandler struct{}

func (nopHandler) InvalidateKeys([]string) {}
func (nopHandler) InvalidateAll(Cause)     {}

// TestReviewStaleConfirmationAfterReroute: a confirmation that the reader
// read from a connection the route check has just replaced (reroute) must
// not make the stream healthy: it speaks of the old connection, which is
// closed, while the new one is not subscribed yet (here: cannot even be
// dialled). The reader is made to handle such a confirmation right after
// reroute by holding the hub's lock while reroute and the reader queue on
// it, in that order.
func TestReviewStaleConfirmationAfterReroute(t *testing.T) {
	srv := redistest.StartServer(t)
	var block atomic.Bool
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if block.Load() {
			return nil, errors.New("dial refused by the test")
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}})
	t.Cleanup(func() { _ = c.Close() })
	b, err := New(c, Config{Namespace: "x", AntiEntropyInterval: -1, RouteCheckInterval: -1, PingInterval: time.Hour}, nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := b.hub.Load()
	s := h.singleSub()
	h.mu.Lock()
	old := s.ps
	h.mu.Unlock()
	block.Store(true)

	h.mu.Lock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.reroute(s, "test")
	}()
	time.Sleep(20 * time.Millisecond) // reroute waits on h.mu first
	// A SUBSCRIBE of the member channel on the old connection: its
	// confirmation reaches the reader, which then waits on h.mu behind
	// reroute.
	if err := old.Subscribe(ctx, b.channel); err != nil {
		h.mu.Unlock()
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	h.mu.Unlock()
	wg.Wait()

	// The old connection is closed and no new one can be dialled: nothing
	// is subscribed, so the bus must not be healthy.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if b.Health().Healthy {
			t.Fatalf("healthy after its subscription was replaced, with no connection to subscribe on (x:inv has %d subscribers)",
				srv.Client().PubSubNumSub(ctx, b.channel).Val()[b.channel])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
