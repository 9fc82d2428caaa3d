// Command cluster runs nearcache on a Redis Cluster: two instances of a
// service, each with its own cluster client and local cache, sharing the
// cluster as their L2.
//
//	go run ./examples/cluster -addrs 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
//
// The addresses are seed nodes (any subset of the cluster will do; the client
// discovers the rest). The example works in a fresh, random namespace and
// removes every key it wrote before it exits. It shows:
//
//   - where the keys live: a batch of keys spread over hash slots and masters;
//   - GetManyOrLoad across slots: one loader call for every key missing, the
//     Redis reads and writes grouped per node, one invalidation per slot;
//   - the second instance reading the same batch from Redis, then from L1;
//   - a write on one instance reaching the other's L1 (the invalidation goes
//     over the cluster's pub/sub), with the time it took;
//   - both instances' stats.
//
// It exits with status 1 if a property it shows does not hold, and with
// status 2 (after printing usage) without -addrs.
//
// To try it without a cluster at hand, start one on three free ports:
//
//	for p in 7000 7001 7002; do mkdir -p /tmp/c$p && (cd /tmp/c$p && redis-server \
//	  --port $p --cluster-enabled yes --save "" --appendonly no --daemonize yes); done
//	redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 \
//	  --cluster-replicas 0 --cluster-yes
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/examples/internal/demo"
	"github.com/nearcache/nearcache/tiered"
)

// User is the cached value.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
}

// directory is the slow source of truth, queried in batches.
type directory struct {
	latency time.Duration
	calls   atomic.Int64
	keys    atomic.Int64
}

func (d *directory) LoadMany(ctx context.Context, ids []string) (map[string]User, error) {
	d.calls.Add(1)
	d.keys.Add(int64(len(ids)))
	select {
	case <-time.After(d.latency):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	out := make(map[string]User, len(ids))
	for _, id := range ids {
		n := strings.TrimPrefix(id, "user:")
		out[id] = User{ID: id, Name: "User " + n, Email: "user" + n + "@example.com"}
	}
	return out, nil
}

type instance struct {
	name  string
	rc    *redis.ClusterClient
	cache *tiered.Cache[User]
}

func main() {
	addrs := flag.String("addrs", "", "comma-separated Redis Cluster seed nodes host:port,host:port,... (required)")
	n := flag.Int("keys", 12, "number of keys in the batch")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./examples/cluster -addrs host:port[,host:port...]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	var seeds []string
	for a := range strings.SplitSeq(*addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			seeds = append(seeds, a)
		}
	}
	if len(seeds) == 0 || *n < 1 {
		flag.Usage()
		os.Exit(2)
	}
	fails, err := run(seeds, *n)
	demo.Exit("cluster", fails, err)
}

func run(seeds []string, n int) (demo.Checks, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	namespace := "cluster-example-" + hex.EncodeToString(b)

	var insts []*instance
	defer func() {
		for _, in := range insts {
			_ = in.cache.Close()
			_ = in.rc.Close()
		}
	}()
	for _, name := range []string{"A", "B"} {
		rc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: seeds, ContextTimeoutEnabled: true})
		if err := rc.Ping(ctx).Err(); err != nil {
			_ = rc.Close()
			return nil, fmt.Errorf("connect to the cluster at %s: %w", strings.Join(seeds, ","), err)
		}
		c, err := tiered.New(tiered.Config[User]{Redis: rc, Namespace: namespace})
		if err != nil {
			_ = rc.Close()
			return nil, err
		}
		insts = append(insts, &instance{name: name, rc: rc, cache: c})
	}
	a, bi := insts[0], insts[1]
	dir := &directory{latency: 20 * time.Millisecond}
	var fails demo.Checks

	// Topology, and where each key of the batch lives.
	slots, err := a.rc.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SLOTS: %w", err)
	}
	slices.SortFunc(slots, func(x, y redis.ClusterSlot) int { return x.Start - y.Start })
	fmt.Printf("Redis Cluster via %s; namespace %s\n  masters:", strings.Join(seeds, ","), namespace)
	for _, s := range slots {
		fmt.Printf("  %s (slots %d-%d)", s.Nodes[0].Addr, s.Start, s.End)
	}
	fmt.Println()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d", i+1)
	}
	masters := map[string]bool{}
	fmt.Println("\n1. Where the batch lives (Redis key = namespace:key)")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  KEY\tSLOT\tMASTER")
	for _, k := range keys {
		slot, err := a.rc.ClusterKeySlot(ctx, namespace+":"+k).Result()
		if err != nil {
			return nil, fmt.Errorf("CLUSTER KEYSLOT: %w", err)
		}
		node := "?"
		for _, s := range slots {
			if int(slot) >= s.Start && int(slot) <= s.End {
				node = s.Nodes[0].Addr
			}
		}
		masters[node] = true
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", k, slot, node)
	}
	tw.Flush()
	fmt.Printf("  %d keys on %d of %d masters.\n", n, len(masters), len(slots))

	fmt.Println("\n2. GetManyOrLoad of the whole batch")
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  INSTANCE\tCALL\tL1 HITS\tL2 HITS\tLOADED\tLOADER CALLS\tTIME")
	batch := func(in *instance, wantL1, wantL2, wantLoaded uint64) error {
		before := in.cache.Stats()
		calls := dir.calls.Load()
		t0 := time.Now()
		got, err := in.cache.GetManyOrLoad(ctx, keys, dir.LoadMany)
		took := time.Since(t0)
		if err != nil {
			return err
		}
		after := in.cache.Stats()
		l1 := after.L1.Hits - before.L1.Hits
		l2 := after.L2.Hits - before.L2.Hits
		loaded := after.Loads.LoadedKeys - before.Loads.LoadedKeys
		lc := uint64(dir.calls.Load() - calls)
		fmt.Fprintf(tw, "  %s\tGetManyOrLoad(%d keys)\t%d\t%d\t%d\t%d\t%s\n", in.name, n, l1, l2, loaded, lc, demo.Dur(took))
		fails.Expect(len(got) == n, "%s: got %d values, want %d", in.name, len(got), n)
		fails.Expect(loaded == wantLoaded && lc == min(wantLoaded, 1), "%s: loaded %d keys in %d calls, want %d in %d", in.name, loaded, lc, wantLoaded, min(wantLoaded, 1))
		// A fill may not be applied yet (ristretto is asynchronous): an
		// expected L1 hit may come from L2, never from the loader.
		fails.Expect(l1+l2 == wantL1+wantL2 && l1 <= wantL1, "%s: %d L1 + %d L2 hits, want %d + %d", in.name, l1, l2, wantL1, wantL2)
		return nil
	}
	pause := func() { time.Sleep(10 * time.Millisecond) } // the gap between two requests
	if err := batch(a, 0, 0, uint64(n)); err != nil {
		return nil, err
	}
	pause()
	if err := batch(bi, 0, uint64(n), 0); err != nil {
		return nil, err
	}
	pause()
	if err := batch(bi, uint64(n), 0, 0); err != nil {
		return nil, err
	}
	pause()
	if err := batch(a, uint64(n), 0, 0); err != nil {
		return nil, err
	}
	tw.Flush()
	fmt.Println("  A: one loader call for all keys, written back to every master; B: read from Redis, then from L1.")

	// A write on A reaches B's L1.
	key := keys[len(keys)/2]
	fmt.Printf("\n3. A write on A reaches B (%s)\n", key)
	beforeB := bi.cache.Stats()
	updated := User{ID: key, Name: "Renamed user", Email: "renamed@example.com"}
	var seen time.Time
	var oldReads int
	var wg sync.WaitGroup
	startPolling := make(chan struct{})
	wg.Go(func() {
		<-startPolling
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
			if u, err := bi.cache.Get(ctx, key); err == nil && u == updated {
				seen = time.Now()
				return
			}
			oldReads++
			time.Sleep(20 * time.Microsecond)
		}
	})
	close(startPolling)
	t0 := time.Now()
	if err := a.cache.Set(ctx, key, updated); err != nil {
		return nil, err
	}
	setTook := time.Since(t0)
	wg.Wait()
	afterB := bi.cache.Stats()
	if seen.IsZero() {
		fails.Expect(false, "B did not serve the new value of %s within 2s", key)
		fmt.Println("  B: NOT within 2s")
	} else {
		fmt.Printf("  Set on A took %s; B served the new value %s after the Set began, having served its old L1 copy %d times;\n",
			demo.Dur(setTook), demo.Dur(seen.Sub(t0)), oldReads)
		fmt.Printf("  B applied %d invalidation(s) and read the new value from Redis (%d L2 hit).\n",
			afterB.Invalidation.Applied-beforeB.Invalidation.Applied, afterB.L2.Hits-beforeB.L2.Hits)
	}
	fails.Expect(afterB.Invalidation.Applied > beforeB.Invalidation.Applied, "B applied no invalidation for the write")
	if u, err := a.cache.Get(ctx, key); err != nil || u != updated {
		fails.Expect(false, "read-your-writes on A: got %+v, %v", u, err)
	}

	fmt.Println("\n4. Stats")
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  INSTANCE\tREQUESTS\tL1 HITS\tL2 LOOKUPS\tL2 HITS\tLOADER CALLS\tKEYS LOADED\tREDIS WRITE SCRIPTS\tINVAL. RECEIVED\tINVAL. APPLIED\tREDIS P99\tOVERALL HIT RATIO")
	for _, in := range insts {
		st := in.cache.Stats()
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%.1f%%\n", in.name,
			st.Combined.Requests, st.L1.Hits, st.L2.Lookups, st.L2.Hits, st.Loads.LoaderCalls, st.Loads.LoadedKeys,
			st.L2.Store.Notifications, st.Invalidation.Received, st.Invalidation.Applied, demo.Dur(st.L2.Store.Latency.P99), 100*st.Combined.HitRatio)
	}
	tw.Flush()
	fmt.Println("  REDIS WRITE SCRIPTS: atomic write-and-publish scripts, one per hash slot written;")
	fmt.Println("  INVAL. RECEIVED: messages on the namespace's channel, own ones included.")

	// Leave nothing behind.
	if err := a.cache.Clear(ctx); err != nil {
		return nil, fmt.Errorf("clear: %w", err)
	}
	for _, in := range insts {
		_ = in.cache.Close()
	}
	var removed atomic.Int64
	err = a.rc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		iter := node.Scan(ctx, 0, "*"+namespace+"*", 100).Iterator()
		for iter.Next(ctx) {
			if err := node.Del(ctx, iter.Val()).Err(); err != nil {
				return err
			}
			removed.Add(1)
		}
		return iter.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("remove leftovers: %w", err)
	}
	fmt.Printf("\nCleaned up: Clear removed namespace %s; %d bookkeeping key(s) (sequence numbers per slot, epoch) removed after Close.\n", namespace, removed.Load())
	return fails, nil
}
