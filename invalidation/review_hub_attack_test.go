package invalidation_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/internal/wire"
	"github.com/nearcache/nearcache/invalidation"
)

// repairedAfter reports whether r saw a Resubscribe after a cause in want.
func repairedAfter(r *recorder, want invalidation.Cause) bool {
	alls := r.Alls()
	i := slices.Index(alls, want)
	return i >= 0 && slices.Contains(alls[i+1:], invalidation.CauseResubscribe)
}

// TestHubRestartAndJoinWhileDown: three namespaces share a connection; the
// server is killed; a fourth bus starts while it is down (Start times
// out); the server comes back. Every member, the late one included,
// invalidates everything, repairs once its channel is confirmed again,
// ends healthy and hears its own namespace.
func TestHubRestartAndJoinWhileDown(t *testing.T) {
	srv := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	cfg := func(ns string) invalidation.Config {
		return invalidation.Config{Namespace: ns, AntiEntropyInterval: 50 * time.Millisecond, PingInterval: 100 * time.Millisecond}
	}
	recs := []*recorder{newRecorder(), newRecorder(), newRecorder(), newRecorder()}
	buses := make([]*invalidation.Bus, 4)
	for i := range 3 {
		buses[i] = startBus(t, c, cfg("n"+strconv.Itoa(i)), recs[i])
	}
	srv.Kill()
	for i := range 3 {
		waitFor(t, 5*time.Second, "member "+strconv.Itoa(i)+" unhealthy", func() bool { return !buses[i].Health().Healthy })
	}
	late, err := invalidation.New(c, cfg("n3"), recs[3])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = late.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = late.Start(ctx)
	cancel()
	if err == nil {
		t.Fatal("Start returned nil with the server down")
	}
	buses[3] = late
	if late.Health().Healthy {
		t.Fatal("late member healthy with the server down")
	}
	srv.Restart()
	admin := srv.Client()
	for i, b := range buses {
		waitFor(t, 10*time.Second, "member "+strconv.Itoa(i)+" healthy again", func() bool { return b.Health().Healthy })
		if i < 3 && !repairedAfter(recs[i], invalidation.CauseDisconnect) {
			t.Errorf("member %d: InvalidateAll %v, want Disconnect then Resubscribe", i, recs[i].Alls())
		}
	}
	waitFor(t, 5*time.Second, "the late member's repair", func() bool { return recs[3].HasAll(invalidation.CauseResubscribe) })
	for i := range buses {
		publishDelete(t, publisher(t, admin, "n"+strconv.Itoa(i)), 0, fmt.Sprint("after", i))
	}
	for i, r := range recs {
		want := fmt.Sprint("after", i)
		waitFor(t, 5*time.Second, "member "+strconv.Itoa(i)+" to hear "+want, func() bool { return slices.Contains(r.Keys(), want) })
	}
}

// TestHubLeaveJoinSameNamespace: a bus of a namespace closes while another
// of the same namespace starts, over and over, beside a bus that keeps the
// transport alive: the channel ends subscribed once and the last bus hears
// its namespace and is healthy.
func TestHubLeaveJoinSameNamespace(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	cfg := invalidation.Config{Namespace: "keep", AntiEntropyInterval: 50 * time.Millisecond}
	startBus(t, c, cfg, newRecorder())
	var prev *invalidation.Bus
	var rec *recorder
	for i := range 40 {
		rec = newRecorder()
		b, err := invalidation.New(c, invalidation.Config{Namespace: "x", AntiEntropyInterval: 50 * time.Millisecond}, rec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		errc := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errc <- b.Start(ctx)
		}()
		if prev != nil {
			if i%2 == 0 {
				time.Sleep(time.Duration(i%5) * time.Millisecond)
			}
			if err := prev.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := <-errc; err != nil {
			t.Fatalf("Start %d: %v", i, err)
		}
		prev = b
	}
	waitFor(t, 5*time.Second, "x:inv subscribed once", func() bool { return numSub(t, admin, "x:inv") == 1 })
	time.Sleep(100 * time.Millisecond)
	if n := numSub(t, admin, "x:inv"); n != 1 {
		t.Fatalf("x:inv has %d subscribers, want 1", n)
	}
	publishDelete(t, publisher(t, admin, "x"), 0, "last")
	waitFor(t, 5*time.Second, "the last bus to hear its namespace", func() bool { return slices.Contains(rec.Keys(), "last") })
	if !prev.Health().Healthy {
		t.Errorf("last bus unhealthy: %+v", prev.Health())
	}
}

// TestHubOverflowPerChannel: a full shared queue drops messages of some
// channels; every member whose message was dropped invalidates everything
// (Overflow) and is healthy again after; a member none of whose messages
// were dropped is not invalidated.
func TestHubOverflowPerChannel(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	gate := make(chan struct{})
	slowRec := newRecorder()
	var first = make(chan struct{}, 1)
	slowRec.onKey = func([]string) {
		select {
		case first <- struct{}{}:
			<-gate
		default:
		}
	}
	cfg := func(ns string) invalidation.Config {
		return invalidation.Config{Namespace: ns, AntiEntropyInterval: -1, BufferSize: 4}
	}
	slow := startBus(t, c, cfg("slow"), slowRec)
	busyRec, quietRec := newRecorder(), newRecorder()
	busy := startBus(t, c, cfg("busy"), busyRec)
	quiet := startBus(t, c, cfg("quiet"), quietRec)
	pubSlow, pubBusy := publisher(t, admin, "slow"), publisher(t, admin, "busy")
	publishDelete(t, pubSlow, 0, "block")
	<-first // the worker is stuck in slow's Handler
	for i := range 10 {
		publishDelete(t, pubBusy, 0, fmt.Sprint("b", i))
		publishDelete(t, pubSlow, 0, fmt.Sprint("s", i))
	}
	waitFor(t, 5*time.Second, "drops", func() bool { return busy.Stats().Dropped > 0 && slow.Stats().Dropped > 0 })
	if busy.Health().Healthy || slow.Health().Healthy {
		t.Errorf("healthy with dropped messages: busy %+v, slow %+v", busy.Health(), slow.Health())
	}
	close(gate)
	waitFor(t, 5*time.Second, "busy's overflow repair", func() bool { return busyRec.HasAll(invalidation.CauseOverflow) })
	waitFor(t, 5*time.Second, "slow's overflow repair", func() bool { return slowRec.HasAll(invalidation.CauseOverflow) })
	waitFor(t, 5*time.Second, "healthy again", func() bool { return busy.Health().Healthy && slow.Health().Healthy })
	if a := quietRec.Alls(); len(a) != 0 || !quiet.Health().Healthy {
		t.Errorf("quiet member: InvalidateAll %v, health %+v; want none, healthy", a, quiet.Health())
	}
}

// TestHubEpochPerNamespace: a deleted epoch key invalidates its
// namespace's members only; FLUSHALL invalidates every member.
func TestHubEpochPerNamespace(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	cfg := func(ns string) invalidation.Config {
		return invalidation.Config{Namespace: ns, AntiEntropyInterval: 30 * time.Millisecond}
	}
	recs := []*recorder{newRecorder(), newRecorder(), newRecorder(), newRecorder()}
	buses := []*invalidation.Bus{
		startBus(t, c, cfg("e0"), recs[0]), startBus(t, c, cfg("e1"), recs[1]),
		startBus(t, c, cfg("e1"), recs[2]), startBus(t, c, cfg("e2"), recs[3]),
	}
	r0 := buses[3].Stats().AERounds
	waitFor(t, 5*time.Second, "rounds", func() bool { return buses[3].Stats().AERounds >= r0+2 })
	if err := admin.Del(context.Background(), wire.EpochKey("e1", 0)).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "e1's members to see the epoch change", func() bool {
		return recs[1].HasAll(invalidation.CauseEpoch) && recs[2].HasAll(invalidation.CauseEpoch)
	})
	r0 = buses[3].Stats().AERounds
	waitFor(t, 5*time.Second, "rounds", func() bool { return buses[3].Stats().AERounds >= r0+3 })
	if recs[0].HasAll(invalidation.CauseEpoch) || recs[3].HasAll(invalidation.CauseEpoch) {
		t.Errorf("another namespace's epoch key made e0 or e2 invalidate: %v, %v", recs[0].Alls(), recs[3].Alls())
	}
	if err := admin.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		waitFor(t, 5*time.Second, "member "+strconv.Itoa(i)+" to see FLUSHALL", func() bool {
			n := 0
			for _, c := range r.Alls() {
				if c == invalidation.CauseEpoch {
					n++
				}
			}
			return (i == 1 || i == 2) && n >= 2 || (i == 0 || i == 3) && n >= 1
		})
	}
}

// TestHubClusterKillOneMaster: on Redis Cluster, several namespaces share
// one subscription per master; killing the pub/sub connections of one
// master makes every member invalidate everything and repair once its
// channel is confirmed again there, and each keeps hearing its namespace.
func TestHubClusterKillOneMaster(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	cfg := func(ns string) invalidation.Config {
		return invalidation.Config{Namespace: ns, AntiEntropyInterval: 100 * time.Millisecond}
	}
	recs := []*recorder{newRecorder(), newRecorder(), newRecorder()}
	buses := make([]*invalidation.Bus, len(recs))
	for i := range recs {
		buses[i] = startBus(t, c, cfg("c"+strconv.Itoa(i)), recs[i])
	}
	if _, err := cl.Masters[1].Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
		t.Fatal(err)
	}
	for i, b := range buses {
		waitFor(t, 10*time.Second, "member "+strconv.Itoa(i)+" to repair", func() bool {
			return repairedAfter(recs[i], invalidation.CauseDisconnect) && b.Health().Healthy
		})
	}
	for i := range buses {
		p, err := invalidation.New(c, invalidation.Config{Namespace: "c" + strconv.Itoa(i)}, newRecorder())
		if err != nil {
			t.Fatal(err)
		}
		for part := range 8 {
			publishDelete(t, p, part*2000, fmt.Sprintf("k%d-%d", i, part))
		}
		_ = p.Close()
	}
	for i, r := range recs {
		waitFor(t, 5*time.Second, "member "+strconv.Itoa(i)+" to hear every partition", func() bool { return len(r.Keys()) == 8 })
	}
}

// TestHubCloseHungServer: with a client without timeouts and a server that
// stopped answering, closing every member of a shared transport returns
// within CloseWait and some margin.
func TestHubCloseHungServer(t *testing.T) {
	srv := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: -1, WriteTimeout: -1, DialTimeout: time.Hour})
	t.Cleanup(func() { _ = c.Close() })
	cfg := func(ns string) invalidation.Config {
		return invalidation.Config{Namespace: ns, AntiEntropyInterval: 50 * time.Millisecond, PingInterval: 50 * time.Millisecond}
	}
	a := startBus(t, c, cfg("h0"), newRecorder())
	b := startBus(t, c, cfg("h1"), newRecorder())
	srv.Pause()
	t.Cleanup(srv.Resume)
	time.Sleep(300 * time.Millisecond) // the reader has replaced the silent connection, anti-entropy hangs
	start := time.Now()
	_ = a.Close()
	_ = b.Close()
	if d := time.Since(start); d > invalidation.CloseWait+time.Second {
		t.Errorf("closing both members took %v with a hung server, want at most CloseWait (%v) and a second", d, invalidation.CloseWait)
	}
	srv.Resume()
	_ = c.Close()
}
