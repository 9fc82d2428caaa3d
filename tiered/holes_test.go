package tiered

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// TestCallerDeadlineDoesNotOpenBreaker: calls whose own ctx has ended (before
// or during the Redis call) return the ctx's error and leave the breaker
// closed for everyone else; a slow Redis (the RedisTimeout deadline) still
// opens it.
func TestCallerDeadlineDoesNotOpenBreaker(t *testing.T) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	rc := newClient(t, px.Addr())
	c := newCache(t, Config[string]{Redis: rc, Namespace: "brk", RedisTimeout: time.Second,
		BreakerFailures: 3, BreakerCooldown: time.Minute})
	bg := context.Background()

	expired, cancel := context.WithDeadline(bg, time.Now().Add(-time.Second))
	defer cancel()
	for i := range 10 {
		if err := c.Set(expired, fmt.Sprint("k", i), "v"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Set with an expired ctx: got %v, want an error that Is context.DeadlineExceeded", err)
		}
		if err := c.Delete(expired, fmt.Sprint("k", i)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Delete with an expired ctx: got %v, want context.DeadlineExceeded", err)
		}
	}
	if _, err := c.Get(expired, "k0"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with an expired ctx: got %v, want context.DeadlineExceeded", err)
	}

	// The caller's deadline ends while the script is held back in flight.
	px.Delay(300*time.Millisecond, "evalsha")
	for i := range 5 {
		ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
		err := c.Set(ctx, fmt.Sprint("slow", i), "v")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Set whose ctx ends mid-call: got %v, want context.DeadlineExceeded", err)
		}
	}
	if st := c.Stats().L2; st.BreakerOpened != 0 || st.Breaker != BreakerClosed {
		t.Fatalf("breaker after callers' own deadlines: state %s, opened %d; want closed, 0", st.Breaker, st.BreakerOpened)
	}
	px.Delay(0)
	if err := c.Set(bg, "healthy", "v"); err != nil {
		t.Fatalf("a healthy caller's Set after others' deadlines: %v", err)
	}

	// Redis itself too slow: the RedisTimeout deadline counts.
	slow := newCache(t, Config[string]{Redis: rc, Namespace: "brk", RedisTimeout: 50 * time.Millisecond,
		BreakerFailures: 3, BreakerCooldown: time.Minute})
	px.Delay(300*time.Millisecond, "evalsha")
	for i := range 3 {
		if err := slow.Set(bg, fmt.Sprint("s", i), "v"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Set against a slow Redis: got %v, want ErrUnavailable", err)
		}
	}
	if st := slow.Stats().L2; st.BreakerOpened != 1 {
		t.Fatalf("breaker after %d RedisTimeouts: opened %d, want 1", 3, st.BreakerOpened)
	}
}

// TestInDoubtWriteReachesWriter: a Set that times out while its script is
// held back; the writer reads the old value back into L1; then the script
// runs. The writer must drop that copy when its own invalidation arrives,
// as every other instance does.
func TestInDoubtWriteReachesWriter(t *testing.T) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	ctx := context.Background()
	w := newCache(t, Config[string]{Redis: newClient(t, px.Addr()), Namespace: "doubt", RedisTimeout: 100 * time.Millisecond})
	o := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "doubt"})

	if err := w.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Cache[string]{w, o} {
		if v, err := c.Get(ctx, "k"); err != nil || v != "v1" {
			t.Fatalf("Get before: %q %v, want v1", v, err)
		}
	}
	release := px.Hold("evalsha")
	if err := w.Set(ctx, "k", "v2"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Set with its script held back: got %v, want ErrUnavailable (a timeout)", err)
	}
	// The script has not run yet: the writer refills the old value.
	v, err := w.Get(ctx, "k")
	if err != nil || v != "v1" {
		t.Fatalf("writer's read while the write is in doubt: %q %v, want v1 (from Redis)", v, err)
	}
	release()
	eventually(t, "the held script to run (another instance sees v2)", func() bool {
		v, err := o.Get(ctx, "k")
		return err == nil && v == "v2"
	})
	eventually(t, "the writer to drop its old copy", func() bool {
		v, err := w.Get(ctx, "k")
		return err == nil && v == "v2"
	})
}

// TestOwnInvalidationOnlyInDoubt: an own message (as a delayed script of
// this instance would publish) drops a key only while the key's write is in
// doubt; a successful write's own message leaves the writer's fresh copy
// alone.
func TestOwnInvalidationOnlyInDoubt(t *testing.T) {
	mr := miniredis.RunT(t)
	ctx := context.Background()
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "own"})
	if err := c.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Set's own message", func() bool { return c.bus.Stats().Own >= 1 })
	if v, err := c.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("Get: %q %v", v, err)
	}
	publishOwn := func() {
		t.Helper()
		own := c.bus.Stats().Own
		bus := c.bus.(*invalidation.Bus)
		if err := bus.Publish(ctx, 0, bus.EncodeDelete(0, []string{"k"})); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the own message", func() bool { return c.bus.Stats().Own > own })
	}
	publishOwn()
	if _, ok := c.local.Get("k"); !ok {
		t.Fatalf("an own message for a key not in doubt dropped the writer's copy")
	}
	c.doubt.add([]string{"k"}, false, time.Now())
	publishOwn()
	if _, ok := c.local.Get("k"); ok {
		t.Fatalf("an own message for a key in doubt left the copy")
	}
}

// TestNamespaceAliasing: a namespace with ':' would share Redis keys with
// another namespace (namespace "a" key "b:c" = namespace "a:b" key "c")
// while listening on another channel; such namespaces, and hash tags, are
// refused with an error that names the problem.
func TestNamespaceAliasing(t *testing.T) {
	for _, tc := range []struct{ ns, want string }{
		{"a:b", "':'"},
		{"users:", "':'"},
		{"a{b}", "hash tag"},
		{"a b", "space"},
		{"a\nb", "control"},
		{strings.Repeat("n", MaxNamespaceLen+1), "at most"},
	} {
		_, err := New(Config[string]{Namespace: tc.ns})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.ns)) {
			t.Errorf("New(Namespace %q): got %v, want an error naming the namespace and %s", tc.ns, err, tc.want)
		}
	}
	for _, ns := range []string{"users", "app.users", "svc/users", "a-b_c", strings.Repeat("n", MaxNamespaceLen)} {
		c, err := New(Config[string]{Namespace: ns})
		if err != nil {
			t.Errorf("New(Namespace %q): %v", ns, err)
			continue
		}
		_ = c.Close()
	}
	// Keys may hold ':' freely: namespace "a" key "b:c" is its own key.
	mr := miniredis.RunT(t)
	ctx := context.Background()
	a := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "a"})
	ab := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "ab"})
	if err := a.Set(ctx, "b:c", "from a"); err != nil {
		t.Fatal(err)
	}
	if _, err := ab.Get(ctx, "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("namespace ab key c after namespace a wrote b:c: got %v, want ErrNotFound", err)
	}
}

// TestReplicaRoutingRefused: a client that may read from a replica is
// refused (a lagging replica would refill L1 with an overtaken value that
// nothing repairs); a client of the master is accepted.
func TestReplicaRoutingRefused(t *testing.T) {
	master := redistest.StartServer(t)
	replica := redistest.StartServer(t, redistest.WithArgs("--replicaof", "127.0.0.1", strconv.Itoa(master.Port())))

	if _, err := New(Config[string]{Redis: newClient(t, replica.Addr()), Namespace: "rep"}); !errors.Is(err, ErrReplicaRouting) {
		t.Errorf("New with a client of a replica: got %v, want ErrReplicaRouting", err)
	}
	for _, o := range []redis.ClusterOptions{
		{ReadOnly: true}, {RouteByLatency: true}, {RouteRandomly: true},
	} {
		o.Addrs = []string{master.Addr()}
		cc := redis.NewClusterClient(&o)
		t.Cleanup(func() { _ = cc.Close() })
		if _, err := New(Config[string]{Redis: cc, Namespace: "rep"}); !errors.Is(err, ErrReplicaRouting) || !strings.Contains(err.Error(), "separate client") {
			t.Errorf("New with ClusterOptions ReadOnly=%v RouteByLatency=%v RouteRandomly=%v: got %v, want ErrReplicaRouting saying what to change",
				o.ReadOnly, o.RouteByLatency, o.RouteRandomly, err)
		}
	}
	fc := redis.NewFailoverClusterClient(&redis.FailoverOptions{MasterName: "m", SentinelAddrs: []string{master.Addr()}, RouteRandomly: true})
	t.Cleanup(func() { _ = fc.Close() })
	if _, err := New(Config[string]{Redis: fc, Namespace: "rep"}); !errors.Is(err, ErrReplicaRouting) {
		t.Errorf("New with a failover cluster client routing randomly: got %v, want ErrReplicaRouting", err)
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": master.Addr()}})
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := New(Config[string]{Redis: ring, Namespace: "rep"}); err == nil {
		t.Errorf("New with a Ring: want an error")
	}
	c := newCache(t, Config[string]{Redis: newClient(t, master.Addr()), Namespace: "rep"})
	if err := c.Set(context.Background(), "k", "v"); err != nil {
		t.Fatalf("Set through the master: %v", err)
	}
}

// TestReplicaRoutingSentinel: on a Sentinel-managed master and replica,
// failover clients that read from the replica are refused, and the accepted
// failover client reads the master even while the replica lags (paused
// replication), so a write on one instance is seen by another at once.
func TestReplicaRoutingSentinel(t *testing.T) {
	st := redistest.StartSentinel(t)
	ctx := context.Background()

	ro := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: st.MasterName(), SentinelAddrs: st.SentinelAddrs(),
		ReplicaOnly: true, ContextTimeoutEnabled: true, DialTimeout: time.Second, ReadTimeout: time.Second})
	t.Cleanup(func() { _ = ro.Close() })
	if _, err := New(Config[string]{Redis: ro, Namespace: "rep"}); !errors.Is(err, ErrReplicaRouting) {
		t.Errorf("New with FailoverOptions.ReplicaOnly: got %v, want ErrReplicaRouting", err)
	}
	for _, o := range []redis.FailoverOptions{{RouteByLatency: true}, {RouteRandomly: true}, {ReplicaOnly: true}} {
		o.MasterName, o.SentinelAddrs = st.MasterName(), st.SentinelAddrs()
		fc := redis.NewFailoverClusterClient(&o)
		t.Cleanup(func() { _ = fc.Close() })
		if _, err := New(Config[string]{Redis: fc, Namespace: "rep"}); !errors.Is(err, ErrReplicaRouting) {
			t.Errorf("New with NewFailoverClusterClient(%+v): got %v, want ErrReplicaRouting", o, err)
		}
	}

	a := newCache(t, Config[string]{Redis: st.FailoverClient(), Namespace: "rep"})
	b := newCache(t, Config[string]{Redis: st.FailoverClient(), Namespace: "rep"})
	if err := a.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	replica := st.Replica().Client()
	defer replica.Close()
	eventually(t, "the replica to hold v1", func() bool {
		raw, err := replica.Get(ctx, "rep:k").Bytes()
		return err == nil && strings.Contains(string(raw), "v1")
	})
	if v, err := b.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("b.Get: %q %v, want v1", v, err)
	}
	// The replica stops applying the master's stream: it lags.
	if err := replica.Do(ctx, "CLIENT", "PAUSE", "20000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Do(context.Background(), "CLIENT", "UNPAUSE").Err() })
	if err := a.Set(ctx, "k", "v2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to see v2", func() bool {
		v, err := b.Get(ctx, "k")
		return err == nil && v == "v2"
	})
	if raw, err := replica.Get(ctx, "rep:k").Bytes(); err != nil || !strings.Contains(string(raw), "v1") {
		t.Fatalf("the paused replica should still hold v1 (the test needs a lagging replica): %q %v", raw, err)
	}
}
