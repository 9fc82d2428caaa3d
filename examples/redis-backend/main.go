// Command redis-backend exercises the shared tier on its own, the way the
// seed's RedisBackend validation script did: connect, set with TTL 300, get,
// set_many/get_many, stats, clear, close.
//
//	go run ./examples/redis-backend                 # embedded miniredis
//	go run ./examples/redis-backend -addr host:6379 # a real Redis (or REDIS_ADDR)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
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
		fmt.Println("Using embedded miniredis at", addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	store, err := l2.Open(ctx, l2.Config{Addrs: []string{addr}, KeyPrefix: prefix})
	if err != nil {
		return err
	}
	fmt.Println("Connected to Redis:", store.IsConnected(ctx))

	if err := store.Set(ctx, "test_key", l2.Entry{Value: []byte("test_value"), TTL: 300 * time.Second,
		Metadata: map[string]string{"source": "example"}}); err != nil {
		return err
	}
	fmt.Println("Set test_key with TTL 300")

	e, err := store.Get(ctx, "test_key")
	if err != nil {
		return err
	}
	fmt.Printf("Retrieved value: %s (metadata %v, expires in ~%ds)\n", e.Value, e.Metadata, int(time.Until(e.ExpiresAt).Round(time.Second).Seconds()))

	batch := map[string]l2.Entry{
		"key1": {Value: []byte("value1"), TTL: 300 * time.Second},
		"key2": {Value: []byte("value2"), TTL: 300 * time.Second},
		"key3": {Value: []byte("value3"), TTL: 300 * time.Second},
	}
	if err := store.SetMany(ctx, batch); err != nil {
		return err
	}
	fmt.Println("Set multiple values: 3")
	many, err := store.GetMany(ctx, []string{"key1", "key2", "key3", "missing"})
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(many))
	for k := range many {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Print("Retrieved multiple values:")
	for _, k := range keys {
		fmt.Printf(" %s=%s", k, many[k].Value)
	}
	fmt.Println()

	st := store.Stats()
	fmt.Printf("Stats: hits=%d misses=%d sets=%d errors=%d latency p50=%v p99=%v\n",
		st.Hits, st.Misses, st.Sets, st.Errors, st.Latency.P50, st.Latency.P99)
	if info, err := store.ServerStats(ctx); err == nil && len(info) > 0 {
		fmt.Printf("Server: version=%q used_memory=%d clients=%d\n", info[0].Version, info[0].UsedMemory, info[0].ConnectedClients)
	}

	n, err := store.Clear(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("Cleared cache: %d keys under %q\n", n, prefix)
	if err := store.Close(); err != nil {
		return err
	}
	fmt.Println("Connection closed")
	return nil
}
