package invalidation_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
)

// TestAntiEntropyLostTailRouteCheckOff: anti-entropy finds a lost last
// message with the route check off too (RouteCheckInterval < 0, as with an
// ACL user refused the route channel, or a client that is not a
// *redis.Client). The PING that proves the messages in flight were handled
// must not depend on the route channel. One CPU (a container limited to
// one core) makes the outcome independent of how fast the pong comes back.
func TestAntiEntropyLostTailRouteCheckOff(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	_, c := startMini(t)
	rb := newRecorder()
	cfg := invalidation.Config{Namespace: "t", AntiEntropyInterval: 50 * time.Millisecond, RouteCheckInterval: -1}
	invalidation.SetTestDrop(&cfg, func(p int, seq uint64) bool { return seq == 5 })
	a := startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: -1}, newRecorder())
	b := startBus(t, c, cfg, rb)
	for i := 0; i < 5; i++ {
		publishDelete(t, a, 0, fmt.Sprint("k", i))
	}
	waitFor(t, 5*time.Second, "anti-entropy to find the lost tail with the route check off", func() bool { return rb.HasAll(invalidation.CauseLostTail) })
	if s := b.Stats(); s.LostTails != 1 || s.Applied != 4 {
		t.Errorf("stats: lost tails %d, applied %d; want 1, 4", s.LostTails, s.Applied)
	}
}

// isolationCase sets up two namespaces, "good" and "bad", on one client
// (one shared transport) and breaks what anti-entropy reads of "bad";
// "good" must keep its loss detection and its health.
func testAEIsolation(t *testing.T, c *redis.Client, admin *redis.Client, breakBad func()) {
	t.Helper()
	const iv = 50 * time.Millisecond
	goodRec, badRec := newRecorder(), newRecorder()
	goodCfg := invalidation.Config{Namespace: "good", AntiEntropyInterval: iv}
	invalidation.SetTestDrop(&goodCfg, func(p int, seq uint64) bool { return seq == 5 })
	good := startBus(t, c, goodCfg, goodRec)
	bad := startBus(t, c, invalidation.Config{Namespace: "bad", AntiEntropyInterval: iv}, badRec)
	pubGood, pubBad := publisher(t, admin, "good"), publisher(t, admin, "bad")
	// "bad" tracks partition 0, so that anti-entropy reads its sequence key.
	publishDelete(t, pubBad, 0, "b0")
	waitFor(t, 5*time.Second, "bad to hear its message", func() bool { return len(badRec.Keys()) == 1 })
	breakBad()
	waitFor(t, 5*time.Second, "bad's anti-entropy to fail", func() bool { return bad.Stats().AEErrors > 0 })
	for i := 0; i < 5; i++ {
		publishDelete(t, pubGood, 0, fmt.Sprint("k", i))
	}
	waitFor(t, 5*time.Second, "good to find its lost tail while bad's keys cannot be read", func() bool { return goodRec.HasAll(invalidation.CauseLostTail) })
	errs := good.Stats().AEErrors
	rounds := good.Stats().AERounds
	waitFor(t, 5*time.Second, "three more rounds of good", func() bool { return good.Stats().AERounds >= rounds+3 })
	if d := good.Stats().AEErrors - errs; d != 0 {
		t.Errorf("good counted %d failed anti-entropy rounds for bad's keys", d)
	}
	if !good.Health().Healthy {
		t.Errorf("good unhealthy because of bad's keys: %+v", good.Health())
	}
	if bad.Health().Healthy {
		t.Error("bad healthy although its anti-entropy cannot read its keys")
	}
}

// TestAECorruptSequenceKeyIsolated: a sequence key of one namespace that
// holds garbage fails that namespace's anti-entropy, not that of the other
// namespaces sharing the transport.
func TestAECorruptSequenceKeyIsolated(t *testing.T) {
	_, c := startMini(t)
	testAEIsolation(t, c, c, func() {
		if err := c.Set(context.Background(), wire.SeqKey("bad", 0), "garbage", 0).Err(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestAECorruptEpochKeyIsolated: an epoch key of one namespace of the wrong
// type (WRONGTYPE on GET) fails that namespace's anti-entropy only.
func TestAECorruptEpochKeyIsolated(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	testAEIsolation(t, c, admin, func() {
		k := wire.EpochKey("bad", 0)
		// One transaction: anti-entropy recreates a missing epoch key.
		_, err := admin.TxPipelined(context.Background(), func(p redis.Pipeliner) error {
			p.Del(context.Background(), k)
			p.HSet(context.Background(), k, "f", "v")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestAEACLOneNamespaceIsolated: a client whose ACL user may read the
// keys of some namespaces only: the namespaces it may read keep their
// anti-entropy; the others fail theirs.
func TestAEACLOneNamespaceIsolated(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	if err := admin.Do(context.Background(), "ACL", "SETUSER", "nc", "on", ">pw", "resetkeys", "~*good:inv:*", "allchannels", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "nc", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	testAEIsolation(t, c, admin, func() {})
}
