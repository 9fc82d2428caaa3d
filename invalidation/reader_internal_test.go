package invalidation

import (
	"context"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// TestReaderDropsOversized: a payload longer than any publisher following
// the contract produces never reaches the queue. Without an HMAC key it is
// a decode reject and invalidates everything (it may have been a lost
// invalidation); with a key it is an auth reject and changes nothing. The
// longest legal payload still goes through the queue.
func TestReaderDropsOversized(t *testing.T) {
	for _, tc := range []struct {
		name   string
		key    []byte
		decode uint64
		auth   uint64
		all    bool
	}{
		{"unsigned", nil, 1, 0, true},
		{"signed", []byte("secret"), 0, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			defer c.Close()
			h := &causeLog{}
			b, err := New(c, Config{Namespace: "t", AntiEntropyInterval: -1, HMACKey: tc.key}, h)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx := context.Background()
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx, b.Channel(), strings.Repeat("x", maxPayload+1)).Err(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the reject", func() bool {
				s := b.Stats()
				return s.Received == 1 && s.DecodeRejects+s.AuthRejects == 1
			})
			if s := b.Stats(); s.DecodeRejects != tc.decode || s.AuthRejects != tc.auth {
				t.Errorf("decode rejects %d, auth rejects %d; want %d, %d", s.DecodeRejects, s.AuthRejects, tc.decode, tc.auth)
			}
			if n := b.hub.Load().enqueued.Load(); n != 0 {
				t.Errorf("oversized payload queued (%d items), want dropped by the reader", n)
			}
			if tc.all {
				eventually(t, "InvalidateAll(decode)", func() bool { return h.has(CauseDecode) })
			}
			// The longest legal length is queued (and then rejected by decode).
			if err := c.Publish(ctx, b.Channel(), strings.Repeat("x", maxPayload)).Err(); err != nil {
				t.Fatal(err)
			}
			// The reader counts what it queued after the send, so the worker
			// may have handled an item before it is counted: wait for both.
			eventually(t, "the second payload", func() bool { return b.hub.Load().processed.Load() == 1 && b.hub.Load().enqueued.Load() == 1 })
			if s := b.Stats(); s.DecodeRejects+s.AuthRejects != 2 || b.hub.Load().enqueued.Load() != 1 {
				t.Errorf("after a payload of the maximum length: rejects %d, queued %d; want 2, 1", s.DecodeRejects+s.AuthRejects, b.hub.Load().enqueued.Load())
			}
			if !tc.all && h.has(CauseDecode) {
				t.Errorf("signed bus invalidated everything on unauthenticated bytes")
			}
		})
	}
}
