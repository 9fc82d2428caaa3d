package tiered

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/benchvalue"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/l1"
)

// Benchmarks of the read path against a real redis-server, each with its raw
// baseline in the same file and the same run, so the ratios compare like
// with like on the same (noisy) machine:
//
//	go test -run '^$' -bench . -benchmem -count 6 -cpu 1,2 ./tiered/
//
// Each pair runs the raw baseline first and then nearcache, and the second
// reports "x-raw": its ns/op divided by the baseline's, measured seconds
// apart. Take the median over -count runs.
//
// The value is benchValue, a struct whose JSON form is about 200 bytes,
// decoded with encoding/json on both sides.
//
// # How the L2 benchmarks avoid L1
//
// An L2 hit must miss L1 every time, through the path a real miss takes (no
// test hook, no invalidation cost in the loop). The Cache gets a tiny L1
// (benchTinyL1 entries) and each iteration reads the next of benchL2Keys
// distinct keys, cycling: a key comes back only after benchL2Keys-1 others,
// by which time the few entries L1 holds are almost surely other keys. Every
// iteration therefore pays the whole miss path: L1 lookup, flight, fill
// ticket, GET, envelope and JSON decode, guarded L1 fill (a ristretto Set
// that the admission policy mostly rejects). The benchmark reports
// "l1hit%", the share of lookups L1 still answered; it stays well under 1%.
// The raw baseline GETs the same number of distinct keys, cycling, with the
// same client.

type benchValue = benchvalue.Value

func newBenchValue(i int) benchValue { return benchvalue.New(i) }

const (
	benchL1Keys = 1024    // warm keys for L1 hits; power of two
	benchL2Keys = 1 << 16 // distinct keys the L2 benchmarks cycle through
	benchTinyL1 = 128     // L1 entries of the cache the L2 benchmarks use
	benchBatch  = 100     // keys per GetMany
)

var benchSink benchValue

func benchKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	return keys
}

func benchClient(b *testing.B) *redis.Client {
	srv := redistest.StartServer(b)
	return newClient(b, srv.Addr())
}

// ratio records a baseline's ns/op per GOMAXPROCS (go test -cpu runs every
// value of a sub-benchmark before the next sub-benchmark) and reports a
// later benchmark's ratio to it as "x-raw".
type ratio struct{ base map[int]float64 }

func (r *ratio) baseline(b *testing.B) {
	if r.base == nil {
		r.base = map[int]float64{}
	}
	r.base[runtime.GOMAXPROCS(0)] = nsPerOp(b)
}

func (r *ratio) report(b *testing.B) { r.reportAs(b, "x-raw") }

func (r *ratio) reportAs(b *testing.B, unit string) {
	if base := r.base[runtime.GOMAXPROCS(0)]; base > 0 {
		b.ReportMetric(nsPerOp(b)/base, unit)
	}
}

func nsPerOp(b *testing.B) float64 {
	if b.N == 0 {
		return 0
	}
	return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
}

// paired runs the ops in turn, one call each per iteration, timing each, and
// reports each op's ns/op as "<name>-ns" and ops[i]/ops[0] as "x-<name>".
// Interleaving makes the ratio robust to the load of a shared machine, which
// shifts separately run benchmarks by tens of percent.
func paired(b *testing.B, names []string, ops ...func(i int)) {
	tot := make([]time.Duration, len(ops))
	for i := 0; b.Loop(); i++ {
		for j, op := range ops {
			t := time.Now()
			op(i)
			tot[j] += time.Since(t)
		}
	}
	for j := range ops {
		b.ReportMetric(float64(tot[j].Nanoseconds())/float64(b.N), names[j]+"-ns")
		if j > 0 && tot[0] > 0 {
			b.ReportMetric(float64(tot[j])/float64(tot[0]), "x-"+names[j])
		}
	}
}

// pairedCPU is paired for ops that take tens of microseconds or more, with
// the cost of each measured three ways: wall time ("<name>-ns/op"), this
// process's CPU time from getrusage, every goroutine included
// ("<name>-cpu-ns/op"), and heap allocations ("<name>-allocs/op",
// "<name>-B/op"). The ops run in turn in blocks of block calls each, so
// that work an op leaves to other goroutines (ristretto's policy goroutine,
// L1's fill hand-over on the next clock tick, the garbage collector) is
// mostly charged to the op that caused it and not to the next one; the
// blocks still alternate many times a second, which keeps the ratios
// robust to the load of a shared machine. Allocations are counted after
// the timed loop, reps calls of each op between two runtime.ReadMemStats.
// ratios lists the ratio metrics to report: for each, the name of the
// numerator op, of the denominator op, and the metric's unit.
func pairedCPU(b *testing.B, block, reps int, names []string, ratios [][3]string, ops ...func(i int)) {
	b.Helper()
	wall := make([]time.Duration, len(ops))
	cpu := make([]time.Duration, len(ops))
	calls := 0
	i := 0
	for b.Loop() {
		for j, op := range ops {
			t, c := time.Now(), processCPU(b)
			for k := range block {
				op(i + k)
			}
			cpu[j] += processCPU(b) - c
			wall[j] += time.Since(t)
		}
		i += block
		calls += block
	}
	allocs := make([]float64, len(ops))
	bytes := make([]float64, len(ops))
	var m0, m1 runtime.MemStats
	for j, op := range ops {
		runtime.ReadMemStats(&m0)
		for k := range reps {
			op(i + k)
		}
		runtime.ReadMemStats(&m1)
		i += reps
		allocs[j] = float64(m1.Mallocs-m0.Mallocs) / float64(reps)
		bytes[j] = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(reps)
	}
	idx := map[string]int{}
	for j, name := range names {
		idx[name] = j
		b.ReportMetric(float64(wall[j].Nanoseconds())/float64(calls), name+"-ns/op")
		b.ReportMetric(float64(cpu[j].Nanoseconds())/float64(calls), name+"-cpu-ns/op")
		b.ReportMetric(allocs[j], name+"-allocs/op")
		b.ReportMetric(bytes[j], name+"-B/op")
	}
	for _, r := range ratios {
		num, den, unit := idx[r[0]], idx[r[1]], r[2]
		src := wall
		if strings.HasSuffix(unit, "-cpu") {
			src = cpu
		}
		if src[den] > 0 {
			b.ReportMetric(float64(src[num])/float64(src[den]), unit)
		}
	}
}

// warmL1 loads keys into c and waits until each is an L1 hit.
func warmL1(b *testing.B, c *Cache[benchValue], keys []string, opts ...Option) {
	b.Helper()
	ctx := context.Background()
	load := func(_ context.Context, k string) (benchValue, error) {
		i, _ := strconv.Atoi(k[len("u:"):])
		return newBenchValue(i), nil
	}
	for attempt := 0; attempt < 20; attempt++ {
		before := c.Stats().L1.Hits
		for _, k := range keys {
			if _, err := c.GetOrLoad(ctx, k, load, opts...); err != nil {
				b.Fatal(err)
			}
		}
		if c.Stats().L1.Hits-before == uint64(len(keys)) {
			return
		}
		c.local.(*l1.Cache[item[benchValue]]).Wait()
	}
	b.Fatal("L1 never held every warm key")
}

func rawRistretto(b *testing.B, keys []string, ttl time.Duration) *ristretto.Cache[string, benchValue] {
	b.Helper()
	rc, err := ristretto.NewCache(&ristretto.Config[string, benchValue]{
		NumCounters:        10 * DefaultL1MaxEntries,
		MaxCost:            DefaultL1MaxEntries,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rc.Close)
	for i, k := range keys {
		rc.SetWithTTL(k, newBenchValue(i), 1, ttl)
	}
	rc.Wait()
	for _, k := range keys {
		if _, ok := rc.Get(k); !ok {
			b.Fatalf("raw ristretto did not admit %q", k)
		}
	}
	return rc
}

// hitLoop reads keys from c's L1 with GetOrLoad in turn for b.N loops.
func hitLoop(b *testing.B, c *Cache[benchValue], keys []string, load Loader[benchValue]) {
	b.Helper()
	ctx := context.Background()
	b.ReportAllocs()
	var s benchValue
	for i := 0; b.Loop(); i++ {
		v, _ := c.GetOrLoad(ctx, keys[i&(benchL1Keys-1)], load)
		s.ID += v.ID
	}
	benchSink = s
}

// BenchmarkL1Hit compares GetOrLoad on a warm key with a raw ristretto Get
// of an entry that has a TTL (as every L1 entry does; ristretto then reads
// the wall clock) and of one without (the cheapest raw Get: "x-raw-nottl").
// Targets: ≤ 1.25× the raw Get without TTL, 0 allocs/op. Run with -cpu 1,2
// for the parallel pair, and -count 5 or more: each count runs the three
// serial sub-benchmarks back to back, so their medians compare.
func BenchmarkL1Hit(b *testing.B) {
	keys := benchKeys("u:", benchL1Keys)
	rdb := benchClient(b)
	ctx := context.Background()
	load := func(context.Context, string) (benchValue, error) {
		b.Fatal("loader called on a warm key")
		return benchValue{}, nil
	}
	var serial, serialNoTTL, parallel ratio

	for _, raw := range []struct {
		name string
		ttl  time.Duration
		r    *ratio
	}{{"serial/raw-ristretto-nottl", 0, &serialNoTTL}, {"serial/raw-ristretto", time.Hour, &serial}} {
		b.Run(raw.name, func(b *testing.B) {
			rc := rawRistretto(b, keys, raw.ttl)
			b.ReportAllocs()
			var s benchValue
			for i := 0; b.Loop(); i++ {
				v, _ := rc.Get(keys[i&(benchL1Keys-1)])
				s.ID += v.ID
			}
			benchSink = s
			raw.r.baseline(b)
		})
	}
	b.Run("serial/nearcache", func(b *testing.B) {
		c := newCache(b, Config[benchValue]{Redis: rdb, Namespace: "l1bench", MaxL1TTL: time.Hour, TTL: time.Hour})
		warmL1(b, c, keys)
		hitLoop(b, c, keys, load)
		serial.report(b)
		serialNoTTL.reportAs(b, "x-raw-nottl")
	})
	// Refresh-ahead on, entries not yet due: the hit also checks the
	// entry's refresh time.
	b.Run("serial/nearcache-refresh-ahead", func(b *testing.B) {
		c := newCache(b, Config[benchValue]{Redis: rdb, Namespace: "l1benchra", MaxL1TTL: time.Hour, TTL: time.Hour, RefreshAhead: 0.9})
		warmL1(b, c, keys)
		hitLoop(b, c, keys, load)
		serialNoTTL.reportAs(b, "x-raw-nottl")
	})
	// Tagged entries (WithTags, two tags each): the hit also checks that no
	// tag moved on since the entry was last checked (one atomic load while
	// no tag changes). "tagged-after-invalidation": another tag was
	// invalidated once after the warm-up, so each entry's first hit looks
	// its tags up again, then the fast check holds again.
	for _, tc := range []struct {
		name       string
		invalidate bool
	}{{"serial/nearcache-tagged", false}, {"serial/nearcache-tagged-after-invalidation", true}} {
		b.Run(tc.name, func(b *testing.B) {
			c := newCache(b, Config[benchValue]{Redis: rdb, Namespace: "l1benchtag", MaxL1TTL: time.Hour, TTL: time.Hour})
			warmL1(b, c, keys, WithTags("tenant:1", "catalog"))
			if tc.invalidate {
				if err := c.InvalidateTag(ctx, "other"); err != nil {
					b.Fatal(err)
				}
			}
			hitLoop(b, c, keys, load)
			serialNoTTL.reportAs(b, "x-raw-nottl")
		})
	}
	b.Run("parallel/raw-ristretto", func(b *testing.B) {
		rc := rawRistretto(b, keys, time.Hour)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(benchL1Keys)
			for pb.Next() {
				rc.Get(keys[i&(benchL1Keys-1)])
				i++
			}
		})
		parallel.baseline(b)
	})
	b.Run("parallel/nearcache", func(b *testing.B) {
		c := newCache(b, Config[benchValue]{Redis: rdb, Namespace: "l1bench-par", MaxL1TTL: time.Hour, TTL: time.Hour})
		warmL1(b, c, keys)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(benchL1Keys)
			for pb.Next() {
				c.GetOrLoad(ctx, keys[i&(benchL1Keys-1)], load)
				i++
			}
		})
		parallel.report(b)
	})
}

// l2Fixture is a redis-server holding benchL2Keys values three times: as
// nearcache envelopes of benchValue (JSON) under namespace "l2bench", as
// nearcache envelopes of the same JSON bytes as a []byte value (BytesCodec)
// under "l2bytes", and as plain JSON under "raw:" for the baselines.
type l2Fixture struct {
	rdb  *redis.Client
	keys []string // nearcache keys (without the namespace)
	raw  []string // the raw baseline's keys
}

func newL2Fixture(b *testing.B) *l2Fixture {
	b.Helper()
	f := &l2Fixture{rdb: benchClient(b), keys: benchKeys("k:", benchL2Keys), raw: benchKeys("raw:", benchL2Keys)}
	ctx := context.Background()
	// The writers' RedisTimeout is generous: a SetMany of a chunk takes
	// well over the default 250 ms on a busy machine, and the fixture must
	// not fail the benchmark for it.
	jw := newCache(b, Config[benchValue]{Redis: f.rdb, Namespace: "l2bench", TTL: time.Hour, RedisTimeout: 10 * time.Second})
	bw := newCache(b, Config[[]byte]{Redis: f.rdb, Namespace: "l2bytes", TTL: time.Hour, RedisTimeout: 10 * time.Second})
	const chunk = 1024
	for lo := 0; lo < benchL2Keys; lo += chunk {
		items := make(map[string]benchValue, chunk)
		raws := make(map[string][]byte, chunk)
		pipe := f.rdb.Pipeline()
		for i := lo; i < lo+chunk; i++ {
			v := newBenchValue(i)
			js, err := json.Marshal(v)
			if err != nil {
				b.Fatal(err)
			}
			items[f.keys[i]], raws[f.keys[i]] = v, js
			pipe.Set(ctx, f.raw[i], js, time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		if err := jw.SetMany(ctx, items); err != nil {
			b.Fatal(err)
		}
		if err := bw.SetMany(ctx, raws); err != nil {
			b.Fatal(err)
		}
	}
	return f
}

// readers return caches over the fixture's values with a tiny L1 (see the
// file comment).
func (f *l2Fixture) jsonCache(b *testing.B) *Cache[benchValue] {
	return newCache(b, Config[benchValue]{Redis: f.rdb, Namespace: "l2bench", TTL: time.Hour, L1MaxEntries: benchTinyL1})
}

func (f *l2Fixture) bytesCache(b *testing.B) *Cache[[]byte] {
	return newCache(b, Config[[]byte]{Redis: f.rdb, Namespace: "l2bytes", TTL: time.Hour, L1MaxEntries: benchTinyL1})
}

// reportCPUPerOp reports cpu, the process CPU time (every goroutine, from
// getrusage) that b's loop took, per iteration as "cpu-ns/op". Unlike ns/op
// it leaves out the waits for Redis and for goroutine wake-ups, which
// dominate the wall time of a loopback read on a small machine, so it shows
// what the read path itself costs.
func reportCPUPerOp(b *testing.B, cpu time.Duration) {
	if b.N > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func reportL1HitShare(b *testing.B, st l1.Stats) {
	if n := st.Hits + st.Misses; n > 0 {
		b.ReportMetric(100*float64(st.Hits)/float64(n), "l1hit%")
	}
}

// rawFillCache is the raw ristretto cache of the "+ristretto" floors: sized
// like the L2 benchmarks' tiny L1, so that its Sets pay what L1 fills pay
// (admission and eviction on ristretto's policy goroutine).
func rawFillCache[V any](b *testing.B) *ristretto.Cache[string, V] {
	b.Helper()
	rc, err := ristretto.NewCache(&ristretto.Config[string, V]{
		NumCounters:        10 * benchTinyL1,
		MaxCost:            benchTinyL1,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rc.Close)
	return rc
}

// rawGet is the baseline read: one go-redis GET of key plus, with decode,
// json.Unmarshal into a benchValue.
func (f *l2Fixture) rawGet(b *testing.B, ctx context.Context, key string, decode bool) {
	bs, err := f.rdb.Get(ctx, key).Bytes()
	if err != nil {
		b.Fatal(err)
	}
	if !decode {
		return
	}
	var v benchValue
	if err := json.Unmarshal(bs, &v); err != nil {
		b.Fatal(err)
	}
	benchSink = v
}

func (f *l2Fixture) rawMGet(b *testing.B, ctx context.Context, keys []string, decode bool) {
	vals, err := f.rdb.MGet(ctx, keys...).Result()
	if err != nil || len(vals) != len(keys) {
		b.Fatal(err)
	}
	if !decode {
		return
	}
	for _, x := range vals {
		var v benchValue
		if err := json.Unmarshal([]byte(x.(string)), &v); err != nil {
			b.Fatal(err)
		}
		benchSink = v
	}
}

// BenchmarkL2Hit compares Get on a key that misses L1 and is found in Redis
// with a raw go-redis GET of the same JSON plus json.Unmarshal, on the same
// client. Target: ≤ 1.05×. The two unpaired sub-benchmarks also report
// "cpu-ns/op", the process CPU per read (getrusage); "paired-cpu"
// alternates blocks of the two reads (pairedCPU) and reports the ratio of
// their CPU per read as x-nearcache-cpu, the CPU figure to quote on a loaded
// machine (run it with -benchtime 5s or more). The "paired" sub-benchmark
// alternates the two reads in one loop; its x-nearcache metric is the ratio
// to quote. "paired-floor" pairs the raw read with the simplest
// ristretto-backed near cache on the same reads: a raw ristretto Get (a
// miss), the raw read, and a raw ristretto Set into a cache as small as the
// benchmark's L1 (each Set wakes ristretto's policy goroutine, which admits
// and evicts; its Get wakes it every 64 calls); "paired-cpu-floor" is its
// CPU counterpart.
func BenchmarkL2Hit(b *testing.B) {
	f := newL2Fixture(b)
	ctx := context.Background()
	b.Run("raw-go-redis-GET+json", func(b *testing.B) {
		b.ReportAllocs()
		cpu := processCPU(b)
		for i := 0; b.Loop(); i++ {
			f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true)
		}
		reportCPUPerOp(b, processCPU(b)-cpu)
	})
	b.Run("nearcache-Get", func(b *testing.B) {
		c := f.jsonCache(b)
		b.ReportAllocs()
		cpu := processCPU(b)
		for i := 0; b.Loop(); i++ {
			v, err := c.Get(ctx, f.keys[i&(benchL2Keys-1)])
			if err != nil {
				b.Fatal(err)
			}
			benchSink = v
		}
		reportCPUPerOp(b, processCPU(b)-cpu)
		reportL1HitShare(b, c.Stats().L1)
	})
	get := func(c *Cache[benchValue]) func(i int) {
		return func(i int) {
			v, err := c.Get(ctx, f.keys[i&(benchL2Keys-1)])
			if err != nil {
				b.Fatal(err)
			}
			benchSink = v
		}
	}
	b.Run("paired", func(b *testing.B) {
		c := f.jsonCache(b)
		paired(b, []string{"raw", "nearcache"},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true) },
			get(c))
		reportL1HitShare(b, c.Stats().L1)
	})
	b.Run("paired-cpu", func(b *testing.B) {
		c := f.jsonCache(b)
		pairedCPU(b, 2000, 2000, []string{"raw", "nearcache"},
			[][3]string{{"nearcache", "raw", "x-nearcache"}, {"nearcache", "raw", "x-nearcache-cpu"}},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true) },
			get(c))
		reportL1HitShare(b, c.Stats().L1)
	})
	nearRistretto := func(b *testing.B, rc *ristretto.Cache[string, benchValue]) func(i int) {
		return func(i int) {
			k := f.raw[(i+benchL2Keys/2)&(benchL2Keys-1)]
			if _, ok := rc.Get(k); ok {
				return
			}
			f.rawGet(b, ctx, k, true)
			rc.SetWithTTL(k, benchSink, 1, time.Hour)
		}
	}
	b.Run("paired-floor", func(b *testing.B) {
		paired(b, []string{"raw", "raw-ristretto-near-cache"},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true) },
			nearRistretto(b, rawFillCache[benchValue](b)))
	})
	b.Run("paired-cpu-floor", func(b *testing.B) {
		pairedCPU(b, 2000, 2000, []string{"raw", "raw-ristretto-near-cache"},
			[][3]string{{"raw-ristretto-near-cache", "raw", "x-floor-cpu"}},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true) },
			nearRistretto(b, rawFillCache[benchValue](b)))
	})
}

// BenchmarkGetMany100 compares GetMany of 100 keys that all miss L1 and are
// found in Redis (one MGET) with one raw GET of a single value. Target:
// ≤ 1.5× one GET. Two value types:
//
//   - bytes: []byte values (BytesCodec), against one GET: the cost of the
//     cache's batch machinery, with nothing to decode; "bytes/paired" also
//     times a raw MGET of the 100 keys, and "bytes/paired-floor" times,
//     beside the same two, the simplest ristretto-backed near cache: 100
//     raw ristretto Gets, one MGET of the misses, 100 raw ristretto Sets
//     into a cache as small as the benchmark's L1;
//   - json: benchValue, against one GET+json.Unmarshal, and for scale
//     against a raw MGET of 100 keys plus 100 json.Unmarshal calls (the
//     decoding alone is several times one GET, so the 1.5× target can only
//     be met without it).
//
// "bytes/paired-cpu" and "json/paired-cpu" (see pairedCPU) measure, in one
// loop, a raw MGET of 100 keys plus their 100 decodes (a copy for bytes,
// json.Unmarshal for json), the simplest ristretto-backed near cache doing
// the same decodes (100 raw ristretto Gets, one MGET of the misses, the
// decodes, 100 raw ristretto SetWithTTL into a cache as small as the
// benchmark's L1) and GetMany, each in wall time, CPU time and allocations.
// Their ratios: "x-floor" and "x-floor-cpu", GetMany over the simplest near
// cache (targets ≤ 1.15 for the wall time); "x-raw-cpu", GetMany's CPU over
// the raw MGET's (target ≤ 1.2); "x-near-raw-cpu", the simplest near
// cache's CPU over the raw MGET's, the floor of x-raw-cpu for any
// ristretto-backed near cache. A fourth op, the simplest near cache that
// also returns its values in a map as GetMany must, gives "x-floor-map" and
// "x-floor-map-cpu".
func BenchmarkGetMany100(b *testing.B) {
	f := newL2Fixture(b)
	ctx := context.Background()
	const batches = benchL2Keys / benchBatch
	batch := func(keys []string, i int) []string {
		lo := (i % batches) * benchBatch
		return keys[lo : lo+benchBatch]
	}
	b.Run("bytes/raw-go-redis-GET", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], false)
		}
	})
	b.Run("bytes/raw-go-redis-MGET100", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			f.rawMGet(b, ctx, batch(f.raw, i), false)
		}
	})
	b.Run("bytes/nearcache-GetMany100", func(b *testing.B) {
		c := f.bytesCache(b)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if m, err := c.GetMany(ctx, batch(f.keys, i)); err != nil || len(m) != benchBatch {
				b.Fatalf("GetMany: %d values, err %v", len(m), err)
			}
		}
		reportL1HitShare(b, c.Stats().L1)
	})
	getMany := func(c *Cache[[]byte]) func(i int) {
		return func(i int) {
			if m, err := c.GetMany(ctx, batch(f.keys, i)); err != nil || len(m) != benchBatch {
				b.Fatalf("GetMany: %d values, err %v", len(m), err)
			}
		}
	}
	b.Run("bytes/paired", func(b *testing.B) {
		c := f.bytesCache(b)
		paired(b, []string{"raw-GET", "raw-MGET100", "nearcache"},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], false) },
			func(i int) { f.rawMGet(b, ctx, batch(f.raw, i), false) },
			getMany(c))
		reportL1HitShare(b, c.Stats().L1)
	})
	b.Run("bytes/paired-floor", func(b *testing.B) {
		rc := rawFillCache[[]byte](b)
		paired(b, []string{"raw-GET", "raw-MGET100", "raw-ristretto-near-cache"},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], false) },
			func(i int) { f.rawMGet(b, ctx, batch(f.raw, i), false) },
			func(i int) {
				keys := batch(f.raw, i+batches/2)
				miss := make([]string, 0, len(keys))
				for _, k := range keys {
					if _, ok := rc.Get(k); !ok {
						miss = append(miss, k)
					}
				}
				vals, err := f.rdb.MGet(ctx, miss...).Result()
				if err != nil {
					b.Fatal(err)
				}
				for j, x := range vals {
					rc.SetWithTTL(miss[j], []byte(x.(string)), 1, time.Hour)
				}
			})
	})
	b.Run("bytes/paired-cpu", func(b *testing.B) {
		c := f.bytesCache(b)
		pairedCPU(b, getManyBlock, getManyAllocReps, getManyCPUNames, getManyCPURatios,
			getManyCPUOps(b, f, c, batch, func(s string) []byte { return []byte(s) })...)
		reportL1HitShare(b, c.Stats().L1)
	})
	b.Run("json/raw-go-redis-GET+json", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true)
		}
	})
	b.Run("json/raw-go-redis-MGET100+json", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			f.rawMGet(b, ctx, batch(f.raw, i), true)
		}
	})
	b.Run("json/nearcache-GetMany100", func(b *testing.B) {
		c := f.jsonCache(b)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if m, err := c.GetMany(ctx, batch(f.keys, i)); err != nil || len(m) != benchBatch {
				b.Fatalf("GetMany: %d values, err %v", len(m), err)
			}
		}
		reportL1HitShare(b, c.Stats().L1)
	})
	b.Run("json/paired", func(b *testing.B) {
		c := f.jsonCache(b)
		paired(b, []string{"raw-GET", "raw-MGET100", "nearcache"},
			func(i int) { f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true) },
			func(i int) { f.rawMGet(b, ctx, batch(f.raw, i), true) },
			func(i int) {
				if m, err := c.GetMany(ctx, batch(f.keys, i)); err != nil || len(m) != benchBatch {
					b.Fatalf("GetMany: %d values, err %v", len(m), err)
				}
			})
		reportL1HitShare(b, c.Stats().L1)
	})
	b.Run("json/paired-cpu", func(b *testing.B) {
		c := f.jsonCache(b)
		pairedCPU(b, getManyBlock, getManyAllocReps, getManyCPUNames, getManyCPURatios,
			getManyCPUOps(b, f, c, batch, func(s string) benchValue {
				var v benchValue
				if err := json.Unmarshal([]byte(s), &v); err != nil {
					b.Fatal(err)
				}
				return v
			})...)
		reportL1HitShare(b, c.Stats().L1)
	})
}

// getManyBlock is the number of batches each op of a paired-cpu run runs
// in a row (several milliseconds), getManyAllocReps the batches each op
// runs to count its allocations.
const (
	getManyBlock     = 16
	getManyAllocReps = 64
)

var (
	getManyCPUNames  = []string{"raw-MGET100", "raw-ristretto-near-cache", "raw-ristretto-near-cache+map", "nearcache", "simplest-correct-near-cache"}
	getManyCPURatios = [][3]string{
		{"nearcache", "raw-ristretto-near-cache", "x-floor"},
		{"nearcache", "raw-ristretto-near-cache", "x-floor-cpu"},
		{"nearcache", "simplest-correct-near-cache", "x-correct"},
		{"nearcache", "simplest-correct-near-cache", "x-correct-cpu"},
		{"simplest-correct-near-cache", "raw-ristretto-near-cache", "x-correct-floor-cpu"},
		{"nearcache", "raw-ristretto-near-cache+map", "x-floor-map"},
		{"nearcache", "raw-ristretto-near-cache+map", "x-floor-map-cpu"},
		{"nearcache", "raw-MGET100", "x-raw-cpu"},
		{"raw-ristretto-near-cache", "raw-MGET100", "x-near-raw-cpu"},
	}
)

// getManyCPUOps returns the ops of a paired-cpu run over values decoded by
// decode (see BenchmarkGetMany100), in the order of getManyCPUNames.
// "raw-ristretto-near-cache+map" is the simplest near cache returning its
// values the way GetMany's signature asks, in a new map per call;
// "simplest-correct-near-cache" adds, as plainly as possible, the two
// promises the raw one breaks: shared reads of a missing key and fills
// refused after an invalidation (see simplestCorrect).
func getManyCPUOps[V any](b *testing.B, f *l2Fixture, c *Cache[V], batch func([]string, int) []string, decode func(string) V) []func(int) {
	ctx := context.Background()
	const batches = benchL2Keys / benchBatch
	sink := new(V)               // keeps the decodes from being optimised away
	mapSink := new(map[string]V) // and the maps
	near := func(offset int, withMap bool) func(i int) {
		rc := rawFillCache[V](b)
		return func(i int) {
			keys := batch(f.raw, i+offset)
			var out map[string]V
			if withMap {
				out = make(map[string]V, len(keys))
				*mapSink = out
			}
			miss := make([]string, 0, len(keys))
			for _, k := range keys {
				if v, ok := rc.Get(k); ok {
					*sink = v
					if withMap {
						out[k] = v
					}
				} else {
					miss = append(miss, k)
				}
			}
			if len(miss) == 0 {
				return
			}
			vals, err := f.rdb.MGet(ctx, miss...).Result()
			if err != nil || len(vals) != len(miss) {
				b.Fatalf("MGET: %d values, err %v", len(vals), err)
			}
			for j, x := range vals {
				v := decode(x.(string))
				rc.SetWithTTL(miss[j], v, 1, time.Hour)
				*sink = v
				if withMap {
					out[miss[j]] = v
				}
			}
		}
	}
	return []func(int){
		func(i int) {
			vals, err := f.rdb.MGet(ctx, batch(f.raw, i)...).Result()
			if err != nil || len(vals) != benchBatch {
				b.Fatalf("MGET: %d values, err %v", len(vals), err)
			}
			for _, x := range vals {
				*sink = decode(x.(string))
			}
		},
		near(batches/3, false),
		near(2*batches/3, true),
		func(i int) {
			if m, err := c.GetMany(ctx, batch(f.keys, i)); err != nil || len(m) != benchBatch {
				b.Fatalf("GetMany: %d values, err %v", len(m), err)
			}
		},
		simplestCorrect(b, f, batch, decode, batches/6),
	}
}

// simplestCorrect is the floor of a batch read that keeps the two promises
// the raw ristretto near cache breaks, written as plainly as they allow:
// concurrent misses of a key share one read (a mutex-guarded table of
// flights, one per missing key, each with its channel and result), and a
// fill raced by an invalidation is refused (a generation counter read before
// the Redis read, compared before each fill; an invalidation would bump
// it). It returns the batch as a map, as GetMany does. Nothing invalidates
// here, so every fill is kept, as in nearcache's loop.
func simplestCorrect[V any](b *testing.B, f *l2Fixture, batch func([]string, int) []string, decode func(string) V, offset int) func(int) {
	type flight struct {
		done chan struct{}
		v    V
	}
	rc := rawFillCache[V](b)
	var (
		mu      sync.Mutex
		flights = map[string]*flight{}
		gen     atomic.Uint64
	)
	ctx := context.Background()
	return func(i int) {
		keys := batch(f.raw, i+offset)
		out := make(map[string]V, len(keys))
		var miss []string
		for _, k := range keys {
			if v, ok := rc.Get(k); ok {
				out[k] = v
			} else {
				miss = append(miss, k)
			}
		}
		if len(miss) == 0 {
			return
		}
		var own []string
		var ownF, joined []*flight
		var joinedKeys []string
		mu.Lock()
		for _, k := range miss {
			if fl := flights[k]; fl != nil {
				joined, joinedKeys = append(joined, fl), append(joinedKeys, k)
				continue
			}
			fl := &flight{done: make(chan struct{})}
			flights[k] = fl
			own, ownF = append(own, k), append(ownF, fl)
		}
		mu.Unlock()
		ticket := gen.Load()
		vals, err := f.rdb.MGet(ctx, own...).Result()
		if err != nil || len(vals) != len(own) {
			b.Fatalf("MGET: %d values, err %v", len(vals), err)
		}
		for j, x := range vals {
			v := decode(x.(string))
			ownF[j].v = v
			out[own[j]] = v
			if gen.Load() == ticket {
				rc.SetWithTTL(own[j], v, 1, time.Hour)
			}
		}
		mu.Lock()
		for j, k := range own {
			delete(flights, k)
			close(ownF[j].done)
		}
		mu.Unlock()
		for j, fl := range joined {
			<-fl.done
			out[joinedKeys[j]] = fl.v
		}
	}
}

// BenchmarkWakeCost isolates a cost of this kind of machine that the L2
// benchmarks run into: waking an idle goroutine from the request path, even
// once every 64 requests, slows a loop of loopback GETs far more than the
// wake's CPU cost. Each sub-benchmark runs alone (not paired), so the effect
// is not shared with the baseline:
//
//   - raw: GET + json.Unmarshal;
//   - chan-send-every-64: the same plus, every 64th iteration, a send to a
//     goroutine that is waiting on a channel (what ristretto's Get does with
//     its access buffer: BufferItems keys per send to its policy goroutine);
//   - ristretto-Get-miss: the same plus one raw ristretto Get of an absent
//     key per iteration (BufferItems 64, as L1's default);
//   - nearcache-Get: an L2 hit through the Cache.
func BenchmarkWakeCost(b *testing.B) {
	f := newL2Fixture(b)
	ctx := context.Background()
	b.Run("raw", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true)
		}
	})
	b.Run("chan-send-every-64", func(b *testing.B) {
		ch, done := make(chan []uint64, 3), make(chan struct{})
		go func() {
			for {
				select {
				case <-ch:
				case <-done:
					return
				}
			}
		}()
		defer close(done)
		buf := make([]uint64, 0, 64)
		for i := 0; b.Loop(); i++ {
			if buf = append(buf, uint64(i)); len(buf) == cap(buf) {
				select {
				case ch <- buf:
				default:
				}
				buf = make([]uint64, 0, 64)
			}
			f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true)
		}
	})
	b.Run("ristretto-Get-miss", func(b *testing.B) {
		rc := rawFillCache[benchValue](b)
		for i := 0; b.Loop(); i++ {
			rc.Get(f.raw[i&(benchL2Keys-1)])
			f.rawGet(b, ctx, f.raw[i&(benchL2Keys-1)], true)
		}
	})
	b.Run("nearcache-Get", func(b *testing.B) {
		c := f.jsonCache(b)
		for i := 0; b.Loop(); i++ {
			if _, err := c.Get(ctx, f.keys[i&(benchL2Keys-1)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
