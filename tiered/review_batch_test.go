package tiered

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redistest"
)

// Review tests of batch flight reuse (Cache.batchPool): a batch led inline
// goes back to the pool only if no caller of another call waited on one of
// its flights; every value any caller gets must be its own key's.

// reviewBatchVal is a value that embeds its key, so that a value handed to
// the wrong key (a reused flight still referenced) shows.
func reviewBatchVal(key, tag string) string { return key + "|" + tag }

func reviewBatchCheck(key, v string) error {
	if !strings.HasPrefix(v, key+"|") {
		return fmt.Errorf("key %s got value %q (another key's)", key, v)
	}
	return nil
}

// TestReviewBatchJoinedFlightNotReused: a Get joins a flight of a GetMany
// batch led inline (its MGET held at the proxy); once both have returned,
// many later batches run. The joined batch must never go back to the pool:
// its flight still holds its own key and value after them (a pooled batch
// is cleared by putBatch and its flights handed to other keys).
func TestReviewBatchJoinedFlightNotReused(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	rc := redis.NewClient(&redis.Options{Addr: px.Addr(), ContextTimeoutEnabled: true, MaxRetries: 1,
		DialTimeout: time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	t.Cleanup(func() { _ = rc.Close() })
	c := newCache(t, Config[string]{Redis: rc, Namespace: "rbj", RedisTimeout: 10 * time.Second, LoadTimeout: 15 * time.Second})
	if !c.canLeadInline(ctx) {
		t.Fatal("the cache cannot lead batches inline: the test would not reach the reuse")
	}
	keys := []string{"a", "b", "c", "d"}
	items := map[string]string{}
	for _, k := range keys {
		items[k] = reviewBatchVal(k, "set")
	}
	for i := range 32 {
		k := fmt.Sprintf("o%02d", i)
		items[k] = reviewBatchVal(k, "set")
	}
	if err := c.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	c.local.InvalidateAll()

	release := px.Hold("mget")
	type res struct {
		m   map[string]string
		err error
	}
	manyDone := make(chan res, 1)
	go func() {
		m, err := c.GetMany(ctx, keys)
		manyDone <- res{m, err}
	}()
	var f *flight[string]
	redistest.WaitFor(t, 5*time.Second, "the batch's flight of b", func() bool {
		c.flightMu.Lock()
		defer c.flightMu.Unlock()
		f = c.gets["b"]
		return f != nil && f.batch != nil
	})
	getDone := make(chan error, 1)
	go func() {
		v, err := c.Get(context.Background(), "b")
		if err == nil {
			err = reviewBatchCheck("b", v)
		}
		getDone <- err
	}()
	redistest.WaitFor(t, 5*time.Second, "the Get to join the batch's flight", func() bool {
		c.flightMu.Lock()
		defer c.flightMu.Unlock()
		return f.joined == 1
	})
	release()
	r := <-manyDone
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, k := range keys {
		if r.m[k] != items[k] {
			t.Fatalf("GetMany: %s = %q, want %q", k, r.m[k], items[k])
		}
	}
	if err := <-getDone; err != nil {
		t.Fatal(err)
	}
	// Later batches, each led inline (L1 dropped first), would take the
	// batch from the pool if it had gone back.
	for i := range 64 {
		c.local.InvalidateAll()
		k1, k2 := fmt.Sprintf("o%02d", i%32), fmt.Sprintf("o%02d", (i+7)%32)
		m, err := c.GetMany(ctx, []string{k1, k2, k1, "o31", "o00"})
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range m {
			if err := reviewBatchCheck(k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.flightMu.Lock()
	key, v, joined := f.key, f.it.v, f.joined
	c.flightMu.Unlock()
	if key != "b" || v != items["b"] || joined != 1 {
		t.Fatalf("the joined flight was reused: key %q value %q joined %d, want b %q 1", key, v, joined, items["b"])
	}
}

// TestReviewBatchChaos: batches led inline (GetMany, GetManyOrLoad with
// repeated keys) race single-key callers that join their flights (Get,
// GetOrLoad, some with deadlines), batches led on goroutines (callers
// with deadlines), another instance's writes (invalidation messages),
// Delete, Set, InvalidateTag, loaders that are slow, fail or panic, the
// soft timeout with fail-safe stale values, refresh-ahead and load claims.
// Whatever errors come back, every value must be its own key's.
func TestReviewBatchChaos(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func(ns string) Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: ns,
			TTL: 150 * time.Millisecond, FailSafeMaxStale: time.Second, SoftTimeout: 2 * time.Millisecond,
			RefreshAhead: 0.5, LoadClaim: 200 * time.Millisecond, LoadTimeout: 2 * time.Second}
	}
	c := newCache(t, cfg("rbc"))
	w := newCache(t, cfg("rbc"))
	bg := context.Background()
	if !c.canLeadInline(bg) {
		t.Fatal("the cache cannot lead batches inline")
	}
	const nkeys = 24
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
	}
	var seq atomic.Int64
	loadMany := func(ctx context.Context, ks []string) (map[string]string, error) {
		n := seq.Add(1)
		switch n % 41 {
		case 0:
			panic(fmt.Sprintf("review loader panic %d", n))
		case 1, 2:
			return nil, errors.New("review loader failure")
		}
		if n%3 == 0 {
			time.Sleep(time.Duration(n%4) * time.Millisecond)
		}
		out := make(map[string]string, len(ks))
		for i, k := range ks {
			if (int(n)+i)%9 == 0 {
				continue // absent
			}
			out[k] = reviewBatchVal(k, fmt.Sprintf("L%d", n))
		}
		return out, nil
	}
	loadOne := func(ctx context.Context, k string) (string, error) {
		m, err := loadMany(ctx, []string{k})
		if err != nil {
			return "", err
		}
		v, ok := m[k]
		if !ok {
			return "", ErrNotFound
		}
		return v, nil
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		bad     []error
		checked atomic.Int64
	)
	report := func(err error) {
		mu.Lock()
		if len(bad) < 10 {
			bad = append(bad, err)
		}
		mu.Unlock()
	}
	checkMap := func(what string, want []string, m map[string]string) {
		for k, v := range m {
			checked.Add(1)
			if err := reviewBatchCheck(k, v); err != nil {
				report(fmt.Errorf("%s: %w", what, err))
			}
			found := false
			for _, x := range want {
				found = found || x == k
			}
			if !found {
				report(fmt.Errorf("%s: key %s not asked for", what, k))
			}
		}
	}
	window := func(r *rand.Rand) []string {
		n := 2 + r.IntN(10)
		out := make([]string, n)
		for i := range out {
			out[i] = keys[r.IntN(nkeys)] // repeats included
		}
		return out
	}
	stop := time.Now().Add(3 * time.Second)
	run := func(seed uint64, body func(r *rand.Rand)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, seed*7+1))
			for time.Now().Before(stop) {
				body(r)
			}
		}()
	}
	for g := range 2 { // inline leaders with a loader
		run(uint64(10+g), func(r *rand.Rand) {
			ks := window(r)
			if r.IntN(4) == 0 {
				c.local.InvalidateAll()
			}
			opts := []Option{}
			if r.IntN(3) == 0 {
				opts = append(opts, WithTags("t"+ks[0][2:]))
			}
			m, _ := c.GetManyOrLoad(bg, ks, loadMany, opts...)
			checkMap("GetManyOrLoad", ks, m)
		})
	}
	run(20, func(r *rand.Rand) { // inline leader without a loader
		ks := window(r)
		if r.IntN(3) == 0 {
			c.local.InvalidateAll()
		}
		m, _ := c.GetMany(bg, ks)
		checkMap("GetMany", ks, m)
	})
	run(21, func(r *rand.Rand) { // batches on goroutines, leaders that may leave early
		ks := window(r)
		ctx, cancel := context.WithTimeout(bg, time.Duration(r.IntN(3000))*time.Microsecond)
		var m map[string]string
		if r.IntN(2) == 0 {
			m, _ = c.GetMany(ctx, ks)
		} else {
			m, _ = c.GetManyOrLoad(ctx, ks, loadMany)
		}
		cancel()
		checkMap("GetMany(ctx)", ks, m)
	})
	for g := range 2 { // single-key joiners
		run(uint64(30+g), func(r *rand.Rand) {
			k := keys[r.IntN(nkeys)]
			ctx, cancel := bg, context.CancelFunc(func() {})
			if r.IntN(3) == 0 {
				ctx, cancel = context.WithTimeout(bg, time.Duration(r.IntN(3000))*time.Microsecond)
			}
			var v string
			var err error
			if r.IntN(2) == 0 {
				v, err = c.Get(ctx, k)
			} else {
				v, err = c.GetOrLoad(ctx, k, loadOne)
			}
			cancel()
			if err == nil {
				checked.Add(1)
				if err := reviewBatchCheck(k, v); err != nil {
					report(fmt.Errorf("Get/GetOrLoad: %w", err))
				}
			}
		})
	}
	run(40, func(r *rand.Rand) { // writers: the other instance and this one
		k := keys[r.IntN(nkeys)]
		switch r.IntN(6) {
		case 0:
			_ = w.Set(bg, k, reviewBatchVal(k, "w"), WithTags("t"+k[2:]))
		case 1:
			_ = w.Delete(bg, k)
		case 2:
			_ = c.Set(bg, k, reviewBatchVal(k, "c"))
		case 3:
			_ = c.Delete(bg, k)
		case 4:
			_ = w.InvalidateTag(bg, "t"+k[2:])
		default:
			_ = c.InvalidateTag(bg, "t"+k[2:])
		}
		time.Sleep(200 * time.Microsecond)
	})
	wg.Wait()
	for _, err := range bad {
		t.Error(err)
	}
	if checked.Load() < 1000 {
		t.Fatalf("only %d values checked: the test proved little", checked.Load())
	}
	st := c.Stats().Loads
	if st.Coalesced == 0 {
		t.Fatalf("no caller joined another's flight (%+v)", st)
	}
	t.Logf("%d values checked; loads %+v", checked.Load(), st)
}

// TestReviewBatchMixedEntriesDecodedInPlace: one MGET reply mixes good
// entries, corrupt bytes, tombstones, values whose tag moved on and absent
// keys; entries are decoded and classified in place in reused slices, so
// each batch must still see each key's own entry: the good keys' values,
// and the loader asked for exactly the others.
func TestReviewBatchMixedEntriesDecodedInPlace(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartServer(t)
	w := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rbm"})
	const nkeys = 20
	keys := make([]string, nkeys)
	items := map[string]string{}
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
		if i != 15 { // k15: absent
			items[keys[i]] = reviewBatchVal(keys[i], "set")
		}
	}
	if err := w.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	if err := w.Set(ctx, "k07", items["k07"], WithTags("moved")); err != nil {
		t.Fatal(err)
	}
	if err := w.InvalidateTag(ctx, "moved"); err != nil {
		t.Fatal(err)
	}
	if err := w.Delete(ctx, "k05"); err != nil {
		t.Fatal(err)
	}
	rdb := srv.Client()
	t.Cleanup(func() { _ = rdb.Close() })
	for _, k := range []string{"k03", "k11"} {
		found, err := rdb.Keys(ctx, "*"+k).Result()
		if err != nil || len(found) != 1 {
			t.Fatalf("the Redis key of %s: %v, %v", k, found, err)
		}
		if err := rdb.Set(ctx, found[0], "\x00garbage that is no envelope", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	bad := map[string]bool{"k03": true, "k05": true, "k07": true, "k11": true, "k15": true}

	r := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "rbm"})
	for round := range 6 {
		r.local.InvalidateAll()
		ask := make([]string, 0, 2*nkeys)
		for i := range nkeys {
			ask = append(ask, keys[(i*7+round*3)%nkeys])
			if i%4 == round%4 {
				ask = append(ask, keys[(i*7+round*3)%nkeys]) // repeated
			}
		}
		var asked []string
		var m map[string]string
		var err error
		if round%2 == 0 {
			m, err = r.GetMany(ctx, ask)
		} else {
			m, err = r.GetManyOrLoad(ctx, ask, func(_ context.Context, ks []string) (map[string]string, error) {
				asked = append(asked, ks...)
				out := map[string]string{}
				for _, k := range ks {
					out[k] = reviewBatchVal(k, "loaded")
				}
				return out, nil
			})
		}
		t.Logf("round %d: err %v", round, err)
		for _, k := range keys {
			v, ok := m[k]
			switch {
			case !bad[k] && v != items[k]:
				t.Fatalf("round %d: %s = %q (%v), want %q", round, k, v, ok, items[k])
			case bad[k] && round%2 == 0 && ok:
				t.Fatalf("round %d: GetMany: %s = %q, want absent", round, k, v)
			case bad[k] && round%2 == 1 && v != reviewBatchVal(k, "loaded"):
				t.Fatalf("round %d: GetManyOrLoad: %s = %q, want the loaded value", round, k, v)
			}
		}
		if round%2 == 1 {
			seen := map[string]bool{}
			for _, k := range asked {
				if !bad[k] || seen[k] {
					t.Fatalf("round %d: loader asked for %v, want each of %v once", round, asked, bad)
				}
				seen[k] = true
			}
			if len(seen) != len(bad) {
				t.Fatalf("round %d: loader asked for %v, want %v", round, asked, bad)
			}
			// Restore the bad keys for the next GetMany round.
			for k := range bad {
				if k == "k15" {
					_ = w.Delete(ctx, k)
					continue
				}
				found, _ := rdb.Keys(ctx, "*"+k).Result()
				for _, rk := range found {
					_ = rdb.Set(ctx, rk, "\x00garbage that is no envelope", 0).Err()
				}
			}
		}
	}
}
