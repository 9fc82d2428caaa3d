package tiered

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// BenchmarkInvalidationUnderLoad measures how long other instances keep
// serving a value after a Set of a newer one has returned, with the CPUs
// idle and with them saturated by readers spinning on L1 hits:
//
//	go test -run '^$' -bench InvalidationUnderLoad -benchtime 300x ./tiered/
//
// Three Caches share one redis-server. One writer Sets hot keys on instance
// 0, one key per iteration, cycling over satKeys keys, sleeping satPause
// between writes; write w stores the value w in key w%satKeys, so the write
// that overtook a value v of a key is v+satKeys.
//
//   - idle: nothing else runs. After each Set returns, the writer polls Get
//     on instances 1 and 2 until each returns the new value; a poll that
//     returns an older value is a stale read, stale by the time since the
//     Set returned.
//   - saturated: 3 × GOMAXPROCS goroutines spin on Get of the hot keys,
//     spread over the three instances (the writer's own instance serves its
//     writes at once). A read that returns a value older than a write that
//     had returned before the read began is stale, by the time from that
//     write's return to the read's return. The writer does not poll.
//   - floor-netpoll: no cache at all. A goroutine blocked reading a
//     loopback TCP connection, woken by a 4-byte write after every pause,
//     with 3 × GOMAXPROCS goroutines spinning on an atomic counter: how
//     long the Go scheduler takes to run a goroutine that the network woke
//     when every P is busy. The bus's subscription reader pays it for every
//     message: the runtime polls the network from sysmon at most every
//     10 ms when no P is idle, and queues what it finds at the tail of the
//     global run queue, behind the preempted spinners, each of which keeps
//     its P for a 10–20 ms time slice.
//   - floor-netpoll+chan: the same, and the reader hands each write to a
//     second goroutine over a channel, which records the time: the hop from
//     the bus's reader to its worker. A goroutine readied by a running one
//     goes to that P's runnext slot and runs as soon as the reader blocks
//     again, so the hop adds next to nothing.
//   - floor-timer: a goroutine sleeping 1 ms, lateness measured, with the
//     same spinners: a timer's goroutine also goes to runnext, but only
//     when its P next schedules, at the end of the spinner's time slice.
//     This is the least any goroutine woken under saturation waits.
//
// Metrics: stale-p50/p90/p99/max-ms, the staleness per (write, other
// instance) pair (the worst stale read observed for the pair; 0 when none
// was), "stale-reads" and "stale>30ms" (reads), and the bus's own lag
// (publish to Handler, Stats().Invalidation.Lag, worst of instances 1 and
// 2) as lag-p50/p99/max-ms. "pairs>30ms" counts the pairs whose worst stale
// read exceeded 30 ms. A spinner reads a hot key about every microsecond
// while it holds a P, so one late pair accounts for thousands of stale
// reads. Floors: wake-p50/p99/max-ms and "wake>30ms".
func BenchmarkInvalidationUnderLoad(b *testing.B) {
	srv := redistest.StartServer(b)
	spinners := 3 * runtime.GOMAXPROCS(0)
	run := 0
	b.Run("idle", func(b *testing.B) {
		run++
		benchInvalidation(b, srv, "satidle"+strconv.Itoa(run), 0)
	})
	b.Run("saturated", func(b *testing.B) {
		run++
		benchInvalidation(b, srv, "satbusy"+strconv.Itoa(run), spinners)
	})
	b.Run("floor-netpoll", func(b *testing.B) { benchNetpollFloor(b, spinners, false) })
	b.Run("floor-netpoll+chan", func(b *testing.B) { benchNetpollFloor(b, spinners, true) })
	b.Run("floor-timer", func(b *testing.B) { benchTimerFloor(b, spinners) })
}

const (
	satKeys      = 8
	satPause     = 2 * time.Millisecond
	satThreshold = 30 * time.Millisecond
)

func benchInvalidation(b *testing.B, srv *redistest.Server, ns string, spinners int) {
	ctx := context.Background()
	caches := make([]*Cache[int], 3)
	for i := range caches {
		caches[i] = newCache(b, Config[int]{Redis: newClient(b, srv.Addr()), Namespace: ns,
			TTL: time.Hour, MaxL1TTL: time.Hour})
	}
	keys := make([]string, satKeys)
	for i := range keys {
		keys[i] = "hot" + strconv.Itoa(i)
	}
	writes := b.N + satKeys
	start := time.Now()
	ackAt := make([]atomic.Int64, writes) // ns since start when Set of value w returned
	var latest [satKeys]atomic.Int64      // the newest value whose Set has returned, per key
	stale := make([][]atomic.Int64, len(caches))
	for i := range stale {
		stale[i] = make([]atomic.Int64, writes) // worst staleness (ns) seen against write w
	}
	var staleReads, late atomic.Int64
	observe := func(inst, k, v int, now time.Time) bool {
		w := v + satKeys // the write that overtook v
		if int64(w) > latest[k].Load() {
			return false
		}
		d := int64(now.Sub(start)) - ackAt[w].Load()
		staleReads.Add(1)
		if d > int64(satThreshold) {
			late.Add(1)
		}
		for p := &stale[inst][w]; ; {
			if old := p.Load(); d <= old || p.CompareAndSwap(old, d) {
				break
			}
		}
		return true
	}
	for w := range satKeys {
		if err := caches[0].Set(ctx, keys[w], w); err != nil {
			b.Fatal(err)
		}
		ackAt[w].Store(int64(time.Since(start)))
		latest[w].Store(int64(w))
	}
	for _, c := range caches { // warm every L1
		for k, key := range keys {
			redistest.WaitFor(b, 5*time.Second, "warm L1", func() bool {
				v, err := c.Get(ctx, key)
				if err != nil {
					b.Fatal(err)
				}
				_, hit := c.local.Get(key)
				return v == k && hit
			})
		}
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var getErrs atomic.Int64
	for s := range spinners {
		inst := s % len(caches)
		c := caches[inst]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; !stop.Load(); i++ {
				k := i % satKeys
				want := latest[k].Load()
				v, err := c.Get(ctx, keys[k])
				if err != nil {
					getErrs.Add(1)
					continue
				}
				if int64(v)+satKeys <= want {
					observe(inst, k, v, time.Now())
				}
			}
		}()
	}
	b.ResetTimer()
	for w := satKeys; w < writes; w++ {
		k := w % satKeys
		if err := caches[0].Set(ctx, keys[k], w); err != nil {
			b.Fatal(err)
		}
		ackAt[w].Store(int64(time.Since(start)))
		latest[k].Store(int64(w))
		if spinners == 0 {
			for inst := 1; inst < len(caches); inst++ {
				for {
					v, err := caches[inst].Get(ctx, keys[k])
					if err != nil {
						b.Fatal(err)
					}
					if !observe(inst, k, v, time.Now()) {
						break
					}
				}
			}
		}
		time.Sleep(satPause)
	}
	b.StopTimer()
	stop.Store(true)
	wg.Wait()
	if n := getErrs.Load(); n > 0 {
		b.Fatalf("%d Get errors", n)
	}
	var pairs []time.Duration
	for inst := 1; inst < len(caches); inst++ {
		for w := satKeys; w < writes; w++ {
			pairs = append(pairs, time.Duration(stale[inst][w].Load()))
		}
	}
	slices.Sort(pairs)
	for _, q := range []struct {
		name string
		p    float64
	}{{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}, {"max", 1}} {
		b.ReportMetric(ms(pairs[min(int(q.p*float64(len(pairs))), len(pairs)-1)]), "stale-"+q.name+"-ms")
	}
	var latePairs int
	for _, d := range pairs {
		if d > satThreshold {
			latePairs++
		}
	}
	b.ReportMetric(float64(latePairs), "pairs>30ms")
	b.ReportMetric(float64(staleReads.Load()), "stale-reads")
	b.ReportMetric(float64(late.Load()), "stale>30ms")
	var lag invalidation.LagStats
	for _, c := range caches[1:] {
		l := c.Stats().Invalidation.Lag
		lag.P50, lag.P99, lag.Max = max(lag.P50, l.P50), max(lag.P99, l.P99), max(lag.Max, l.Max)
	}
	b.ReportMetric(ms(lag.P50), "lag-p50-ms")
	b.ReportMetric(ms(lag.P99), "lag-p99-ms")
	b.ReportMetric(ms(lag.Max), "lag-max-ms")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchNetpollFloor: see BenchmarkInvalidationUnderLoad. With hop, the
// reader hands each wake to a second goroutine, which records it.
func benchNetpollFloor(b *testing.B, spinners int, hop bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	r, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	defer r.Close()

	start := time.Now()
	sentAt := make([]atomic.Int64, b.N) // ns since start when byte group i was written
	wakes := make([]time.Duration, 0, b.N)
	var got atomic.Int64
	record := func(i uint32) {
		wakes = append(wakes, time.Since(start)-time.Duration(sentAt[i].Load()))
		got.Add(1)
	}
	readDone := make(chan struct{})
	handoff := make(chan uint32, 64)
	go func() {
		defer close(readDone)
		defer close(handoff)
		buf := make([]byte, 4)
		for {
			if _, err := io.ReadFull(r, buf); err != nil {
				return
			}
			if hop {
				handoff <- binary.BigEndian.Uint32(buf)
			} else {
				record(binary.BigEndian.Uint32(buf))
			}
		}
	}()
	hopDone := make(chan struct{})
	go func() {
		defer close(hopDone)
		for i := range handoff {
			record(i)
		}
	}()
	var stop atomic.Bool
	var wg sync.WaitGroup
	spin(spinners, &stop, &wg)
	b.ResetTimer()
	for i := range b.N {
		sentAt[i].Store(int64(time.Since(start)))
		if _, err := w.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			b.Fatal(err)
		}
		time.Sleep(satPause)
	}
	b.StopTimer()
	redistest.WaitFor(b, 10*time.Second, "the reader to see every write", func() bool { return got.Load() == int64(b.N) })
	stop.Store(true)
	wg.Wait()
	_ = r.Close()
	<-readDone
	<-hopDone
	reportWakes(b, wakes)
}

// spin starts n goroutines that spin until stop is set.
func spin(n int, stop *atomic.Bool, wg *sync.WaitGroup) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
			}
		}()
	}
}

// benchTimerFloor: see BenchmarkInvalidationUnderLoad.
func benchTimerFloor(b *testing.B, spinners int) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	spin(spinners, &stop, &wg)
	late := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		time.Sleep(time.Millisecond)
		late = append(late, time.Since(t)-time.Millisecond)
	}
	b.StopTimer()
	stop.Store(true)
	wg.Wait()
	reportWakes(b, late)
}

func reportWakes(b *testing.B, wakes []time.Duration) {
	if len(wakes) == 0 {
		b.Fatal("no wake measured")
	}
	slices.Sort(wakes)
	var n int
	for _, d := range wakes {
		if d > satThreshold {
			n++
		}
	}
	b.ReportMetric(ms(wakes[len(wakes)/2]), "wake-p50-ms")
	b.ReportMetric(ms(wakes[min(len(wakes)*99/100, len(wakes)-1)]), "wake-p99-ms")
	b.ReportMetric(ms(wakes[len(wakes)-1]), "wake-max-ms")
	b.ReportMetric(float64(n), "wake>30ms")
}
