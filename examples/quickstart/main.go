// Command quickstart is the two-minute tour of nearcache: three instances of a
// small product-catalog service, each with its own local cache (L1) in front of
// one shared Redis (L2), reading from a deliberately slow database.
//
// Run it with no arguments and it starts an embedded Redis (miniredis) in the
// same process, so nothing needs to be installed:
//
//	go run ./examples/quickstart
//
// Or point it at a real Redis (it works in a fresh, random namespace, and
// removes every key it wrote before it exits):
//
//	go run ./examples/quickstart -addr 127.0.0.1:6379
//	REDIS_ADDR=127.0.0.1:6379 go run ./examples/quickstart
//
// It prints four tables:
//
//  1. which tier answered each read (L1, L2 or the loader, that is the
//     database), taken from the cache's own counters around each call;
//  2. a write on instance A evicting B's and C's local copies, with the time
//     it took until B and C served the new value;
//  3. a stampede of 1000 concurrent reads of a cold key on one instance,
//     coalesced into a single database query;
//  4. each instance's per-tier and combined statistics.
//
// Every property it shows is also checked: if one does not hold (a second
// database query in the stampede, a write not seen by the other instances
// within 2s, a read answered by an unexpected tier), it says so and exits
// with status 1.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/examples/internal/demo"
	"github.com/nearcache/nearcache/tiered"
)

// Product is the value the catalog service caches.
type Product struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Price int    `json:"price"` // cents
}

func (p Product) String() string {
	return fmt.Sprintf("%s $%d.%02d", p.Name, p.Price/100, p.Price%100)
}

// database is the slow source of truth: a map behind a fixed query latency,
// counting the queries it answers.
type database struct {
	latency time.Duration
	queries atomic.Int64

	mu   sync.Mutex
	rows map[string]Product
}

func newDatabase(latency time.Duration) *database {
	db := &database{latency: latency, rows: map[string]Product{}}
	for i, p := range []Product{{Name: "Espresso machine", Price: 24900}, {Name: "Burr grinder", Price: 13900},
		{Name: "Milk jug", Price: 1900}, {Name: "Tamper", Price: 2900}} {
		p.ID = fmt.Sprintf("p%d", i+1)
		db.rows[p.ID] = p
	}
	db.rows["p-hot"] = Product{ID: "p-hot", Name: "Limited edition mug", Price: 1500}
	return db
}

// Load is a tiered.Loader: one query for one product.
func (db *database) Load(ctx context.Context, id string) (Product, error) {
	db.queries.Add(1)
	select {
	case <-time.After(db.latency):
	case <-ctx.Done():
		return Product{}, ctx.Err()
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	p, ok := db.rows[id]
	if !ok {
		return Product{}, tiered.ErrNotFound
	}
	return p, nil
}

// LoadMany is a tiered.BatchLoader: one query for several products.
func (db *database) LoadMany(ctx context.Context, ids []string) (map[string]Product, error) {
	db.queries.Add(1)
	select {
	case <-time.After(db.latency):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	out := make(map[string]Product, len(ids))
	for _, id := range ids {
		if p, ok := db.rows[id]; ok {
			out[id] = p
		}
	}
	return out, nil
}

func (db *database) Update(p Product) {
	time.Sleep(db.latency)
	db.mu.Lock()
	db.rows[p.ID] = p
	db.mu.Unlock()
}

// instance is one "service process": its own Redis client and its own Cache.
type instance struct {
	name  string
	rc    *redis.Client
	cache *tiered.Cache[Product]
}

func main() {
	addr := flag.String("addr", os.Getenv("REDIS_ADDR"), "Redis address host:port (default $REDIS_ADDR); empty starts an embedded miniredis")
	latency := flag.Duration("db-latency", 30*time.Millisecond, "simulated database query latency")
	flag.Parse()
	failures, err := run(*addr, *latency)
	demo.Exit("quickstart", failures, err)
}

func run(addr string, latency time.Duration) (demo.Checks, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()

	where := addr
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("start miniredis: %w", err)
		}
		defer mr.Close()
		addr = mr.Addr()
		where = "embedded miniredis at " + addr + " (use -addr host:port for a real Redis)"
	}
	namespace := "quickstart-" + randomHex(4)

	fmt.Println("nearcache quickstart: three instances of a product-catalog service sharing one Redis")
	fmt.Printf("  Redis:     %s\n  Namespace: %s\n  Database:  in-memory map, %v per query\n", where, namespace, latency)

	db := newDatabase(latency)
	var insts []*instance
	cleaned := false
	// cleanup leaves nothing behind: Clear removes the namespace's keys
	// (SCAN + UNLINK) and drops every instance's L1; after Close, the
	// invalidation bookkeeping (sequence and epoch keys) goes too, since
	// this namespace is never used again.
	cleanup := func() (int, error) {
		cleaned = true
		var errs []error
		if len(insts) > 0 {
			errs = append(errs, insts[0].cache.Clear(ctx))
		}
		for _, in := range insts {
			errs = append(errs, in.cache.Close())
		}
		n, err := 0, errors.Join(errs...)
		if len(insts) > 0 {
			var rerr error
			n, rerr = removeLeftovers(ctx, insts[0].rc, namespace)
			err = errors.Join(err, rerr)
		}
		for _, in := range insts {
			_ = in.rc.Close()
		}
		return n, err
	}
	defer func() {
		if !cleaned {
			_, _ = cleanup()
		}
	}()
	for _, name := range []string{"A", "B", "C"} {
		rc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		if err := rc.Ping(ctx).Err(); err != nil {
			_ = rc.Close()
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
		c, err := tiered.New(tiered.Config[Product]{Redis: rc, Namespace: namespace})
		if err != nil {
			_ = rc.Close()
			return nil, err
		}
		insts = append(insts, &instance{name: name, rc: rc, cache: c})
	}
	a, b, c := insts[0], insts[1], insts[2]

	var fails demo.Checks
	if err := demoTiers(ctx, db, insts, &fails); err != nil {
		return nil, err
	}
	if err := demoWrite(ctx, db, a, []*instance{b, c}, &fails); err != nil {
		return nil, err
	}
	if err := demoStampede(ctx, db, a, &fails); err != nil {
		return nil, err
	}
	printStats(insts)

	left, err := cleanup()
	if err != nil {
		return nil, fmt.Errorf("clean up: %w", err)
	}
	fmt.Printf("\nCleaned up: Clear removed namespace %s; %d bookkeeping key(s) removed after Close.\n", namespace, left)
	fmt.Printf("Finished in %v.\n", time.Since(start).Round(time.Millisecond))
	return fails, nil
}

// snapshot is the part of Stats that says which tier answered.
type snapshot struct {
	l1Hits, l2Hits, loaded, loaderCalls, coalesced, callers, applied uint64
}

func snap(c *tiered.Cache[Product]) snapshot {
	st := c.Stats()
	return snapshot{
		l1Hits: st.L1.Hits, l2Hits: st.L2.Hits,
		loaded: st.Loads.LoadedKeys, loaderCalls: st.Loads.LoaderCalls,
		coalesced: st.Loads.Coalesced, callers: st.Loads.Callers,
		applied: st.Invalidation.Applied,
	}
}

func (s snapshot) sub(o snapshot) snapshot {
	return snapshot{
		l1Hits: s.l1Hits - o.l1Hits, l2Hits: s.l2Hits - o.l2Hits,
		loaded: s.loaded - o.loaded, loaderCalls: s.loaderCalls - o.loaderCalls,
		coalesced: s.coalesced - o.coalesced, callers: s.callers - o.callers,
		applied: s.applied - o.applied,
	}
}

// tiers names the tiers that answered, from a Stats delta.
func (s snapshot) tiers() string {
	var parts []string
	if s.l1Hits > 0 {
		parts = append(parts, fmt.Sprintf("L1 x%d", s.l1Hits))
	}
	if s.l2Hits > 0 {
		parts = append(parts, fmt.Sprintf("L2 x%d", s.l2Hits))
	}
	if s.loaded > 0 {
		parts = append(parts, fmt.Sprintf("loader x%d (%d call)", s.loaded, s.loaderCalls))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, " + ")
}

// settle waits until every instance has processed every invalidation
// published so far (a load that misses L2 also publishes one, for the key it
// stores), as would happen between two requests of a real service, so that
// each read in the tier table is independent of the previous one's messages.
func settle(insts []*instance) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		var published uint64
		for _, in := range insts {
			published += in.cache.Stats().L2.Store.Notifications
		}
		done := true
		for _, in := range insts {
			inv := in.cache.Stats().Invalidation
			done = done && inv.Applied+inv.Own >= published
		}
		if done {
			// Also leave a few milliseconds, like the gap between two
			// requests: L1 (ristretto) applies fills asynchronously.
			time.Sleep(5 * time.Millisecond)
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func newTable() *tabwriter.Writer { return tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0) }

func demoTiers(ctx context.Context, db *database, insts []*instance, fails *demo.Checks) error {
	a, b, c := insts[0], insts[1], insts[2]
	fmt.Println("\n1. Which tier answered each read (from each instance's counters around the call)")
	tw := newTable()
	fmt.Fprintln(tw, "  #\tINSTANCE\tCALL\tANSWERED BY\tEXPECTED\tTIME\tRESULT")
	steps := []struct {
		in   *instance
		keys []string
		want snapshot // tier counts expected
	}{
		{a, []string{"p1"}, snapshot{loaded: 1, loaderCalls: 1}}, // cold: nobody has it
		{a, []string{"p1"}, snapshot{l1Hits: 1}},
		{b, []string{"p1"}, snapshot{l2Hits: 1}}, // A's load stored it in Redis
		{b, []string{"p1"}, snapshot{l1Hits: 1}},
		{c, []string{"p1", "p2", "p3"}, snapshot{l2Hits: 1, loaded: 2, loaderCalls: 1}}, // one MGET, one batch query
		{c, []string{"p1", "p2", "p3"}, snapshot{l1Hits: 3}},
		{a, []string{"p1", "p2", "p3"}, snapshot{l1Hits: 1, l2Hits: 2}},
	}
	late := false
	for i, s := range steps {
		settle(insts)
		before := snap(s.in.cache)
		t0 := time.Now()
		var result string
		var call string
		if len(s.keys) == 1 {
			call = fmt.Sprintf("GetOrLoad(%s)", s.keys[0])
			p, err := s.in.cache.GetOrLoad(ctx, s.keys[0], db.Load)
			if err != nil {
				return err
			}
			result = p.String()
		} else {
			call = fmt.Sprintf("GetManyOrLoad(%s)", strings.Join(s.keys, ","))
			m, err := s.in.cache.GetManyOrLoad(ctx, s.keys, db.LoadMany)
			if err != nil {
				return err
			}
			result = fmt.Sprintf("%d products", len(m))
		}
		took := time.Since(t0)
		d := snap(s.in.cache).sub(before)
		got := d.tiers()
		mark := "yes"
		switch {
		case got == s.want.tiers():
		case d.loaded == s.want.loaded && d.loaderCalls == s.want.loaderCalls && d.l1Hits+d.l2Hits == s.want.l1Hits+s.want.l2Hits:
			// No extra database query, but an L1 fill was not applied yet.
			mark, late = "L2 instead of L1 (*)", true
		default:
			mark = "NO: " + s.want.tiers()
			fails.Expect(false, "read %d on %s: answered by %s, want %s", i+1, s.in.name, got, s.want.tiers())
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\n", i+1, s.in.name, call, got, mark, demo.Dur(took), result)
	}
	tw.Flush()
	if late {
		fmt.Println("  (*) ristretto applies fills asynchronously (usually within ~0.1ms); this read came before the fill.")
	}
	fmt.Printf("  Database queries so far: %d (p1 once, p2+p3 in one batch).\n", db.queries.Load())
	fails.Expect(db.queries.Load() == 2, "database queries after the tier demo: %d, want 2", db.queries.Load())
	return nil
}

func demoWrite(ctx context.Context, db *database, writer *instance, others []*instance, fails *demo.Checks) error {
	const key = "p1"
	old, err := writer.cache.Get(ctx, key)
	if err != nil {
		return err
	}
	updated := old
	updated.Price -= 2000
	fmt.Printf("\n2. A write on %s evicts the other instances' L1 copies (%s: %s -> %s)\n", writer.name, key, fmtPrice(old.Price), fmtPrice(updated.Price))

	// Every instance holds p1 in L1 now (table 1 showed it).
	type result struct {
		seen          time.Time
		before, after snapshot
	}
	results := make([]result, len(others))
	startPolling := make(chan struct{})
	var wg sync.WaitGroup
	for i, in := range others {
		results[i].before = snap(in.cache)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			<-startPolling
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) {
				p, err := in.cache.Get(ctx, key)
				if err == nil && p.Price == updated.Price {
					r.seen = time.Now()
					break
				}
				time.Sleep(20 * time.Microsecond)
			}
			r.after = snap(in.cache)
		}()
	}

	db.Update(updated)
	close(startPolling)
	t0 := time.Now()
	if err := writer.cache.Set(ctx, key, updated); err != nil {
		return err
	}
	setTook := time.Since(t0)
	wbefore := snap(writer.cache)
	own, err := writer.cache.Get(ctx, key)
	if err != nil {
		return err
	}
	wtier := snap(writer.cache).sub(wbefore).tiers()
	wg.Wait()

	tw := newTable()
	fmt.Fprintf(tw, "  INSTANCE\tNEW VALUE SERVED\tOLD VALUE SERVED BEFORE\tNEW VALUE FROM\tINVALIDATIONS APPLIED\n")
	fmt.Fprintf(tw, "  %s (writer)\tat once: Set took %s\t0 times\t%s\t- (own write)\n", writer.name, demo.Dur(setTook), wtier)
	fails.Expect(own.Price == updated.Price, "read-your-writes on %s: got %s, want %s", writer.name, fmtPrice(own.Price), fmtPrice(updated.Price))
	for i, in := range others {
		r := results[i]
		d := r.after.sub(r.before)
		if r.seen.IsZero() {
			fmt.Fprintf(tw, "  %s\tNOT within 2s\t%d times (from L1)\t-\t%d\n", in.name, d.l1Hits, d.applied)
			fails.Expect(false, "%s did not serve the new value within 2s of the write on %s", in.name, writer.name)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s after Set began\t%d times (from L1)\t%s\t%d\n", in.name, demo.Dur(r.seen.Sub(t0)), d.l1Hits, snapshot{l2Hits: d.l2Hits, loaded: d.loaded, loaderCalls: d.loaderCalls}.tiers(), d.applied)
		fails.Expect(d.applied >= 1, "%s applied no invalidation for the write", in.name)
		fails.Expect(d.l2Hits == 1 && d.loaded == 0, "%s: new value came from %s, want L2 x1", in.name, d.tiers())
	}
	tw.Flush()
	fmt.Println("  B and C held p1 in L1 (table 1) and polled it every ~20µs from the moment A's Set began: each")
	fmt.Println("  served its old copy until A's invalidation arrived over pub/sub, then read the new value from Redis.")
	return nil
}

func demoStampede(ctx context.Context, db *database, in *instance, fails *demo.Checks) error {
	const key, n = "p-hot", 1000
	fmt.Printf("\n3. Stampede: %d concurrent reads of a cold key (%s) on instance %s\n", n, key, in.name)
	before := snap(in.cache)
	queries := db.queries.Load()
	var (
		wg     sync.WaitGroup
		ready  sync.WaitGroup
		bad    atomic.Int64
		errMu  sync.Mutex
		errOne error
	)
	gate := make(chan struct{})
	ready.Add(n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-gate
			p, err := in.cache.GetOrLoad(ctx, key, db.Load)
			if err != nil || p.ID != key {
				bad.Add(1)
				errMu.Lock()
				errOne = errors.Join(errOne, err)
				errMu.Unlock()
			}
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(t0)
	d := snap(in.cache).sub(before)
	q := db.queries.Load() - queries

	tw := newTable()
	fmt.Fprintln(tw, "  READS\tDATABASE QUERIES\tLOADER CALLS\tCOALESCED\tLATE, FROM L1\tLATE, FROM L2\tFAILED\tWALL TIME")
	fmt.Fprintf(tw, "  %d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", n, q, d.loaderCalls, d.coalesced, d.l1Hits, d.l2Hits, bad.Load(), demo.Dur(took))
	tw.Flush()
	fmt.Printf("  %d callers missed L1 and shared one flight; %d of them waited on the flight another started.\n", d.callers, d.coalesced)
	fails.Expect(d.loaderCalls == 1 && q == 1, "stampede: %d loader calls, %d database queries, want 1 each", d.loaderCalls, q)
	fails.Expect(bad.Load() == 0, "stampede: %d reads failed: %v", bad.Load(), errOne)
	fails.Expect(d.coalesced+d.l1Hits+d.l2Hits == n-1, "stampede: coalesced %d + late L1 %d + late L2 %d, want %d", d.coalesced, d.l1Hits, d.l2Hits, n-1)
	return nil
}

func printStats(insts []*instance) {
	fmt.Println("\n4. Stats per instance (tiered.Cache.Stats)")
	tw := newTable()
	fmt.Fprintln(tw, "  INSTANCE\tL1 HITS\tL1 MISSES\tL2 LOOKUPS\tL2 HITS\tLOADER CALLS\tKEYS LOADED\tCOALESCED\tINVAL. RECEIVED\tINVAL. APPLIED")
	for _, in := range insts {
		st := in.cache.Stats()
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", in.name,
			st.L1.Hits, st.L1.Misses, st.L2.Lookups, st.L2.Hits,
			st.Loads.LoaderCalls, st.Loads.LoadedKeys, st.Loads.Coalesced,
			st.Invalidation.Received, st.Invalidation.Applied)
	}
	tw.Flush()
	fmt.Println()
	tw = newTable()
	fmt.Fprintln(tw, "  INSTANCE\tREQUESTS\tL1 HIT RATIO\tL2 HIT RATIO\tOVERALL HIT RATIO")
	for _, in := range insts {
		st := in.cache.Stats().Combined
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", in.name, st.Requests, pct(st.L1HitRatio), pct(st.L2HitRatio), pct(st.HitRatio))
	}
	tw.Flush()
	fmt.Println("  L1 ratio: L1 hits / requests. L2 ratio: L2 hits / L2 lookups. Overall: requests answered")
	fmt.Println("  without the loader. Received counts every message (own ones too); applied, other instances' ones.")
	fmt.Println("  B's and C's request counts include their polling in table 2; A's, the 1000 stampede reads.")
}

// removeLeftovers deletes the namespace's invalidation bookkeeping keys,
// which Clear keeps (other instances may still track the sequence numbers).
func removeLeftovers(ctx context.Context, rc *redis.Client, namespace string) (int, error) {
	var keys []string
	iter := rc.Scan(ctx, 0, "*"+namespace+"*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return 0, fmt.Errorf("scan leftovers: %w", err)
	}
	for _, k := range keys { // one by one: the keys may carry different hash tags
		if err := rc.Del(ctx, k).Err(); err != nil {
			return 0, fmt.Errorf("remove %q: %w", k, err)
		}
	}
	return len(keys), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func fmtPrice(cents int) string { return fmt.Sprintf("$%d.%02d", cents/100, cents%100) }

func pct(r float64) string { return fmt.Sprintf("%.1f%%", 100*r) }
