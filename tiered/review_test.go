package tiered

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// Tests from the review of issue 11's fixes: each failed before its fix.

// TestReviewHalfOpenProbeCutByCaller: after the breaker opened on a slow
// Redis and its cooldown passed, the one half-open probe belongs to a caller
// whose own deadline ends mid-call. The probe slot must be released at once
// (it told nothing about Redis), so that the next caller probes a Redis that
// is healthy again instead of failing for a further cooldown.
func TestReviewHalfOpenProbeCutByCaller(t *testing.T) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	const cooldown = 2 * time.Second
	c := newCache(t, Config[string]{Redis: newClient(t, px.Addr()), Namespace: "probe",
		RedisTimeout: 100 * time.Millisecond, BreakerFailures: 2, BreakerCooldown: cooldown})
	bg := context.Background()

	px.Delay(400*time.Millisecond, "evalsha")
	for i := range 2 {
		if err := c.Set(bg, "k"+strconv.Itoa(i), "v"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Set against a slow Redis: %v", err)
		}
	}
	if st := c.Stats().L2; st.Breaker != BreakerOpen {
		t.Fatalf("breaker after 2 RedisTimeouts: %s, want open", st.Breaker)
	}
	opened := time.Now()
	redistest.WaitFor(t, 3*cooldown, "the cooldown to pass", func() bool { return time.Since(opened) > cooldown+50*time.Millisecond })

	// The probe: a caller out of budget while the script is still held.
	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	err := c.Set(ctx, "probe", "v")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe Set whose ctx ends mid-call: %v, want DeadlineExceeded", err)
	}

	// Redis is healthy again; a caller with time to spare.
	px.Delay(0)
	start := time.Now()
	if err := c.Set(bg, "healthy", "v"); err != nil {
		t.Errorf("healthy Set right after a probe cut short by its caller: %v (breaker %s); "+
			"want the write to go through (the cut probe should free the half-open slot), not ErrUnavailable for another %v",
			err, c.Stats().L2.Breaker, cooldown)
	}
	if _, err := c.Get(bg, "healthy"); err != nil && time.Since(start) < cooldown {
		t.Errorf("healthy Get right after the cut probe: %v (breaker %s)", err, c.Stats().L2.Breaker)
	}
}

// TestReviewReplicaDefaultOptions: a client with go-redis's default options
// (ContextTimeoutEnabled false, ReadTimeout 3 s) pointed at a replica, or a
// failover client with ReplicaOnly built the same way, is refused: the
// default ReadTimeout bounds the ROLE question.
func TestReviewReplicaDefaultOptions(t *testing.T) {
	master := redistest.StartServer(t)
	replica := redistest.StartServer(t, redistest.WithArgs("--replicaof", "127.0.0.1", strconv.Itoa(master.Port())))
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr()})
	t.Cleanup(func() { _ = rc.Close() })
	redistest.WaitFor(t, 5*time.Second, "the replica to answer ROLE", func() bool {
		r, err := rc.Do(context.Background(), "ROLE").Slice()
		return err == nil && len(r) > 0 && r[0] == "slave"
	})
	c, err := New(Config[string]{Redis: rc, Namespace: "rep"})
	if err == nil {
		_ = c.Close()
	}
	if !errors.Is(err, ErrReplicaRouting) {
		t.Errorf("New with redis.NewClient(&redis.Options{Addr: <replica>}) (default options): got %v, want ErrReplicaRouting", err)
	}
}

// TestReviewReplicaNoStartWait: a StartTimeout too short for a round trip
// (New waits for the subscription hardly at all; New refuses a negative
// one) must not turn the ROLE question into one asked with an expired ctx,
// which would let a replica through.
func TestReviewReplicaNoStartWait(t *testing.T) {
	master := redistest.StartServer(t)
	replica := redistest.StartServer(t, redistest.WithArgs("--replicaof", "127.0.0.1", strconv.Itoa(master.Port())))
	rc := newClient(t, replica.Addr())
	if r, err := rc.Do(context.Background(), "ROLE").Slice(); err != nil || len(r) == 0 || r[0] != "slave" {
		t.Fatalf("ROLE of the replica: %v %v", r, err)
	}
	for _, st := range []time.Duration{time.Nanosecond, -1} { // shortest wait, and no wait
		c, err := New(Config[string]{Redis: rc, Namespace: "rep", StartTimeout: st})
		if err == nil {
			_ = c.Close()
		}
		if !errors.Is(err, ErrReplicaRouting) {
			t.Errorf("New(StartTimeout %v) with a ContextTimeoutEnabled client of a replica: got %v, want ErrReplicaRouting", st, err)
		}
	}
}

// TestReviewInDoubtClear: Clear publishes its first clear, then the removal
// of the key is held back past the caller's deadline; Clear fails, and
// meanwhile another instance (and the writer) refill the key from Redis,
// which still holds it. Then the held removal runs. Before the fix it was a
// plain UNLINK, and the "tell them again" message was sent only after a
// successful one, so both kept serving the cleared value (until MaxL1TTL).
// Now each batch is removed by a script that publishes its invalidation.
func TestReviewInDoubtClear(t *testing.T) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	bg := context.Background()
	w := newCache(t, Config[string]{Redis: newClient(t, px.Addr()), Namespace: "clr"})
	o := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "clr"})
	if err := w.Set(bg, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := o.Get(bg, "k"); err != nil || v != "v" {
		t.Fatalf("o.Get: %q %v", v, err)
	}
	// Hold back the removal of the key (the batch's write script names it;
	// the clear-all before it and the reads after it pass).
	// Each write shape has its own script: a Clear of another namespace
	// caches Clear's scripts, so the held EVALSHA runs when released.
	warm := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "clrwarm"})
	if err := warm.Set(bg, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := warm.Clear(bg); err != nil {
		t.Fatal(err)
	}
	release := px.Hold("evalsha", "clr:k")
	ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
	err := w.Clear(ctx)
	cancel()
	if err == nil {
		t.Fatalf("Clear with its UNLINK held past the caller's deadline: nil error")
	}
	// Both refill from Redis, which still holds the key.
	eventually(t, "o to refill k after the first clear", func() bool {
		v, err := o.Get(bg, "k")
		return err == nil && v == "v"
	})
	if v, err := w.Get(bg, "k"); err != nil || v != "v" {
		t.Fatalf("w.Get before the held UNLINK ran: %q %v", v, err)
	}
	release()
	rc := srv.Client()
	eventually(t, "the held UNLINK to run", func() bool {
		n, err := rc.Exists(bg, "clr:k").Result()
		return err == nil && n == 0
	})
	for name, c := range map[string]*Cache[string]{"writer": w, "other": o} {
		eventually(t, name+" to stop serving the cleared key", func() bool {
			_, err := c.Get(bg, "k")
			return errors.Is(err, ErrNotFound)
		})
	}
}

// TestReviewHungRedisShortLoadTimeout: with LoadTimeout below RedisTimeout
// (100 ms < the default 250 ms) every L2 read of a flight against a hung
// Redis ends by the flight's own detached deadline. That deadline is the
// Cache's, not a caller's: it must count against the breaker, as
// RedisTimeout does.
func TestReviewHungRedisShortLoadTimeout(t *testing.T) {
	srv := redistest.StartServer(t)
	c := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "hung",
		LoadTimeout: 100 * time.Millisecond, BreakerFailures: 3, BreakerCooldown: time.Minute})
	srv.Pause()
	t.Cleanup(srv.Resume)
	load := func(context.Context, string) (string, error) { return "db", nil }
	// A caller ctx that can end (as every request's can) makes the miss a
	// detached flight (not led inline).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 10 {
		_, _ = c.GetOrLoad(ctx, "k"+strconv.Itoa(i), load)
	}
	if st := c.Stats().L2; st.BreakerOpened == 0 {
		t.Errorf("10 misses against a hung Redis (LoadTimeout 100ms < RedisTimeout 250ms): breaker %s, opened %d, L2 errors %d; want it open after 3",
			st.Breaker, st.BreakerOpened, st.Errors)
	}
}
