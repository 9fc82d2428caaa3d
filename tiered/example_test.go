package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/tiered"
)

type Product struct {
	SKU   string
	Price int
}

// Two instances of a service share one Redis. A write on one is seen by the
// other; concurrent reads of a cold key share one load.
func Example() {
	mr, _ := miniredis.Run() // a real service passes its own Redis address
	defer mr.Close()
	ctx := context.Background()

	newInstance := func() (*tiered.Cache[Product], *redis.Client) {
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
		c, err := tiered.New(tiered.Config[Product]{Redis: rdb, Namespace: "products"})
		if err != nil {
			panic(err)
		}
		return c, rdb
	}
	a, rdbA := newInstance()
	defer rdbA.Close()
	defer a.Close()
	b, rdbB := newInstance()
	defer rdbB.Close()
	defer b.Close()

	loads := 0
	load := func(ctx context.Context, sku string) (Product, error) {
		loads++
		if sku == "unknown" {
			return Product{}, tiered.ErrNotFound
		}
		return Product{SKU: sku, Price: 100}, nil
	}

	p, _ := a.GetOrLoad(ctx, "sku-1", load) // loader, then Redis, then A's L1
	fmt.Println("A:", p.Price, "loads:", loads)
	p, _ = b.GetOrLoad(ctx, "sku-1", load) // from Redis: no second load
	fmt.Println("B:", p.Price, "loads:", loads)

	_ = a.Set(ctx, "sku-1", Product{SKU: "sku-1", Price: 120}) // after the database update
	p, _ = a.Get(ctx, "sku-1")                                 // read-your-writes
	fmt.Println("A after Set:", p.Price)

	_, err := b.GetOrLoad(ctx, "unknown", load)
	fmt.Println("unknown:", err)
	// Output:
	// A: 100 loads: 1
	// B: 100 loads: 1
	// A after Set: 120
	// unknown: tiered: not found
}

// A Cache without Redis is a single-process read-through cache.
func ExampleNew_localOnly() {
	c, err := tiered.New(tiered.Config[string]{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	v, _ := c.GetOrLoad(context.Background(), "greeting", func(context.Context, string) (string, error) {
		return "hello", nil
	})
	fmt.Println(v)
	// Output: hello
}

// Reads go through a loader; after a database write, Set the new value with
// the row's version (WithVersion), so that an older write reaching the cache
// later is refused (ErrStale) instead of bringing the old row back.
func ExampleCache_GetOrLoad() {
	mr, _ := miniredis.Run() // a real service passes its own Redis address
	defer mr.Close()
	ctx := context.Background()

	// ContextTimeoutEnabled lets the Cache bound each Redis call (RedisTimeout).
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	c, err := tiered.New(tiered.Config[Product]{Redis: rdb, Namespace: "products"})
	if err != nil {
		panic(err)
	}
	defer c.Close() // runs before rdb.Close: a Cache never closes its client

	db := map[string]Product{"sku-1": {SKU: "sku-1", Price: 100}} // the database
	version := uint64(1)                                          // sku-1's row version
	load := func(ctx context.Context, sku string) (Product, error) {
		p, ok := db[sku]
		if !ok {
			return Product{}, tiered.ErrNotFound
		}
		return p, nil
	}

	p, _ := c.GetOrLoad(ctx, "sku-1", load)
	fmt.Println("read:", p.Price)

	db["sku-1"], version = Product{SKU: "sku-1", Price: 120}, 2 // the database write
	err = c.Set(ctx, "sku-1", db["sku-1"], tiered.WithVersion(version))
	fmt.Println("set v2:", err)
	err = c.Set(ctx, "sku-1", Product{SKU: "sku-1", Price: 100}, tiered.WithVersion(1)) // a late, older write
	fmt.Println("set v1:", errors.Is(err, tiered.ErrStale))

	p, _ = c.GetOrLoad(ctx, "sku-1", load)
	fmt.Println("read:", p.Price)
	// Output:
	// read: 100
	// set v2: <nil>
	// set v1: true
	// read: 120
}

// A loader sets the TTL of what it loads from the value itself: an access
// token is cached until a minute before it expires, and one that is about
// to expire is returned but not cached.
func ExampleSetTTL() {
	mr, _ := miniredis.Run() // a real service passes its own Redis address
	defer mr.Close()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	type Token struct {
		Value     string
		ExpiresIn time.Duration // as the identity provider says
	}
	c, err := tiered.New(tiered.Config[Token]{Redis: rdb, Namespace: "tokens"})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	issued := 0
	issue := func(ctx context.Context, client string) (Token, error) {
		issued++ // a call to the identity provider
		tok := Token{Value: fmt.Sprint("tok-", issued), ExpiresIn: time.Hour}
		if client == "legacy" {
			tok.ExpiresIn = 30 * time.Second
		}
		// <= 0 (expires within the minute): return it, cache it nowhere.
		return tok, tiered.SetTTL(ctx, tok.ExpiresIn-time.Minute)
	}

	tok, _ := c.GetOrLoad(ctx, "billing", issue)
	fmt.Println(tok.Value, "cached for", mr.TTL("tokens:billing"))
	tok, _ = c.GetOrLoad(ctx, "billing", issue)
	fmt.Println(tok.Value, "again")
	tok, _ = c.GetOrLoad(ctx, "legacy", issue)
	fmt.Println(tok.Value, "cached:", mr.Exists("tokens:legacy"))
	tok, _ = c.GetOrLoad(ctx, "legacy", issue)
	fmt.Println(tok.Value, "issued anew")
	// Output:
	// tok-1 cached for 59m0s
	// tok-1 again
	// tok-2 cached: false
	// tok-3 issued anew
}

// A program that changes the database without a Cache (a change-stream
// follower, a migration, another service) tells every instance with an
// Invalidator. Delete leaves tombstones, so a load that read the old row
// before the change cannot write it back.
func ExampleInvalidator() {
	mr, _ := miniredis.Run() // a real service passes its own Redis address
	defer mr.Close()
	ctx := context.Background()

	// A service instance, caching product rows.
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	c, err := tiered.New(tiered.Config[Product]{Redis: rdb, Namespace: "products"})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	db := map[string]Product{"sku-1": {SKU: "sku-1", Price: 100}} // the database
	load := func(ctx context.Context, sku string) (Product, error) { return db[sku], nil }
	p, _ := c.GetOrLoad(ctx, "sku-1", load)
	fmt.Println("cached:", p.Price)

	// The other program, with its own client: it updates the row, then
	// invalidates the key.
	other := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer other.Close()
	inv, err := tiered.NewInvalidator(other, tiered.InvalidatorConfig{Namespace: "products"})
	if err != nil {
		panic(err)
	}
	defer inv.Close()
	db["sku-1"] = Product{SKU: "sku-1", Price: 120}
	if err := inv.Delete(ctx, "sku-1"); err != nil {
		panic(err)
	}

	// The instance drops its copy when the message arrives (well under a
	// millisecond on a healthy network), and loads the new row.
	for start := time.Now(); p.Price != 120 && time.Since(start) < 5*time.Second; time.Sleep(time.Millisecond) {
		p, _ = c.GetOrLoad(ctx, "sku-1", load)
	}
	fmt.Println("after the change:", p.Price)
	// Output:
	// cached: 100
	// after the change: 120
}
