// Command change-stream shows invalidation from outside the Caches: a
// program that changes the database directly (another service, a migration,
// a batch job), and a change-stream follower that tells every instance's
// local cache, with a tiered.Invalidator.
//
//	go run ./examples/change-stream                 # embedded miniredis
//	go run ./examples/change-stream -addr host:6379 # a real Redis (a fresh, random namespace, removed at the end)
//
// The pieces, each as it would be in production:
//
//   - the database: a products table whose rows carry an updated_at
//     timestamp (here an in-memory map);
//   - two instances of a catalog service, A and B, each with its own Redis
//     client and tiered.Cache, reading rows through a loader;
//   - the changer: updates and soft-deletes rows in the table directly,
//     never through a Cache;
//   - the follower: a loop that asks the table for the rows changed since
//     the last updated_at it handled and calls Invalidator.Delete for them.
//     Delete removes the keys from Redis leaving short tombstones (so a load
//     that read a row before the change cannot write the old row back) and
//     publishes the invalidation that makes A and B drop their copies.
//
// It prints what each instance serves before the change, right after it,
// and once the follower has run, and exits with status 1 if a property it
// shows does not hold (an instance still serving an old row 2s after the
// follower's Delete, a row reloaded that did not change).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/examples/internal/demo"
	"github.com/nearcache/nearcache/tiered"
)

// Product is a row of the products table, and the value the Caches hold.
type Product struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Price     int       `json:"price"` // cents
	UpdatedAt time.Time `json:"updated_at"`
	Deleted   bool      `json:"-"` // soft delete: the row stays for the change stream
}

// stamp formats updated_at.
const stamp = "15:04:05.000000000"

func (p Product) String() string {
	return fmt.Sprintf("%s $%d.%02d", p.Name, p.Price/100, p.Price%100)
}

// table is the database: rows with an updated_at that grows with every
// change. Queries are counted.
type table struct {
	mu      sync.Mutex
	rows    map[string]Product
	last    time.Time // the latest updated_at handed out
	queries atomic.Int64
}

func newTable() *table {
	t := &table{rows: map[string]Product{}}
	for i, name := range []string{"Teapot", "Kettle", "Mug", "Saucer"} {
		id := fmt.Sprintf("p%d", i+1)
		t.rows[id] = Product{ID: id, Name: name, Price: 1000 * (i + 1), UpdatedAt: t.tick()}
	}
	return t
}

// tick returns the next updated_at: now, or just after the last one.
// Called with mu held (or before the table is shared).
func (t *table) tick() time.Time {
	now := time.Now().Round(0) // wall clock only, as a database stores it
	if !now.After(t.last) {
		now = t.last.Add(time.Microsecond)
	}
	t.last = now
	return now
}

// load is the Caches' loader: SELECT ... WHERE id = ? AND NOT deleted.
func (t *table) load(_ context.Context, id string) (Product, error) {
	t.queries.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.rows[id]
	if !ok || p.Deleted {
		return Product{}, tiered.ErrNotFound
	}
	return p, nil
}

// update changes a row the way another program would: straight in the
// database, no Cache involved.
func (t *table) update(id string, change func(*Product)) Product {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.rows[id]
	change(&p)
	p.UpdatedAt = t.tick()
	t.rows[id] = p
	return p
}

// newest is the latest updated_at in the table.
func (t *table) newest() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// changedSince is the follower's query: SELECT id, updated_at WHERE
// updated_at > ? ORDER BY updated_at. (With a real database, whose
// transactions can commit out of updated_at order, re-read a short overlap
// window too: Delete is idempotent.)
func (t *table) changedSince(ts time.Time) []Product {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Product
	for _, p := range t.rows {
		if p.UpdatedAt.After(ts) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Product) int { return a.UpdatedAt.Compare(b.UpdatedAt) })
	return out
}

// follower invalidates the rows that changed since the last updated_at it
// handled, every interval, until ctx ends.
type follower struct {
	db       *table
	inv      *tiered.Invalidator
	interval time.Duration
	log      func(format string, args ...any)

	mu      sync.Mutex
	handled time.Time // the updated_at handled so far
	deleted time.Time // when the last Delete returned
}

func (f *follower) run(ctx context.Context, since time.Time) {
	f.mu.Lock()
	f.handled = since
	f.mu.Unlock()
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		since := f.handled
		f.mu.Unlock()
		rows := f.db.changedSince(since)
		if len(rows) == 0 {
			continue
		}
		keys := make([]string, len(rows))
		for i, p := range rows {
			keys[i] = p.ID
		}
		began := time.Now()
		if err := f.inv.Delete(ctx, keys...); err != nil {
			f.log("follower: Delete %q failed (%v); retrying on the next tick", keys, err)
			continue // handled stays: the same rows are read again
		}
		done := time.Now()
		f.mu.Lock()
		f.handled, f.deleted = rows[len(rows)-1].UpdatedAt, done
		f.mu.Unlock()
		f.log("follower: rows %q changed after %s: Invalidator.Delete(ctx, %q...) took %s",
			keys, since.Format(stamp), keys, demo.Dur(done.Sub(began)))
	}
}

// caughtUp reports whether the follower has handled the change at ts, and
// when its Delete returned.
func (f *follower) caughtUp(ts time.Time) (bool, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.handled.Before(ts), f.deleted
}

func main() {
	addr := flag.String("addr", "", "Redis address (host:port); empty starts an embedded miniredis")
	flag.Parse()
	fails, err := run(*addr)
	demo.Exit("change-stream", fails, err)
}

func run(addr string) (fails demo.Checks, err error) {
	ctx := context.Background()
	start := time.Now()
	where := addr
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("start miniredis: %w", err)
		}
		defer mr.Close()
		addr, where = mr.Addr(), "embedded miniredis (use -addr host:port for a real Redis)"
	}
	namespace := "changestream-" + randomHex(4)
	fmt.Println("nearcache change-stream: a program changes the database directly; a follower invalidates every instance")
	fmt.Printf("  Redis:     %s\n  Namespace: %s\n\n", where, namespace)

	// Two service instances, each with its own client and Cache, and the
	// follower, a separate program with a client of its own.
	var clients []*redis.Client
	newClient := func() (*redis.Client, error) {
		rc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		clients = append(clients, rc)
		return rc, rc.Ping(ctx).Err()
	}
	defer func() {
		for _, rc := range clients {
			_ = rc.Close()
		}
	}()
	names := []string{"A", "B"}
	caches := make([]*tiered.Cache[Product], 0, len(names))
	var inv *tiered.Invalidator
	defer func() { // before the clients close
		if cerr := cleanup(ctx, caches, inv, clients, namespace); cerr != nil && err == nil {
			err = fmt.Errorf("clean up: %w", cerr)
		}
	}()
	for range names {
		rc, err := newClient()
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
		// NegativeTTL caches "not found" too: a deleted row costs one query.
		c, err := tiered.New(tiered.Config[Product]{Redis: rc, Namespace: namespace, NegativeTTL: time.Minute})
		if err != nil {
			return nil, err
		}
		caches = append(caches, c)
	}
	frc, err := newClient()
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	inv, err = tiered.NewInvalidator(frc, tiered.InvalidatorConfig{Namespace: namespace})
	if err != nil {
		return nil, err
	}

	db := newTable()
	ids := []string{"p1", "p2", "p3", "p4"}

	// 1. Both instances read every row: A from the database, B from Redis,
	// then both from their L1.
	for _, c := range caches {
		for _, id := range ids {
			if _, err := c.GetOrLoad(ctx, id, db.load); err != nil {
				return nil, err
			}
		}
	}
	fmt.Printf("1. Both instances read %d rows (%d database queries: A loaded them, B read them from Redis).\n", len(ids), db.queries.Load())
	show(ctx, names, caches, ids, db)

	fails.Expect(db.queries.Load() == int64(len(ids)), "%d database queries for the first reads, want %d", db.queries.Load(), len(ids))

	// 2. The changer: an UPDATE and a soft DELETE, straight in the database.
	since := db.newest() // where the follower will start: everything up to here is cached as it is
	changed := map[string]bool{"p1": true, "p2": true}
	p1 := db.update("p1", func(p *Product) { p.Price = 1250 })
	p2 := db.update("p2", func(p *Product) { p.Deleted = true })
	fmt.Printf("\n2. The changer, another program, writes the database directly (no Cache):\n")
	fmt.Printf("   UPDATE products SET price = 12.50 WHERE id = 'p1'   (updated_at %s)\n", p1.UpdatedAt.Format(stamp))
	fmt.Printf("   UPDATE products SET deleted = true WHERE id = 'p2'  (updated_at %s)\n", p2.UpdatedAt.Format(stamp))
	fmt.Println("   Nothing has told the instances yet: they still serve their copies.")
	show(ctx, names, caches, ids, db)
	for i, c := range caches {
		got, err := c.Get(ctx, "p1")
		fails.Expect(err == nil && got.Price == 1000, "%s served p1 as %v, %v before the follower ran; want its old copy", names[i], got, err)
	}

	// 3. The follower, from the last updated_at the caches had seen.
	fmt.Println("\n3. The follower polls the table every 50ms:")
	followCtx, stop := context.WithCancel(ctx)
	f := &follower{db: db, inv: inv, interval: 50 * time.Millisecond, log: func(format string, args ...any) {
		fmt.Printf("   "+format+"\n", args...)
	}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f.run(followCtx, since) }()
	defer func() { stop(); wg.Wait() }()

	// 4. Wait for the follower, then for every instance to serve the new rows.
	var deleted time.Time
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, at := f.caughtUp(p2.UpdatedAt)
		if ok {
			deleted = at
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the follower did not handle the change within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	queries := db.queries.Load()
	fresh := func() bool {
		for _, c := range caches {
			for _, id := range ids {
				want, werr := db.load(ctx, id)
				db.queries.Add(-1) // the check's own query does not count
				got, err := c.GetOrLoad(ctx, id, db.load)
				if werr != nil {
					if !errors.Is(err, tiered.ErrNotFound) {
						return false
					}
				} else if err != nil || !same(got, want) {
					return false
				}
			}
		}
		return true
	}
	for !fresh() && time.Since(deleted) < 2*time.Second {
		time.Sleep(time.Millisecond)
	}
	took := time.Since(deleted)
	ok := fresh()
	fails.Expect(ok, "an instance still served an old row 2s after the follower's Delete")
	reloads := db.queries.Load() - queries
	fails.Expect(reloads == int64(len(changed)), "%d database queries after the Delete, want %d (one per changed row, by whichever instance read it first)", reloads, len(changed))
	fmt.Printf("\n4. Both instances serve the database's rows %s after the Delete returned (%d database queries: the changed rows only):\n", demo.Dur(took), reloads)
	show(ctx, names, caches, ids, db)
	for i, c := range caches {
		st := c.Stats()
		fmt.Printf("   %s: %d invalidation(s) applied, %d L1 hits, %d loader call(s)\n", names[i], st.Invalidation.Applied, st.L1.Hits, st.Loads.LoaderCalls)
	}
	fmt.Printf("\nFinished in %v.\n", time.Since(start).Round(time.Millisecond))
	return fails, nil
}

// show prints what each instance serves for each id, without loading
// (Get: L1, then Redis).
func show(ctx context.Context, names []string, caches []*tiered.Cache[Product], ids []string, db *table) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "   id\tdatabase")
	for _, n := range names {
		fmt.Fprintf(tw, "\t%s serves", n)
	}
	fmt.Fprintln(tw)
	for _, id := range ids {
		want, err := db.load(ctx, id)
		db.queries.Add(-1) // printing is not a query of the service
		fmt.Fprintf(tw, "   %s\t%s", id, value(want, err))
		for _, c := range caches {
			got, err := c.Get(ctx, id)
			fmt.Fprintf(tw, "\t%s", value(got, err))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// same reports whether two rows hold the same data (times compared as
// instants: a row read back from Redis has been through JSON).
func same(a, b Product) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Price == b.Price && a.UpdatedAt.Equal(b.UpdatedAt)
}

func value(p Product, err error) string {
	switch {
	case errors.Is(err, tiered.ErrNotFound):
		return "(not found)"
	case err != nil:
		return "error: " + err.Error()
	}
	return p.String()
}

// cleanup removes what the example wrote: Clear removes the namespace's
// keys (values and tombstones); once the Caches and the Invalidator are
// closed, the invalidation bookkeeping (sequence and epoch keys, outside
// the prefix) goes too, since the namespace is never used again.
func cleanup(ctx context.Context, caches []*tiered.Cache[Product], inv *tiered.Invalidator, clients []*redis.Client, namespace string) error {
	var errs []error
	if len(caches) > 0 {
		errs = append(errs, caches[0].Clear(ctx))
	}
	for _, c := range caches {
		errs = append(errs, c.Close())
	}
	if inv != nil {
		errs = append(errs, inv.Close())
	}
	if len(clients) == 0 {
		return errors.Join(errs...)
	}
	rc := clients[0]
	iter := rc.Scan(ctx, 0, "*"+namespace+"*", 100).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	errs = append(errs, iter.Err())
	for _, k := range keys { // one by one: the keys may carry different hash tags
		errs = append(errs, rc.Del(ctx, k).Err())
	}
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
