package invalidation_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/invalidation"
)

// failOnce is a connection whose Write fails once, closing it, when armed
// and the bytes name channel.
type failOnce struct {
	net.Conn
	armed   *atomic.Bool
	channel []byte
}

func (c failOnce) Write(p []byte) (int, error) {
	if bytes.Contains(p, c.channel) && c.armed.CompareAndSwap(true, false) {
		_ = c.Conn.Close()
		return 0, errors.New("injected write failure")
	}
	return c.Conn.Write(p)
}

// TestJoinSubscribeWriteFails: the SUBSCRIBE of a joining namespace fails
// on its write while go-redis reconnects within the call and resubscribes
// the channels it had (without the new one, which it adds to its set only
// once the call returns). The bus must send it again: the new bus is
// confirmed and hears its namespace.
func TestJoinSubscribeWriteFails(t *testing.T) {
	_, mc := startMini(t)
	addr := mc.Options().Addr
	var armed atomic.Bool
	c := redis.NewClient(&redis.Options{Addr: addr, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return failOnce{Conn: conn, armed: &armed, channel: []byte("late:inv")}, nil
	}})
	t.Cleanup(func() { _ = c.Close() })
	startBus(t, c, invalidation.Config{Namespace: "early", AntiEntropyInterval: -1, RouteCheckInterval: -1}, newRecorder())
	armed.Store(true)
	rec := newRecorder()
	b, err := invalidation.New(c, invalidation.Config{Namespace: "late", AntiEntropyInterval: -1, RouteCheckInterval: -1}, rec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatalf("Start after a failed SUBSCRIBE write: %v (armed still %v)", err, armed.Load())
	}
	if armed.Load() {
		t.Fatal("the injected failure did not happen: the test proves nothing")
	}
	publishDelete(t, publisher(t, mc, "late"), 0, "k")
	waitFor(t, 5*time.Second, "the late bus to hear its namespace", func() bool { return len(rec.Keys()) == 1 })
}
