// Command redis-backend is the seed's RedisBackend validation example in Go:
// it connects, sets mykey to myvalue with a TTL of 300 s and reads it back,
// sets a, b and c in one batch with a TTL of 60 s and reads them back, prints
// the store's stats, then clears its keys and disconnects. It prints the
// seed's lines, in Go's formatting of the same values:
//
//	Connected to Redis!
//	Retrieved: myvalue
//	Batch get: map[a:1 b:2 c:3]
//	Stats: {Hits:4 Misses:0 Sets:4 ...}
//
// Usage:
//
//	go run ./examples/redis-backend                 # embedded miniredis
//	go run ./examples/redis-backend -addr host:6379 # a real Redis (or REDIS_ADDR)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/nearcache/nearcache/l2"
)

func main() {
	addr := flag.String("addr", os.Getenv("REDIS_ADDR"), "Redis address (host:port); empty starts an in-process miniredis")
	prefix := flag.String("prefix", "nearcache-example:", "key prefix (Clear removes only keys under it)")
	flag.Parse()
	if err := run(*addr, *prefix); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(addr, prefix string) error {
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return fmt.Errorf("start miniredis: %w", err)
		}
		defer mr.Close()
		addr = mr.Addr()
		fmt.Fprintln(os.Stderr, "(using an embedded miniredis at", addr+")")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	store, err := l2.Open(ctx, l2.Config{Addrs: []string{addr}, KeyPrefix: prefix})
	if err != nil {
		return err
	}
	defer store.Close()
	fmt.Println("Connected to Redis!")

	if err := store.Set(ctx, "mykey", l2.Entry{Value: []byte("myvalue"), TTL: 300 * time.Second}); err != nil {
		return err
	}
	e, err := store.Get(ctx, "mykey")
	if err != nil {
		return err
	}
	fmt.Printf("Retrieved: %s\n", e.Value)

	if err := store.SetMany(ctx, map[string]l2.Entry{
		"a": {Value: []byte("1"), TTL: 60 * time.Second},
		"b": {Value: []byte("2"), TTL: 60 * time.Second},
		"c": {Value: []byte("3"), TTL: 60 * time.Second},
	}); err != nil {
		return err
	}
	many, err := store.GetMany(ctx, []string{"a", "b", "c"})
	if err != nil {
		return err
	}
	values := make(map[string]string, len(many))
	for k, e := range many {
		values[k] = string(e.Value)
	}
	fmt.Printf("Batch get: %v\n", values) // fmt prints a map sorted by key

	fmt.Printf("Stats: %+v\n", store.Stats())

	if _, err := store.Clear(ctx); err != nil {
		return err
	}
	return store.Close() // disconnect (Close is idempotent; the deferred one is for early returns)
}
