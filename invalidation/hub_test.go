package invalidation_test

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// pubsubClients counts the server's pub/sub connections.
func pubsubClients(t *testing.T, admin *redis.Client) int {
	t.Helper()
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return redisinfo.PubSubClients(list)
}

// commandCalls returns the calls of each command in INFO commandstats.
func commandCalls(t *testing.T, admin *redis.Client, cmds ...string) map[string]int64 {
	t.Helper()
	info, err := admin.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int64, len(cmds))
	for _, c := range cmds {
		// cmdstat_mget:calls=12,usec=...
		v := redisinfo.Field(info, "cmdstat_"+c)
		if s, ok := strings.CutPrefix(v, "calls="); ok {
			s, _, _ = strings.Cut(s, ",")
			out[c], _ = strconv.ParseInt(s, 10, 64)
		}
	}
	return out
}

// TestSharedTransport: buses of ten namespaces on one client share one
// subscription connection and one anti-entropy loop whose commands do not
// grow with them; each hears only its namespace; closing one takes its
// channel off the connection and leaves the others working; closing the
// last closes the connection.
func TestSharedTransport(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	const n = 10
	buses := make([]*invalidation.Bus, n)
	recs := make([]*recorder, n)
	for i := range buses {
		recs[i] = newRecorder()
		b, err := invalidation.New(c, invalidation.Config{Namespace: "ns" + strconv.Itoa(i), AntiEntropyInterval: 20 * time.Millisecond}, recs[i])
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = b.Start(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Start of bus %d: %v", i, err)
		}
		buses[i] = b
	}
	closed := make([]bool, n)
	t.Cleanup(func() {
		for i, b := range buses {
			if !closed[i] {
				_ = b.Close()
			}
		}
	})
	if got := pubsubClients(t, admin); got != 1 {
		t.Fatalf("%d pub/sub connections for %d buses on one client, want 1", got, n)
	}
	for i := range buses {
		if !buses[i].Health().Healthy {
			t.Fatalf("bus %d unhealthy after Start: %+v", i, buses[i].Health())
		}
	}

	// Each namespace hears its own messages only.
	for i := range buses {
		publishDelete(t, publisher(t, admin, "ns"+strconv.Itoa(i)), 0, fmt.Sprintf("k%d", i))
	}
	for i, r := range recs {
		want := fmt.Sprintf("k%d", i)
		waitFor(t, 5*time.Second, "bus "+strconv.Itoa(i)+" to hear "+want, func() bool { return len(r.Keys()) > 0 })
		if got := r.Keys(); len(got) != 1 || got[0] != want {
			t.Errorf("bus %d heard %v, want [%s]", i, got, want)
		}
	}

	// Anti-entropy: one MGET of the epoch keys and one of the sequence
	// keys per round, whatever the number of buses; no per-bus GET or SET
	// once the rounds after the last Start have created the epoch keys.
	warm := buses[n-1].Stats().AERounds
	waitFor(t, 10*time.Second, "two rounds after the last Start", func() bool { return buses[n-1].Stats().AERounds >= warm+2 })
	before := commandCalls(t, admin, "mget", "get", "set")
	rounds0 := buses[0].Stats().AERounds
	waitFor(t, 10*time.Second, "ten more anti-entropy rounds", func() bool { return buses[0].Stats().AERounds >= rounds0+10 })
	after := commandCalls(t, admin, "mget", "get", "set")
	rounds := int64(buses[0].Stats().AERounds - rounds0)
	if d := after["mget"] - before["mget"]; d > 2*(rounds+2) {
		t.Errorf("%d MGETs in %d rounds of %d buses, want at most 2 per round", d, rounds, n)
	}
	for _, cmd := range []string{"get", "set"} { // go-redis sends SetNX as SET NX
		if d := after[cmd] - before[cmd]; d != 0 {
			t.Errorf("%d %s commands in %d quiet rounds, want none (epoch keys exist)", d, strings.ToUpper(cmd), rounds)
		}
	}
	for i := range buses {
		if s := buses[i].Stats(); s.InvalidateAllTotal() != 0 || s.AEErrors != 0 {
			t.Errorf("bus %d: InvalidateAll %v, anti-entropy errors %d, want none", i, s.InvalidateAll, s.AEErrors)
		}
	}

	// Closing one bus unsubscribes its channel; the others keep hearing.
	if err := buses[3].Close(); err != nil {
		t.Fatal(err)
	}
	closed[3] = true
	waitFor(t, 5*time.Second, "ns3's channel unsubscribed", func() bool { return numSub(t, admin, "ns3:inv") == 0 })
	if got := numSub(t, admin, "ns4:inv"); got != 1 {
		t.Errorf("ns4:inv has %d subscribers after ns3 closed, want 1", got)
	}
	heard3 := len(recs[3].Keys())
	publishDelete(t, publisher(t, admin, "ns3"), 0, "after-close")
	publishDelete(t, publisher(t, admin, "ns4"), 0, "after")
	waitFor(t, 5*time.Second, "ns4 to hear after ns3 closed", func() bool { return len(recs[4].Keys()) == 2 })
	if got := len(recs[3].Keys()); got != heard3 {
		t.Errorf("the closed bus heard %d more keys", got-heard3)
	}
	if !buses[4].Health().Healthy {
		t.Errorf("bus 4 unhealthy after another bus closed: %+v", buses[4].Health())
	}

	for i, b := range buses {
		if !closed[i] {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			closed[i] = true
		}
	}
	waitFor(t, 5*time.Second, "no pub/sub connection once every bus closed", func() bool { return pubsubClients(t, admin) == 0 })
}

// TestSharedSameNamespace: two buses of one namespace on one client (two
// instances in one process) hear each other's messages and not their own,
// over one connection.
func TestSharedSameNamespace(t *testing.T) {
	_, c := startMini(t)
	ra, rb := newRecorder(), newRecorder()
	a := startBus(t, c, invalidation.Config{Namespace: "same"}, ra)
	b := startBus(t, c, invalidation.Config{Namespace: "same"}, rb)
	publishDelete(t, a, 0, "from-a")
	publishDelete(t, b, 0, "from-b")
	waitFor(t, 5*time.Second, "each to hear the other", func() bool { return len(ra.Keys()) == 1 && len(rb.Keys()) == 1 })
	if ka, kb := ra.Keys(), rb.Keys(); ka[0] != "from-b" || kb[0] != "from-a" {
		t.Errorf("a heard %v, b heard %v; want [from-b] and [from-a]", ka, kb)
	}
	if sa, sb := a.Stats(), b.Stats(); sa.Own != 1 || sb.Own != 1 || sa.Gaps+sb.Gaps != 0 {
		t.Errorf("own %d and %d, gaps %d and %d; want 1, 1, 0, 0", sa.Own, sb.Own, sa.Gaps, sb.Gaps)
	}
}

// TestSharedCloseStopsHandler: once Close returns, the bus's Handler is
// never called again, though the shared worker keeps delivering other
// buses' messages and this namespace's messages keep arriving.
func TestSharedCloseStopsHandler(t *testing.T) {
	_, c := startMini(t)
	keep := newRecorder()
	startBus(t, c, invalidation.Config{Namespace: "keep", AntiEntropyInterval: -1}, keep)
	var done, late atomic.Bool
	gone := newRecorder()
	gone.onKey = func([]string) {
		if done.Load() {
			late.Store(true)
		}
	}
	b := startBus(t, c, invalidation.Config{Namespace: "gone", AntiEntropyInterval: -1}, gone)
	pubGone, pubKeep := publisher(t, c, "gone"), publisher(t, c, "keep")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = pubGone.Publish(context.Background(), 0, pubGone.EncodeDelete(0, []string{"g" + strconv.Itoa(i)}))
		}
	}()
	waitFor(t, 5*time.Second, "some deliveries", func() bool { return len(gone.Keys()) > 20 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	done.Store(true)
	publishDelete(t, pubKeep, 0, "still")
	waitFor(t, 5*time.Second, "the other bus to keep hearing", func() bool { return len(keep.Keys()) == 1 })
	close(stop)
	wg.Wait()
	if late.Load() {
		t.Error("the Handler of a closed bus was called after Close returned")
	}
}

// TestSharedChurn: buses of many namespaces start and close concurrently
// on one client while one long-lived bus keeps hearing every message; at
// the end no churned channel is left subscribed.
func TestSharedChurn(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	stay := newRecorder()
	startBus(t, c, invalidation.Config{Namespace: "stay", AntiEntropyInterval: 50 * time.Millisecond}, stay)
	pub := publisher(t, admin, "stay")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				ns := fmt.Sprintf("churn%d", (w*15+i)%7) // namespaces shared between workers
				b, err := invalidation.New(c, invalidation.Config{Namespace: ns, AntiEntropyInterval: 50 * time.Millisecond}, newRecorder())
				if err != nil {
					errs <- err
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err = b.Start(ctx)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("Start %s: %w", ns, err)
				}
				if err := b.Close(); err != nil {
					errs <- fmt.Errorf("Close %s: %w", ns, err)
				}
			}
		}()
	}
	for i := range 30 {
		publishDelete(t, pub, 0, "s"+strconv.Itoa(i))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, 5*time.Second, "every message to the long-lived bus", func() bool { return len(stay.Keys()) == 30 })
	waitFor(t, 5*time.Second, "every churned channel unsubscribed", func() bool {
		for i := range 7 {
			if numSub(t, admin, fmt.Sprintf("churn%d:inv", i)) != 0 {
				return false
			}
		}
		return true
	})
	if s := stay.Alls(); len(s) != 0 {
		t.Errorf("the long-lived bus invalidated everything during the churn: %v", s)
	}
}

// roundTrips counts the command client's round trips: single commands and
// pipelines, by name.
type roundTrips struct {
	mu     sync.Mutex
	single map[string]int
	piped  int
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.mu.Lock()
		r.single[cmd.Name()]++
		r.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.mu.Lock()
		r.piped++
		r.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (r *roundTrips) snapshot() (map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.single), r.piped
}

// On one server an anti-entropy round is one round trip: the epoch keys,
// the run id (INFO) and the sequence keys go in one pipeline, whatever the
// number of buses (an idle process pays per wake-up, see grid.go).
func TestAERoundOneRoundTrip(t *testing.T) {
	srv := redistest.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	rt := &roundTrips{single: map[string]int{}}
	c.AddHook(rt)
	const n = 3
	var buses []*invalidation.Bus
	for i := range n {
		cfg := invalidation.Config{Namespace: "rt" + strconv.Itoa(i), AntiEntropyInterval: 20 * time.Millisecond, RouteCheckInterval: -1}
		buses = append(buses, startBus(t, c, cfg, newRecorder()))
	}
	// Traffic on two partitions, so that rounds read sequence keys.
	for i := range n {
		publishDelete(t, publisher(t, srv.Client(), "rt"+strconv.Itoa(i)), 1, "k")
	}
	warm := buses[n-1].Stats().AERounds
	waitFor(t, 10*time.Second, "two rounds after the last Start", func() bool { return buses[n-1].Stats().AERounds >= warm+2 })
	single0, piped0 := rt.snapshot()
	r0 := buses[0].Stats().AERounds
	waitFor(t, 10*time.Second, "ten more rounds", func() bool { return buses[0].Stats().AERounds >= r0+10 })
	single1, piped1 := rt.snapshot()
	rounds := int(buses[0].Stats().AERounds - r0)
	for name, k := range single1 {
		if d := k - single0[name]; d != 0 {
			t.Errorf("%d single %s commands in %d rounds, want none (one pipeline per round)", d, strings.ToUpper(name), rounds)
		}
	}
	// Rounds are counted after their pipeline: allow one in flight at
	// each end.
	if d := piped1 - piped0; d < rounds-1 || d > rounds+1 {
		t.Errorf("%d pipelines in %d rounds, want one per round", d, rounds)
	}
	for i, b := range buses {
		if s := b.Stats(); s.InvalidateAllTotal() != 0 || s.AEErrors != 0 {
			t.Errorf("bus %d: InvalidateAll %v, anti-entropy errors %d, want none", i, s.InvalidateAll, s.AEErrors)
		}
	}
}
