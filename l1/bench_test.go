package l1

import (
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// The raw baselines below use ristretto the way a plain user would: string
// keys, cost 1 per entry, internal cost ignored, a TTL on every entry (L1
// entries always carry one in tiered). Ratios come from one run of this file.

const benchKeys = 1024

func benchKeyList(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	return keys
}

func newRaw(b testing.TB, entries int64) *ristretto.Cache[string, int64] {
	b.Helper()
	rc, err := ristretto.NewCache(&ristretto.Config[string, int64]{
		NumCounters:        10 * entries,
		MaxCost:            entries,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	return rc
}

func newL1(b testing.TB, entries int64) *Cache[int64] {
	b.Helper()
	c, err := New[int64](Config{MaxEntries: entries}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func loadedRaw(b *testing.B, keys []string, ttl time.Duration) *ristretto.Cache[string, int64] {
	rc := newRaw(b, 100_000)
	for i, k := range keys {
		rc.SetWithTTL(k, int64(i), 1, ttl)
	}
	rc.Wait()
	for _, k := range keys {
		if _, ok := rc.Get(k); !ok {
			b.Fatalf("raw: %q not admitted", k)
		}
	}
	b.Cleanup(rc.Close)
	return rc
}

func loadedL1(b *testing.B, keys []string) *Cache[int64] {
	c := newL1(b, 100_000)
	for i, k := range keys {
		c.Fill(c.Reserve(k), int64(i), time.Hour)
	}
	c.Wait()
	for _, k := range keys {
		if _, ok := c.Get(k); !ok {
			b.Fatalf("l1: %q not admitted", k)
		}
	}
	b.Cleanup(func() { c.Close() })
	return c
}

var sink int64

// BenchmarkGet compares an L1 hit with a raw ristretto hit on an entry that
// has a TTL (ristretto reads the wall clock for those) and one without.
func BenchmarkGet(b *testing.B) {
	keys := benchKeyList(benchKeys)
	b.Run("L1", func(b *testing.B) {
		c := loadedL1(b, keys)
		b.ReportAllocs()
		var s int64
		for i := 0; b.Loop(); i++ {
			v, _ := c.Get(keys[i&(benchKeys-1)])
			s += v
		}
		sink = s
	})
	b.Run("RawTTL", func(b *testing.B) {
		rc := loadedRaw(b, keys, time.Hour)
		b.ReportAllocs()
		var s int64
		for i := 0; b.Loop(); i++ {
			v, _ := rc.Get(keys[i&(benchKeys-1)])
			s += v
		}
		sink = s
	})
	b.Run("RawNoTTL", func(b *testing.B) {
		rc := loadedRaw(b, keys, 0)
		b.ReportAllocs()
		var s int64
		for i := 0; b.Loop(); i++ {
			v, _ := rc.Get(keys[i&(benchKeys-1)])
			s += v
		}
		sink = s
	})
}

// BenchmarkGetParallel is BenchmarkGet under b.RunParallel; run it with
// -cpu 2 (or more). Each goroutine walks the keys from its own offset.
func BenchmarkGetParallel(b *testing.B) {
	keys := benchKeyList(benchKeys)
	b.Run("L1", func(b *testing.B) {
		c := loadedL1(b, keys)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(benchKeys)
			for pb.Next() {
				c.Get(keys[i&(benchKeys-1)])
				i++
			}
		})
	})
	b.Run("RawTTL", func(b *testing.B) {
		rc := loadedRaw(b, keys, time.Hour)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(benchKeys)
			for pb.Next() {
				rc.Get(keys[i&(benchKeys-1)])
				i++
			}
		})
	})
}

const memEntries = 100_000

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkMemoryPerEntry measures the heap growth of a cache created and
// filled with 100k entries (int64 values, keys "user:N"), divided by the
// number of entries. Both caches have the same NumCounters and MaxCost, so the
// sketch is charged equally. keys=transient builds each key on the fly and
// drops it, so L1 pays for the key bytes it keeps (raw ristretto keeps only
// hashes); keys=retained builds the keys beforehand and keeps them alive, as a
// caller holding its keys would.
func BenchmarkMemoryPerEntry(b *testing.B) {
	type setter struct {
		set  func(i int, k string) bool
		wait func()
		done func()
	}
	impls := []struct {
		name string
		make func(b *testing.B) setter
	}{
		{"L1", func(b *testing.B) setter {
			c := newL1(b, memEntries)
			return setter{
				set:  func(i int, k string) bool { return c.Fill(c.Reserve(k), int64(i), time.Hour) },
				wait: c.Wait,
				done: func() {
					if got := c.Stats().Entries; got < memEntries*99/100 {
						b.Fatalf("entries = %d, want ~%d", got, memEntries)
					}
					c.Close()
				},
			}
		}},
		{"RawTTL", func(b *testing.B) setter {
			rc := newRaw(b, memEntries)
			return setter{
				set:  func(i int, k string) bool { return rc.SetWithTTL(k, int64(i), 1, time.Hour) },
				wait: rc.Wait,
				done: rc.Close,
			}
		}},
		{"RawNoTTL", func(b *testing.B) setter {
			rc := newRaw(b, memEntries)
			return setter{
				set:  func(i int, k string) bool { return rc.Set(k, int64(i), 1) },
				wait: rc.Wait,
				done: rc.Close,
			}
		}},
	}
	for _, retained := range []bool{false, true} {
		for _, impl := range impls {
			name := impl.name + "/keys=transient"
			if retained {
				name = impl.name + "/keys=retained"
			}
			b.Run(name, func(b *testing.B) {
				var per float64
				for b.Loop() {
					var keys []string
					if retained {
						keys = benchKeyList(2 * memEntries)
					}
					key := func(i int) string {
						if retained {
							return keys[i]
						}
						return "user:" + strconv.Itoa(i)
					}
					before := heapInUse()
					s := impl.make(b)
					n := 0
					for i := 0; n < memEntries; i++ {
						if s.set(i, key(i)) {
							n++
						} else {
							s.wait()
						}
						if i%4096 == 0 {
							s.wait()
						}
					}
					s.wait()
					after := heapInUse()
					per = (float64(after) - float64(before)) / memEntries
					runtime.KeepAlive(keys)
					s.done()
				}
				b.ReportMetric(per, "B/entry")
			})
		}
	}
}

// BenchmarkZipfHitRatio replays a Zipf-distributed request stream over 100k
// keys through L1 (a miss reserves and fills, as tiered does) and reports the
// hit ratio after a warm-up, next to the static optimum: the share of
// requests that go to the N most popular keys, N being L1's capacity.
func BenchmarkZipfHitRatio(b *testing.B) {
	const (
		nKeys    = 100_000
		warmup   = 500_000
		measured = 1_000_000
	)
	keys := benchKeyList(nKeys)
	for _, s := range []float64{1.01, 1.2} {
		for _, pct := range []int{1, 10} {
			capacity := int64(nKeys * pct / 100)
			name := "s=" + strconv.FormatFloat(s, 'f', -1, 64) + "/L1=" + strconv.Itoa(pct) + "%"
			b.Run(name, func(b *testing.B) {
				var ratio float64
				for b.Loop() {
					c := newL1(b, capacity)
					z := rand.NewZipf(rand.New(rand.NewPCG(1, uint64(pct))), s, 1, nKeys-1)
					hits := 0
					for i := range warmup + measured {
						k := keys[z.Uint64()]
						if _, ok := c.Get(k); ok {
							if i >= warmup {
								hits++
							}
							continue
						}
						c.Fill(c.Reserve(k), 1, 0)
					}
					ratio = float64(hits) / measured
					c.Close()
				}
				opt := zipfTopShare(s, nKeys, int(capacity))
				b.ReportMetric(100*ratio, "hit%")
				b.ReportMetric(100*opt, "optimum%")
				b.ReportMetric(ratio/opt, "of-optimum")
			})
		}
	}
}

// zipfTopShare is the probability mass of the top n of keys under
// rand.Zipf(s, v=1, imax=keys-1): P(k) ∝ (1+k)^-s.
func zipfTopShare(s float64, keys, n int) float64 {
	var top, all float64
	for k := range keys {
		p := math.Pow(float64(1+k), -s)
		all += p
		if k < n {
			top += p
		}
	}
	return top / all
}
