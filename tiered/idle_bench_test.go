package tiered

import (
	"context"
	"runtime"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/benchvalue"
	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/redistest"
)

// BenchmarkIdleCaches measures what Caches cost while nothing uses them:
// this process's CPU (getrusage) over idleWindow, as a percentage of one
// core, the commands they send Redis per second (INFO stats of a
// server the benchmark starts), and the subscriber connections they hold.
// Run with -benchtime 1x: each sub-benchmark is one measurement. Run each
// measurement in a fresh process (-count 1, repeated; bench/run.sh does):
// repeated in one process, later runs measure more CPU, raw ristretto's
// too (0.20, 0.35, 0.46, 0.56% for 50 raw ristretto caches in four runs).
// caches=0 is the floor: the same process, server and admin client with no
// Cache (the Go runtime's own wake-ups, the benchmark's INFO calls).
// raw-ristretto=50 is a reference: 50 raw ristretto caches sized as the
// default L1 (DefaultL1MaxEntries), one Set and Get each, no Redis traffic,
// with ristretto's defaults, whose expiry cleanup wakes each cache every
// 2.5 s (nearcache's L1 gives no entry a ristretto TTL and ticks that
// cleanup twice a day, so its 50 Caches can cost less than this).
func BenchmarkIdleCaches(b *testing.B) {
	const idleWindow = 5 * time.Second
	for _, tc := range []struct {
		name      string
		caches    int
		ristretto int
	}{{"caches=0", 0, 0}, {"caches=1", 1, 0}, {"caches=50", 50, 0}, {"raw-ristretto=50", 0, 50}} {
		b.Run(tc.name, func(b *testing.B) {
			srv := redistest.StartServer(b)
			rc := newClient(b, srv.Addr())
			admin := srv.Client()
			ctx := context.Background()
			for i := range tc.caches {
				c := newCache(b, Config[string]{Redis: rc, Namespace: "idle" + strconv.Itoa(i)})
				if err := c.Set(ctx, "k", "v"); err != nil { // one write, then nothing
					b.Fatal(err)
				}
				if _, err := c.Get(ctx, "k"); err != nil {
					b.Fatal(err)
				}
			}
			for range tc.ristretto {
				r, err := ristretto.NewCache(&ristretto.Config[string, string]{
					NumCounters: 10 * DefaultL1MaxEntries, MaxCost: DefaultL1MaxEntries, BufferItems: 64, IgnoreInternalCost: true,
				})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(r.Close)
				r.SetWithTTL("k", "v", 1, time.Hour)
				r.Wait()
				r.Get("k")
			}
			// Let start-up work settle: a collection and the return of
			// the freed memory to the OS now, rather than by the
			// background scavenger during the measurement (the previous
			// sub-benchmark's closed Caches, the set-up's garbage).
			runtime.GC()
			debug.FreeOSMemory()
			time.Sleep(time.Second)
			for b.Loop() {
				cpu0, calls0, t0 := processCPU(b), commandCalls(b, admin), time.Now()
				time.Sleep(idleWindow)
				cpu1, calls1, wall := processCPU(b), commandCalls(b, admin), time.Since(t0)
				// The two INFO calls are the benchmark's own.
				b.ReportMetric(100*float64(cpu1-cpu0)/float64(wall), "cpu%")
				b.ReportMetric(float64(calls1-calls0-1)/wall.Seconds(), "cmds/s")
				b.ReportMetric(float64(subscribers(b, admin)), "subconns")
			}
		})
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

// commandCalls is the server's total_commands_processed.
func commandCalls(b *testing.B, c *redis.Client) int64 {
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	n, err := strconv.ParseInt(redisinfo.Field(info, "total_commands_processed"), 10, 64)
	if err != nil {
		b.Fatalf("INFO stats total_commands_processed: %v", err)
	}
	return n
}

// subscribers counts the server's pub/sub connections.
func subscribers(b *testing.B, c *redis.Client) int {
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		b.Fatal(err)
	}
	return redisinfo.PubSubClients(list)
}
