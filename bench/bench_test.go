package bench

import (
	"context"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/nearcache/nearcache/tiered"
)

// Sub-benchmark names are the peers: raw-ristretto and raw-go-redis (the
// floors), nearcache, go-redis-cache, rueidis. run.sh parses them.

const (
	warmKeys  = 1024    // keys of the L1-hit workloads; power of two
	coldKeys  = 1 << 16 // keys the L2 workloads cycle through; power of two
	tinyLocal = 128     // local capacity (entries) in the L2 workloads
	// rueidis sizes its cache in bytes; about 400 bytes per cached GET of
	// a 200-byte value (key, message, bookkeeping).
	rueidisEntryBytes = 400
)

// warm makes get a local hit for every key (it retries until isHit says
// so, since some caches admit asynchronously).
func warm(b *testing.B, keys []string, get func(string), isHit func(string) bool) {
	for range 50 {
		all := true
		for _, k := range keys {
			get(k)
		}
		for _, k := range keys {
			if !isHit(k) {
				all = false
			}
		}
		if all {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("keys never became local hits")
}

// l1Peers returns, for each peer, a warmed read function over keys.
func l1Peers(b *testing.B, addr string, keys []string) map[string]func(string) Value {
	ctx := context.Background()
	rdb := goredis(b, addr)
	populate(b, rdb, keys, nil, nil)
	peers := map[string]func(string) Value{}

	rc := rawRistretto(b, keys)
	peers["raw-ristretto"] = func(k string) Value { v, _ := rc.Get(k); return v }

	nc := nearcache(b, rdb, "nc", 0)
	ncLoad := func(_ context.Context, k string) (Value, error) { return loadValue(k) }
	warm(b, keys, func(k string) { _, _ = nc.GetOrLoad(ctx, k, ncLoad) }, func(k string) bool {
		before := nc.Stats().L1.Hits
		_, _ = nc.GetOrLoad(ctx, k, ncLoad)
		return nc.Stats().L1.Hits > before
	})
	peers["nearcache"] = func(k string) Value { v, _ := nc.GetOrLoad(ctx, k, ncLoad); return v }

	gc := goRedisCache(goredis(b, addr), 100_000)
	warm(b, keys, func(k string) { _, _ = goRedisCacheGet(ctx, gc, k) }, func(k string) bool {
		var v Value
		return gc.Get(ctx, k, &v) == nil // a Get after Once is local
	})
	peers["go-redis-cache"] = func(k string) Value { v, _ := goRedisCacheGet(ctx, gc, k); return v }

	rc2 := rueidisClient(b, addr, 0)
	warm(b, keys, func(k string) { _, _ = rueidisGet(ctx, rc2, k, true) }, func(k string) bool {
		return rc2.DoCache(ctx, rc2.B().Get().Key(k).Cache(), time.Hour).IsCacheHit()
	})
	peers["rueidis"] = func(k string) Value { v, _ := rueidisGet(ctx, rc2, k, true); return v }
	return peers
}

var l1Order = []string{"raw-ristretto", "nearcache", "go-redis-cache", "rueidis"}

// BenchmarkL1Hit is the latency of a local hit (one goroutine) on a warm
// key: ristretto Get of a TTL entry (floor), nearcache GetOrLoad,
// go-redis/cache Once (local TinyLFU hit + JSON decode), rueidis DoCache
// (client-side cache hit + JSON decode).
func BenchmarkL1Hit(b *testing.B) {
	keys := keyList("k:", warmKeys)
	peers := l1Peers(b, server(b), keys)
	for _, name := range l1Order {
		get := peers[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var s int64
			for i := 0; b.Loop(); i++ {
				s += get(keys[i&(warmKeys-1)]).ID
			}
			sink.ID = s
		})
	}
}

// BenchmarkL1HitParallel is the throughput of local hits under
// b.RunParallel: run with -cpu 1,2.
func BenchmarkL1HitParallel(b *testing.B) {
	keys := keyList("k:", warmKeys)
	peers := l1Peers(b, server(b), keys)
	for _, name := range l1Order {
		get := peers[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(warmKeys)
				for pb.Next() {
					get(keys[i&(warmKeys-1)])
					i++
				}
			})
		})
	}
}

// perOp reports Redis commands and GETs per operation over the benchmark.
type perOp struct {
	b          *testing.B
	rdb        *redis.Client
	cmds, gets int64
}

func startCount(b *testing.B, rdb *redis.Client) *perOp {
	p := &perOp{b: b, rdb: rdb}
	p.gets = getCalls(b, rdb)
	p.cmds = commands(b, rdb)
	return p
}

func (p *perOp) delta() (cmds, gets int64) {
	c := commands(p.b, p.rdb)
	g := getCalls(p.b, p.rdb)
	// The INFO calls in between: startCount's commandstats+stats, and
	// this commands() call counted by the stats of getCalls.
	return c - p.cmds - 1, g - p.gets
}

func (p *perOp) report(ops int) {
	cmds, gets := p.delta()
	if ops > 0 {
		p.b.ReportMetric(float64(cmds)/float64(ops), "rediscmds/op")
		p.b.ReportMetric(float64(gets)/float64(ops), "redisgets/op")
	}
}

// BenchmarkL2Hit is the latency of a read that misses the local tier and
// hits Redis. Each run gets a fresh instance with a tiny local tier and
// reads coldKeys distinct keys in turn, so every read misses locally (the
// rediscmds/op and redisgets/op metrics show it). Every peer decodes JSON.
func BenchmarkL2Hit(b *testing.B) {
	addr := server(b)
	ctx := context.Background()
	rdb := goredis(b, addr)
	keys := keyList("k:", coldKeys)
	ncw := nearcache(b, rdb, "nc", 0)
	populate(b, rdb, keys, ncw, keys)

	run := func(name string, mk func(b *testing.B) func(string) (Value, error)) {
		b.Run(name, func(b *testing.B) {
			get := mk(b)
			b.ReportAllocs()
			cnt := startCount(b, rdb)
			b.ResetTimer()
			cpu := processCPU(b)
			for i := 0; b.Loop(); i++ {
				v, err := get(keys[i&(coldKeys-1)])
				if err != nil {
					b.Fatal(err)
				}
				sink = v
			}
			cpu = processCPU(b) - cpu
			b.StopTimer()
			cnt.report(b.N)
			// CPU per read (this process, every goroutine): unlike wall
			// time, it does not count the waits for Redis and goroutine
			// wake-ups that dominate on an idle 2-core machine.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
	run("raw-go-redis", func(b *testing.B) func(string) (Value, error) {
		c := goredis(b, addr)
		return func(k string) (Value, error) { return rawGet(ctx, c, k, false) }
	})
	run("nearcache", func(b *testing.B) func(string) (Value, error) {
		c := nearcache(b, goredis(b, addr), "nc", tinyLocal)
		return func(k string) (Value, error) { return c.Get(ctx, k) }
	})
	run("go-redis-cache", func(b *testing.B) func(string) (Value, error) {
		c := goRedisCache(goredis(b, addr), tinyLocal)
		return func(k string) (Value, error) {
			var v Value
			return v, c.Get(ctx, k, &v)
		}
	})
	run("rueidis", func(b *testing.B) func(string) (Value, error) {
		c := rueidisClient(b, addr, tinyLocal*rueidisEntryBytes)
		return func(k string) (Value, error) { return rueidisGet(ctx, c, k, false) }
	})
}

// BenchmarkGetMany100 reads 100 keys at once, all missing locally and
// present in Redis (fresh instance, cycling through coldKeys as in
// BenchmarkL2Hit). go-redis/cache has no batch read (n/a).
func BenchmarkGetMany100(b *testing.B) {
	const n = 100
	const batches = coldKeys / n
	addr := server(b)
	ctx := context.Background()
	rdb := goredis(b, addr)
	keys := keyList("k:", coldKeys)
	ncw := nearcache(b, rdb, "nc", 0)
	populate(b, rdb, keys, ncw, keys)
	batch := func(i int) []string { lo := (i % batches) * n; return keys[lo : lo+n] }

	run := func(name string, mk func(b *testing.B) func([]string) int) {
		b.Run(name, func(b *testing.B) {
			get := mk(b)
			b.ReportAllocs()
			cnt := startCount(b, rdb)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if got := get(batch(i)); got != n {
					b.Fatalf("%d values, want %d", got, n)
				}
			}
			b.StopTimer()
			cnt.report(b.N)
		})
	}
	run("raw-go-redis", func(b *testing.B) func([]string) int {
		c := goredis(b, addr)
		return func(ks []string) int {
			vals, err := c.MGet(ctx, ks...).Result()
			if err != nil {
				b.Fatal(err)
			}
			for _, x := range vals {
				var v Value
				if jsonUnmarshal([]byte(x.(string)), &v) != nil {
					b.Fatal("decode")
				}
			}
			return len(vals)
		}
	})
	run("nearcache", func(b *testing.B) func([]string) int {
		c := nearcache(b, goredis(b, addr), "nc", tinyLocal)
		return func(ks []string) int {
			m, err := c.GetMany(ctx, ks)
			if err != nil {
				b.Fatal(err)
			}
			return len(m)
		}
	})
	run("rueidis", func(b *testing.B) func([]string) int {
		c := rueidisClient(b, addr, tinyLocal*rueidisEntryBytes)
		cmds := make([]rueidis.CacheableTTL, n)
		return func(ks []string) int {
			for i, k := range ks {
				cmds[i] = rueidis.CT(c.B().Get().Key(k).Cache(), time.Hour)
			}
			got := 0
			for _, r := range c.DoMultiCache(ctx, cmds...) {
				bs, err := r.AsBytes()
				if err != nil {
					b.Fatal(err)
				}
				var v Value
				if jsonUnmarshal(bs, &v) != nil {
					b.Fatal("decode")
				}
				got++
			}
			return got
		}
	})
}

// BenchmarkZipf replays Zipf-distributed reads over zipfKeys keys through
// two instances of each peer sharing one (initially empty) Redis, requests
// alternating between the instances, each instance with a local capacity
// of zipfLocal entries. A local miss reads Redis; a Redis miss calls the
// loader and writes the value back. Each b.Loop iteration replays
// zipfWarm requests, then measures zipfMeasured more: local hit ratio
// (from each peer's own count of reads answered locally), Redis commands
// and GETs per request (server-side counts; GETs include those run inside
// nearcache's write-back script), loader calls per request.
func BenchmarkZipf(b *testing.B) {
	const (
		zipfKeys     = 100_000
		zipfLocal    = 10_000
		zipfWarm     = 100_000
		zipfMeasured = 200_000
	)
	addr := server(b)
	ctx := context.Background()
	keys := keyList("z:", zipfKeys)
	type inst func(k string) Value
	peers := []struct {
		name string
		// mk returns the two instances; they count loader calls in loads
		// and reads answered locally in local (nearcache and go-redis/cache
		// from their own stats, through the returned func).
		mk func(b *testing.B, loads, local *atomic.Int64) ([2]inst, func() int64)
	}{
		{"raw-go-redis", func(b *testing.B, loads, local *atomic.Int64) ([2]inst, func() int64) {
			var out [2]inst
			for i := range out {
				c := goredis(b, addr)
				out[i] = func(k string) Value {
					v, err := c.Get(ctx, k).Bytes()
					if err == redis.Nil {
						loads.Add(1)
						val, _ := loadValue(k)
						js, _ := jsonMarshal(val)
						_ = c.Set(ctx, k, js, time.Hour).Err()
						return val
					}
					var val Value
					_ = jsonUnmarshal(v, &val)
					return val
				}
			}
			return out, local.Load
		}},
		{"nearcache", func(b *testing.B, loads, local *atomic.Int64) ([2]inst, func() int64) {
			var out [2]inst
			var cs [2]*tiered.Cache[Value]
			load := func(_ context.Context, k string) (Value, error) { loads.Add(1); return loadValue(k) }
			for i := range out {
				c := nearcache(b, goredis(b, addr), "zipf", zipfLocal)
				cs[i] = c
				out[i] = func(k string) Value { v, _ := c.GetOrLoad(ctx, k, load); return v }
			}
			return out, func() int64 { return int64(cs[0].Stats().L1.Hits + cs[1].Stats().L1.Hits) }
		}},
		{"go-redis-cache", func(b *testing.B, loads, local *atomic.Int64) ([2]inst, func() int64) {
			var out [2]inst
			var cs [2]*gocache.Cache
			var calls atomic.Int64
			for i := range out {
				c := goRedisCache(goredis(b, addr), zipfLocal)
				cs[i] = c
				out[i] = func(k string) Value {
					calls.Add(1)
					v, _ := goRedisOnce(ctx, c, k, func() (Value, error) { loads.Add(1); return loadValue(k) })
					return v
				}
			}
			return out, func() int64 {
				var redisReads uint64
				for _, c := range cs {
					st := c.Stats()
					redisReads += st.Hits + st.Misses
				}
				return calls.Load() - int64(redisReads)
			}
		}},
		{"rueidis", func(b *testing.B, loads, local *atomic.Int64) ([2]inst, func() int64) {
			var out [2]inst
			for i := range out {
				c := rueidisClient(b, addr, zipfLocal*rueidisEntryBytes)
				out[i] = func(k string) Value {
					r := c.DoCache(ctx, c.B().Get().Key(k).Cache(), time.Hour)
					if r.IsCacheHit() {
						local.Add(1)
					}
					bs, err := r.AsBytes()
					if rueidis.IsRedisNil(err) {
						loads.Add(1)
						v, _ := loadValue(k)
						js, _ := jsonMarshal(v)
						_ = c.Do(ctx, c.B().Set().Key(k).Value(rueidis.BinaryString(js)).Ex(time.Hour).Build()).Error()
						return v
					}
					var v Value
					_ = jsonUnmarshal(bs, &v)
					return v
				}
			}
			return out, local.Load
		}},
	}
	for _, s := range []float64{1.01, 1.2} {
		for _, p := range peers {
			b.Run("s="+strconv.FormatFloat(s, 'f', -1, 64)+"/"+p.name, func(b *testing.B) {
				rdb := goredis(b, addr)
				var hit, cmds, gets, loadsPer float64
				for b.Loop() {
					b.StopTimer()
					if err := rdb.FlushAll(ctx).Err(); err != nil {
						b.Fatal(err)
					}
					var loads, local atomic.Int64
					inst, localHits := p.mk(b, &loads, &local)
					z := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), s, 1, zipfKeys-1)
					b.StartTimer()
					for i := range zipfWarm {
						inst[i&1](keys[z.Uint64()])
					}
					cnt := startCount(b, rdb)
					l0, h0 := loads.Load(), localHits()
					for i := range zipfMeasured {
						sink = inst[i&1](keys[z.Uint64()])
					}
					c, g := cnt.delta()
					cmds = float64(c) / zipfMeasured
					gets = float64(g) / zipfMeasured
					loadsPer = float64(loads.Load()-l0) / zipfMeasured
					hit = float64(localHits()-h0) / zipfMeasured
				}
				b.ReportMetric(100*hit, "localhit%")
				b.ReportMetric(cmds, "rediscmds/req")
				b.ReportMetric(gets, "redisgets/req")
				b.ReportMetric(loadsPer, "loads/req")
			})
		}
	}
}

// BenchmarkStampede starts 1000 goroutines on one cold key (absent locally
// and in Redis) at once, per iteration, with a loader that takes 2 ms, and
// reports loader calls and Redis GETs per stampede.
func BenchmarkStampede(b *testing.B) {
	const readers = 1000
	addr := server(b)
	ctx := context.Background()
	rdb := goredis(b, addr)
	slowLoad := func(loads *atomic.Int64, k string) (Value, error) {
		loads.Add(1)
		time.Sleep(2 * time.Millisecond)
		return loadValue(k)
	}
	peers := []struct {
		name string
		mk   func(b *testing.B, loads *atomic.Int64) func(k string) error
	}{
		{"raw-go-redis", func(b *testing.B, loads *atomic.Int64) func(string) error {
			c := goredis(b, addr)
			return func(k string) error {
				_, err := c.Get(ctx, k).Bytes()
				if err == redis.Nil {
					v, _ := slowLoad(loads, k)
					js, _ := jsonMarshal(v)
					return c.Set(ctx, k, js, time.Hour).Err()
				}
				return err
			}
		}},
		{"nearcache", func(b *testing.B, loads *atomic.Int64) func(string) error {
			c := nearcache(b, goredis(b, addr), "st", 0)
			load := func(_ context.Context, k string) (Value, error) { return slowLoad(loads, k) }
			return func(k string) error { _, err := c.GetOrLoad(ctx, k, load); return err }
		}},
		{"go-redis-cache", func(b *testing.B, loads *atomic.Int64) func(string) error {
			c := goRedisCache(goredis(b, addr), 10_000)
			return func(k string) error {
				_, err := goRedisOnce(ctx, c, k, func() (Value, error) { return slowLoad(loads, k) })
				return err
			}
		}},
		{"rueidis", func(b *testing.B, loads *atomic.Int64) func(string) error {
			c := rueidisClient(b, addr, 0)
			return func(k string) error {
				_, err := c.DoCache(ctx, c.B().Get().Key(k).Cache(), time.Hour).AsBytes()
				if rueidis.IsRedisNil(err) {
					v, _ := slowLoad(loads, k)
					js, _ := jsonMarshal(v)
					return c.Do(ctx, c.B().Set().Key(k).Value(rueidis.BinaryString(js)).Ex(time.Hour).Build()).Error()
				}
				return err
			}
		}},
	}
	for _, p := range peers {
		b.Run(p.name, func(b *testing.B) {
			var loads atomic.Int64
			get := p.mk(b, &loads)
			cnt := startCount(b, rdb)
			run := strconv.FormatInt(time.Now().UnixNano(), 36) // keys never seen by an earlier run
			for i := 0; b.Loop(); i++ {
				key := "stampede:" + p.name + ":" + run + ":" + strconv.Itoa(i)
				var start, done sync.WaitGroup
				start.Add(1)
				done.Add(readers)
				for range readers {
					go func() {
						defer done.Done()
						start.Wait()
						if err := get(key); err != nil {
							b.Error(err)
						}
					}()
				}
				start.Done()
				done.Wait()
			}
			b.StopTimer()
			_, gets := cnt.delta()
			b.ReportMetric(float64(loads.Load())/float64(b.N), "loads/stampede")
			b.ReportMetric(float64(gets)/float64(b.N), "redisgets/stampede")
		})
	}
}

// BenchmarkInvalidation measures how long after a write on instance A
// returns instance B stops serving the old value it holds locally: B polls
// its local copy until it sees the new value. Each iteration is one round.
// nearcache: Set on A (Lua write + PUBLISH) → B's bus drops its L1 copy.
// rueidis: SET on A → the server's tracking invalidation push to B.
// go-redis/cache has no cross-instance invalidation: B serves the old value
// until its local TTL expires (n/a here).
func BenchmarkInvalidation(b *testing.B) {
	addr := server(b)
	ctx := context.Background()
	const pollLimit = time.Second
	measure := func(b *testing.B, prime func(key string, id int), write func(key string, id int), read func(key string) int) {
		var lat []time.Duration
		timeouts := 0
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			key := "inv:" + strconv.Itoa(i%64)
			prime(key, 2*i)
			b.StartTimer()
			write(key, 2*i+1)
			t0 := time.Now()
			for read(key) != 2*i+1 {
				runtime.Gosched() // leave the CPU to the subscriber when it needs it
				if time.Since(t0) > pollLimit {
					timeouts++
					break
				}
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
		b.ReportMetric(q(0.5), "p50-us")
		b.ReportMetric(q(0.99), "p99-us")
		b.ReportMetric(float64(timeouts), "timeouts")
	}
	b.Run("nearcache", func(b *testing.B) {
		a := nearcache(b, goredis(b, addr), "inv", 0)
		bb := nearcache(b, goredis(b, addr), "inv", 0)
		measure(b, func(key string, id int) {
			if err := a.Set(ctx, key, Value{ID: int64(id)}); err != nil {
				b.Fatal(err)
			}
			for range 1000 { // until B holds it in L1
				h := bb.Stats().L1.Hits
				if v, _ := bb.Get(ctx, key); v.ID == int64(id) && bb.Stats().L1.Hits > h {
					return
				}
				time.Sleep(100 * time.Microsecond)
			}
			b.Fatal("B never held the key in L1")
		}, func(key string, id int) {
			if err := a.Set(ctx, key, Value{ID: int64(id)}); err != nil {
				b.Fatal(err)
			}
		}, func(key string) int { v, _ := bb.Get(ctx, key); return int(v.ID) })
	})
	b.Run("rueidis", func(b *testing.B) {
		a := rueidisClient(b, addr, 0)
		bb := rueidisClient(b, addr, 0)
		set := func(key string, id int) {
			js, _ := jsonMarshal(Value{ID: int64(id)})
			if err := a.Do(ctx, a.B().Set().Key(key).Value(rueidis.BinaryString(js)).Build()).Error(); err != nil {
				b.Fatal(err)
			}
		}
		read := func(key string) (int, bool) {
			r := bb.DoCache(ctx, bb.B().Get().Key(key).Cache(), time.Hour)
			bs, _ := r.AsBytes()
			var v Value
			_ = jsonUnmarshal(bs, &v)
			return int(v.ID), r.IsCacheHit()
		}
		measure(b, func(key string, id int) {
			set(key, id)
			for range 1000 {
				if v, hit := read(key); v == id && hit {
					return
				}
				time.Sleep(100 * time.Microsecond)
			}
			b.Fatal("B never held the key in its client-side cache")
		}, set, func(key string) int { v, _ := read(key); return v })
	})
}
