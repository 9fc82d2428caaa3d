package tiered

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/redistest"
)

// BenchmarkFleet measures what invalidation costs as a fleet grows: n
// subscriber instances (Caches on clients of their own, so each has its
// own bus and subscription, as separate processes would) while one writer
// instance (fleetWriters goroutines) Sets distinct keys at a target rate of
// w writes a second, for fleetWindow, with write batching off and with
// WriteBatchWindow 1ms on the writer. Run with -benchtime 1x: each
// sub-benchmark is one measurement, on a redis-server of its own. Metrics:
//   - writes/s: the rate achieved (the machine may not drive the target);
//   - msgs/write: messages published per write (the writer's
//     Stats.L2.Store.Notifications over its writes);
//   - deliveries/write: messages delivered to all subscribers, per write
//     (Redis's fan-out: n per message);
//   - redis-cpu%: the server's CPU (INFO cpu, user+sys) as a share of one
//     core;
//   - lag-p50-us, lag-p99-us: the subscribers' propagation lag (publish in
//     the write script to the subscriber's handler; Stats.Invalidation.Lag),
//     the median over subscribers of their p50 and of their p99;
//     lag-p99max-us: the worst subscriber's p99.
func BenchmarkFleet(b *testing.B) {
	for _, n := range []int{4, 16, 64} {
		for _, w := range []int{1000, 5000, 20000} {
			for _, batch := range []time.Duration{0, time.Millisecond} {
				name := fmt.Sprintf("n=%d/w=%d/batch=%v", n, w, batch)
				if batch == 0 {
					name = fmt.Sprintf("n=%d/w=%d/batch=off", n, w)
				}
				b.Run(name, func(b *testing.B) {
					srv := redistest.StartServer(b)
					admin := srv.Client()
					fleetCell(b, fleetEnv{
						client: func() redis.UniversalClient { return newFleetClient(b, srv.Addr()) },
						cpu:    func() time.Duration { return redisCPU(b, admin) },
					}, n, w, batch)
				})
			}
		}
	}
}

// BenchmarkFleetCluster is BenchmarkFleet's measurement on the 3-master
// Redis Cluster, with sharded pub/sub (SPUBLISH, the default) and without
// (DisableShardedPubSub: PUBLISH), batching off. Besides BenchmarkFleet's
// metrics (Redis CPU summed over the masters): bus-msgs/write, the
// PUBLISH messages the masters sent each other over the cluster bus
// (CLUSTER INFO cluster_stats_messages_publish_sent), per write.
func BenchmarkFleetCluster(b *testing.B) {
	for _, n := range []int{4, 16} {
		for _, w := range []int{1000, 5000} {
			for _, plain := range []bool{false, true} {
				mode := map[bool]string{false: "sharded", true: "plain"}[plain]
				b.Run(fmt.Sprintf("n=%d/w=%d/pubsub=%s", n, w, mode), func(b *testing.B) {
					cl := redistest.StartCluster(b)
					fleetCell(b, fleetEnv{
						client: func() redis.UniversalClient {
							c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true, PoolSize: 64,
								DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
							b.Cleanup(func() { _ = c.Close() })
							return c
						},
						cpu: func() (t time.Duration) {
							for _, m := range cl.Masters {
								t += redisCPU(b, m.Client())
							}
							return t
						},
						bus: func() (sum uint64) {
							for _, m := range cl.Masters {
								info, err := m.Client().ClusterInfo(context.Background()).Result()
								if err != nil {
									b.Fatal(err)
								}
								v, _ := strconv.ParseUint(redisinfo.Field(info, "cluster_stats_messages_publish_sent"), 10, 64)
								sum += v
							}
							return sum
						},
						plain: plain,
					}, n, w, 0)
				})
			}
		}
	}
}

// fleetEnv is the Redis a fleet measurement runs on.
type fleetEnv struct {
	client func() redis.UniversalClient // a client of an instance of its own
	cpu    func() time.Duration         // the servers' CPU time so far
	bus    func() uint64                // Redis Cluster: PUBLISH messages sent over the cluster bus so far
	plain  bool                         // DisableShardedPubSub
}

// fleetCell is one measurement of BenchmarkFleet.
func fleetCell(b *testing.B, env fleetEnv, n, w int, batch time.Duration) {
	const (
		fleetWindow  = 3 * time.Second
		fleetWriters = 32
		fleetKeys    = 4096
	)
	ctx := context.Background()
	cfg := func() Config[string] {
		return Config[string]{Redis: env.client(), Namespace: "fleet", TTL: time.Hour,
			RedisTimeout: 5 * time.Second, DisableShardedPubSub: env.plain}
	}
	subs := make([]*Cache[string], n)
	for i := range subs {
		subs[i] = newCache(b, cfg())
	}
	wcfg := cfg()
	wcfg.WriteBatchWindow = batch
	writer := newCache(b, wcfg)
	keys := make([]string, fleetKeys)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	for b.Loop() {
		notes0 := writer.Stats().L2.Store.Notifications
		recv0 := make([]uint64, n)
		for i, c := range subs {
			recv0[i] = c.Stats().Invalidation.Received
		}
		cpu0 := env.cpu()
		var bus0 uint64
		if env.bus != nil {
			bus0 = env.bus()
		}
		var writes, failed atomic.Int64
		var wg sync.WaitGroup
		t0 := time.Now()
		for j := range fleetWriters {
			wg.Go(func() {
				// The m-th write of goroutine j is due at
				// t0 + (m·fleetWriters + j)/w.
				for m := 0; ; m++ {
					due := t0.Add(time.Duration(float64(m*fleetWriters+j) / float64(w) * float64(time.Second)))
					if due.Sub(t0) >= fleetWindow {
						return
					}
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
					if err := writer.Set(ctx, keys[(m*fleetWriters+j)%fleetKeys], "v"); err != nil {
						failed.Add(1)
						continue
					}
					writes.Add(1)
				}
			})
		}
		wg.Wait()
		wall := time.Since(t0)
		// Let every message published arrive before counting.
		notes := writer.Stats().L2.Store.Notifications - notes0
		redistest.WaitFor(b, 30*time.Second, "every subscriber to receive every message", func() bool {
			for i, c := range subs {
				if c.Stats().Invalidation.Received-recv0[i] < notes {
					return false
				}
			}
			return true
		})
		cpu1 := env.cpu()
		if failed.Load() > 0 {
			b.Fatalf("%d writes failed", failed.Load())
		}
		var deliveries uint64
		var p50s, p99s []float64
		for i, c := range subs {
			st := c.Stats().Invalidation
			deliveries += st.Received - recv0[i]
			p50s = append(p50s, float64(st.Lag.P50.Microseconds()))
			p99s = append(p99s, float64(st.Lag.P99.Microseconds()))
		}
		slices.Sort(p50s)
		slices.Sort(p99s)
		nw := float64(writes.Load())
		b.ReportMetric(nw/wall.Seconds(), "writes/s")
		b.ReportMetric(float64(notes)/nw, "msgs/write")
		b.ReportMetric(float64(deliveries)/nw, "deliveries/write")
		b.ReportMetric(100*(cpu1-cpu0).Seconds()/wall.Seconds(), "redis-cpu%")
		b.ReportMetric(p50s[len(p50s)/2], "lag-p50-us")
		b.ReportMetric(p99s[len(p99s)/2], "lag-p99-us")
		b.ReportMetric(p99s[len(p99s)-1], "lag-p99max-us")
		if env.bus != nil {
			b.ReportMetric(float64(env.bus()-bus0)/nw, "bus-msgs/write")
		}
	}
}

// newFleetClient is a client of one fleet instance: a pool large enough
// for the writer's goroutines, timeouts that a saturated machine meets.
func newFleetClient(b *testing.B, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, PoolSize: 64,
		DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// redisCPU is the server's CPU time so far (INFO cpu, user + sys).
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, f := range []string{"used_cpu_user", "used_cpu_sys"} {
		v, err := strconv.ParseFloat(redisinfo.Field(info, f), 64)
		if err != nil {
			b.Fatalf("INFO cpu %s: %v", f, err)
		}
		total += v
	}
	return time.Duration(total * float64(time.Second))
}
