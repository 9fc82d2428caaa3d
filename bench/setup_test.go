package bench

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/nearcache/nearcache/internal/benchvalue"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// AddrEnv names a redis-server that run.sh started for this suite; the
// benchmarks FLUSHALL it between runs. Without it each benchmark starts its
// own server (internal/redistest), or skips without redis-server unless
// NEARCACHE_REQUIRE_REDIS=1.
const AddrEnv = "NEARCACHE_BENCH_REDIS"

// Value is the value type of every workload: about 200 bytes of JSON, the
// same as the library's own benchmarks.
type Value = benchvalue.Value

func newValue(i int) Value { return benchvalue.New(i) }

func keyIndex(k string) int {
	i, _ := strconv.Atoi(k[strings.LastIndexByte(k, ':')+1:])
	return i
}

func keyList(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	return keys
}

var sink Value

// server returns the address of an empty redis-server.
func server(b *testing.B) string {
	b.Helper()
	addr := os.Getenv(AddrEnv)
	if addr == "" {
		addr = redistest.StartServer(b).Addr()
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		b.Fatalf("FLUSHALL %s: %v", addr, err)
	}
	return addr
}

func goredis(b *testing.B, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: 1})
	b.Cleanup(func() { _ = c.Close() })
	return c
}

func nearcache(b *testing.B, rdb redis.UniversalClient, ns string, l1Entries int64) *tiered.Cache[Value] {
	c, err := tiered.New(tiered.Config[Value]{Redis: rdb, Namespace: ns, TTL: time.Hour, MaxL1TTL: time.Hour, L1MaxEntries: l1Entries})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

func jsonMarshal(v any) ([]byte, error)      { return json.Marshal(v) }
func jsonUnmarshal(b []byte, v any) error    { return json.Unmarshal(b, v) }
func loadValue(key string) (Value, error)    { return newValue(keyIndex(key)), nil }
func encodeValue(key string) ([]byte, error) { return json.Marshal(newValue(keyIndex(key))) }

// goRedisCache is github.com/go-redis/cache with a TinyLFU local cache of
// the given size, using JSON (its default is msgpack+s2; JSON keeps the
// value format identical across peers).
func goRedisCache(rdb *redis.Client, local int) *gocache.Cache {
	return gocache.New(&gocache.Options{
		Redis:        rdb,
		LocalCache:   gocache.NewTinyLFU(local, time.Hour),
		StatsEnabled: true, // counts reads that reached Redis
		Marshal:      jsonMarshal,
		Unmarshal:    jsonUnmarshal,
	})
}

func goRedisCacheGet(ctx context.Context, c *gocache.Cache, key string) (Value, error) {
	return goRedisOnce(ctx, c, key, func() (Value, error) { return loadValue(key) })
}

// goRedisOnce is go-redis/cache's read-through call: local, then Redis,
// then do (coalesced by its singleflight), whose result it SETs.
func goRedisOnce(ctx context.Context, c *gocache.Cache, key string, do func() (Value, error)) (Value, error) {
	var v Value
	err := c.Once(&gocache.Item{Ctx: ctx, Key: key, Value: &v, TTL: time.Hour,
		Do: func(*gocache.Item) (any, error) { return do() }})
	return v, err
}

// rueidisClient is a rueidis client with client-side caching (RESP3
// tracking, server-assisted invalidation). cacheBytes > 0 sets the cache
// size and uses one connection (one cache); 0 keeps rueidis's defaults.
func rueidisClient(b *testing.B, addr string, cacheBytes int) rueidis.Client {
	opt := rueidis.ClientOption{InitAddress: []string{addr}}
	if cacheBytes > 0 {
		opt.CacheSizeEachConn = cacheBytes
		opt.PipelineMultiplex = -1
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c
}

// rueidisGet reads key through the client-side cache; on a Redis miss it
// loads the value and SETs it (rueidis has no loader or coalescing of its
// own for that step: this is the cache-aside code a user writes).
func rueidisGet(ctx context.Context, c rueidis.Client, key string, load bool) (Value, error) {
	var v Value
	bs, err := c.DoCache(ctx, c.B().Get().Key(key).Cache(), time.Hour).AsBytes()
	if rueidis.IsRedisNil(err) && load {
		if v, err = loadValue(key); err != nil {
			return v, err
		}
		js, _ := json.Marshal(v)
		return v, c.Do(ctx, c.B().Set().Key(key).Value(rueidis.BinaryString(js)).Ex(time.Hour).Build()).Error()
	}
	if err != nil {
		return v, err
	}
	err = json.Unmarshal(bs, &v)
	return v, err
}

// rawGet is the floor: go-redis GET plus json.Unmarshal; on a miss it loads
// and SETs.
func rawGet(ctx context.Context, c *redis.Client, key string, load bool) (Value, error) {
	var v Value
	bs, err := c.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) && load {
		if v, err = loadValue(key); err != nil {
			return v, err
		}
		js, _ := json.Marshal(v)
		return v, c.Set(ctx, key, js, time.Hour).Err()
	}
	if err != nil {
		return v, err
	}
	err = json.Unmarshal(bs, &v)
	return v, err
}

func rawRistretto(b *testing.B, keys []string) *ristretto.Cache[string, Value] {
	rc, err := ristretto.NewCache(&ristretto.Config[string, Value]{
		NumCounters: 1_000_000, MaxCost: 100_000, BufferItems: 64, IgnoreInternalCost: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rc.Close)
	for _, k := range keys {
		rc.SetWithTTL(k, newValue(keyIndex(k)), 1, time.Hour)
	}
	rc.Wait()
	return rc
}

// commands returns the server's total_commands_processed; each call is
// itself one command, which delta subtracts.
func commands(b *testing.B, c *redis.Client) int64 {
	return infoField(b, c, "stats", "total_commands_processed")
}

func getCalls(b *testing.B, c *redis.Client) int64 {
	return infoField(b, c, "commandstats", "cmdstat_get")
}

func infoField(b *testing.B, c *redis.Client, section, field string) int64 {
	s, err := c.Info(context.Background(), section).Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(s, "\r\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		if section == "commandstats" { // calls=N,usec=...
			val = strings.TrimPrefix(strings.Split(val, ",")[0], "calls=")
		}
		n, _ := strconv.ParseInt(val, 10, 64)
		return n
	}
	return 0
}

// populate writes value JSON for keys with plain SETs (for the peers that
// store plain values) and through nearcache (envelopes) under ns.
func populate(b *testing.B, rdb *redis.Client, plain []string, nc *tiered.Cache[Value], ncKeys []string) {
	ctx := context.Background()
	const chunk = 1000
	for lo := 0; lo < len(plain); lo += chunk {
		p := rdb.Pipeline()
		for _, k := range plain[lo:min(lo+chunk, len(plain))] {
			js, _ := encodeValue(k)
			p.Set(ctx, k, js, time.Hour)
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	for lo := 0; nc != nil && lo < len(ncKeys); lo += chunk {
		items := map[string]Value{}
		for _, k := range ncKeys[lo:min(lo+chunk, len(ncKeys))] {
			items[k] = newValue(keyIndex(k))
		}
		if err := nc.SetMany(ctx, items); err != nil {
			b.Fatal(err)
		}
	}
}

// processCPU is benchvalue.ProcessCPU, failing b on an error.
func processCPU(b *testing.B) time.Duration {
	d, err := benchvalue.ProcessCPU()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
