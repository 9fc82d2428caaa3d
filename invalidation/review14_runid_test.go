package invalidation_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// busyScript keeps the server busy for about 600 ms; past
// busy-reply-threshold every other client's command, INFO included, is
// answered with BUSY.
const busyScript = `local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > 600000
return 1`

// TestReview14BusyInfoKeepsRunIDCheck: INFO answered BUSY (a slow script
// on the server) is a passing state, not a server without run ids: the
// rounds after it still compare run ids, so that a restart afterwards is
// seen as a changed server (InvalidateAll(server_changed)), as it is when
// no round ever met BUSY.
func TestReview14BusyInfoKeepsRunIDCheck(t *testing.T) {
	s := redistest.StartServer(t, redistest.WithArgs("--busy-reply-threshold", "100"))
	admin := s.Client()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: 1})
	defer c.Close()
	rb := newRecorder()
	// The route check off: only anti-entropy's run id check reports a
	// changed server. No reader ping while the server is busy.
	b := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: 50 * time.Millisecond, RouteCheckInterval: -1, PingInterval: time.Minute}, rb)
	waitFor(t, 5*time.Second, "two rounds", func() bool { return b.Stats().AERounds >= 2 })

	errs := b.Stats().AEErrors
	if err := admin.Eval(context.Background(), busyScript, nil).Err(); err != nil {
		t.Fatalf("busy script: %v", err)
	}
	if b.Stats().AEErrors == errs {
		t.Fatalf("no anti-entropy round failed while the server was busy")
	}
	r := b.Stats().AERounds
	waitFor(t, 5*time.Second, "two rounds after the script", func() bool { return b.Stats().AERounds >= r+2 })
	if rb.HasAll(invalidation.CauseServerChanged) {
		t.Fatalf("server changed before the restart: %v", rb.Alls())
	}

	s.Restart()
	waitFor(t, 10*time.Second, "the restart (epoch key)", func() bool { return rb.HasAll(invalidation.CauseEpoch) })
	r = b.Stats().AERounds
	waitFor(t, 10*time.Second, "two rounds after the restart", func() bool { return b.Stats().AERounds >= r+2 })
	// The worker calls the Handler after the round has decided; the run
	// id check must survive BUSY.
	waitFor(t, 10*time.Second, "InvalidateAll(server_changed) after a BUSY INFO and a restart", func() bool { return rb.HasAll(invalidation.CauseServerChanged) })
}
