package l1

import (
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStressNoStaleReads runs goroutines that mix invalidations, versioned
// loads and reads over a small key space. A "database" holds each key's
// current version; a write bumps it, then calls Invalidate. After Invalidate
// returns, the written version becomes the key's floor: any Get that starts
// later and returns a value older than the floor is a violation. Values
// also encode their key, so a value served for the wrong key is caught too.
func TestStressNoStaleReads(t *testing.T) {
	const (
		nKeys      = 64
		goroutines = 8
		opsEach    = 160_000 // 1.28M operations in all
	)
	c := newTest[uint64](t, Config{MaxEntries: 48, BufferItems: 16}, nil)
	keys := make([]string, nKeys)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	var db, floor [nKeys]atomic.Uint64
	var gets, hits, violations, ops atomic.Int64

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 42))
			var myGets, myHits int64
			for range opsEach {
				k := r.IntN(nKeys)
				switch p := r.IntN(100); {
				case p < 10: // write: new version, then invalidate, then publish the floor
					v := db[k].Add(1)
					c.Invalidate(keys[k])
					for f := floor[k].Load(); f < v && !floor[k].CompareAndSwap(f, v); f = floor[k].Load() {
					}
				case p == 10:
					if r.IntN(10) == 0 {
						c.InvalidateAll()
					}
				case p < 40: // load: reserve, read the source, maybe dawdle, fill
					tk := c.Reserve(keys[k])
					v := db[k].Load()
					if r.IntN(4) == 0 {
						runtime.Gosched()
					}
					ttl := time.Duration(0)
					if r.IntN(2) == 0 {
						ttl = time.Hour
					}
					c.Fill(tk, uint64(k)<<40|v, ttl)
				default: // read
					f := floor[k].Load()
					got, ok := c.Get(keys[k])
					myGets++
					if !ok {
						continue
					}
					myHits++
					if gotKey, gotVer := got>>40, got&(1<<40-1); gotKey != uint64(k) || gotVer < f {
						if violations.Add(1) <= 10 {
							t.Errorf("Get(%q) = key %d version %d; want key %d version >= %d", keys[k], gotKey, gotVer, k, f)
						}
					}
				}
			}
			gets.Add(myGets)
			hits.Add(myHits)
			ops.Add(opsEach)
		})
	}
	wg.Wait()
	st := c.Stats()
	t.Logf("ops %d, gets %d, hits %d, violations %d; stats %+v", ops.Load(), gets.Load(), hits.Load(), violations.Load(), st)
	if n := violations.Load(); n != 0 {
		t.Fatalf("%d stale or foreign reads, want 0", n)
	}
	if ops.Load() < 1_000_000 {
		t.Fatalf("ran %d operations, want at least 1e6", ops.Load())
	}
	if hits.Load() < gets.Load()/20 {
		t.Fatalf("hits %d of %d gets: too few for the test to mean anything", hits.Load(), gets.Load())
	}
}
