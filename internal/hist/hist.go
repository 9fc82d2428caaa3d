// Package hist is the fixed-size, lock-free latency histogram behind the
// tiers' percentile stats (l2 round trips, invalidation propagation lag):
// 8 log-linear buckets per power of two from 1µs to about 18 minutes, plus an
// underflow and an overflow bucket. A reported percentile is the upper bound
// of its bucket (at most 12.5% above the true value, and never above the
// maximum seen); memory is constant and Record is a few atomic operations.
// Beside them, 16 fixed buckets from 100µs to 10s and the sum give the
// cumulative view exporters need (Buckets).
package hist

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	minExp = 10 // 2^10 ns ≈ 1µs
	maxExp = 40 // 2^40 ns ≈ 18 min
	sub    = 8
	subLog = 3
	n      = (maxExp-minExp)*sub + 2
)

// Histogram records durations. The zero value is ready to use.
type Histogram struct {
	buckets [n]atomic.Uint64
	count   atomic.Uint64
	max     atomic.Int64
	// The exportable view: counts per fixed bound (Bounds, then +Inf)
	// and the sum of the observations.
	fixed [len(Bounds) + 1]atomic.Uint64
	sum   atomic.Int64
}

// Bounds are the fixed upper bounds of the exportable buckets (Buckets),
// in the spirit of Prometheus's defaults, from 100µs to 10s: they suit Redis
// round trips, loader calls and propagation lag alike, so dashboards can
// put the three side by side.
var Bounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Buckets is a cumulative histogram with fixed bounds, as exporters want
// it (a Prometheus histogram, an OpenTelemetry explicit-bucket histogram):
// Counts[i] observations were at most Bounds[i]; Count is every
// observation (the +Inf bucket) and Sum their total. Counts only grow,
// and so does Sum, which stops at the largest Duration (about 292 years of
// summed observations: years of uptime at a high rate, or a few
// propagation lags from a publisher whose clock is decades off) instead of
// wrapping to a negative total.
type Buckets struct {
	Bounds []time.Duration // shared, do not modify
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

// fixedOf is the index in Bounds of the first bound at or above ns
// (len(Bounds) for +Inf).
func fixedOf(ns int64) int {
	lo, hi := 0, len(Bounds)
	for lo < hi {
		m := (lo + hi) / 2
		if int64(Bounds[m]) >= ns {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// Percentiles is a snapshot of a Histogram.
type Percentiles struct {
	Count               uint64
	P50, P90, P99, P999 time.Duration
	Max                 time.Duration
}

func bucketOf(ns int64) int {
	if ns < 1<<minExp {
		return 0
	}
	e := bits.Len64(uint64(ns)) - 1
	if e >= maxExp {
		return n - 1
	}
	s := int(uint64(ns)>>(e-subLog)) & (sub - 1)
	return 1 + (e-minExp)*sub + s
}

// upperBound is the largest duration that falls in bucket i.
func upperBound(i int) time.Duration {
	switch {
	case i <= 0:
		return 1 << minExp
	case i >= n-1:
		return 1 << maxExp
	}
	i--
	e := minExp + i/sub
	s := i % sub
	return time.Duration(int64(1)<<e + int64(s+1)<<(e-subLog))
}

// Record adds one observation; a negative duration (clock skew between
// machines) counts as zero.
func (h *Histogram) Record(d time.Duration) {
	ns := max(int64(d), 0)
	h.buckets[bucketOf(ns)].Add(1)
	h.fixed[fixedOf(ns)].Add(1)
	h.addSum(ns)
	h.count.Add(1)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			return
		}
	}
}

// addSum adds ns (>= 0) to the sum, which stops at the largest Duration
// instead of wrapping to a negative total.
func (h *Histogram) addSum(ns int64) {
	for {
		s := h.sum.Load()
		t := s + ns
		if t < s { // overflow
			t = math.MaxInt64
		}
		if t == s || h.sum.CompareAndSwap(s, t) {
			return
		}
	}
}

// Snapshot returns the count, p50, p90, p99, p99.9 and maximum.
func (h *Histogram) Snapshot() Percentiles {
	var counts [n]uint64
	var total uint64
	for i := range counts {
		counts[i] = h.buckets[i].Load()
		total += counts[i]
	}
	p := Percentiles{Count: total, Max: time.Duration(h.max.Load())}
	if total == 0 {
		return p
	}
	q := func(f float64) time.Duration {
		want := max(uint64(f*float64(total)+0.5), 1)
		var cum uint64
		for i, c := range counts {
			cum += c
			if cum >= want {
				return min(upperBound(i), p.Max)
			}
		}
		return p.Max
	}
	p.P50, p.P90, p.P99, p.P999 = q(0.50), q(0.90), q(0.99), q(0.999)
	return p
}

// Buckets returns the exportable view. Read while observations are being
// recorded, Count is the sum of the buckets read, so that the +Inf bucket
// is never below the last bound's.
func (h *Histogram) Buckets() Buckets {
	b := Buckets{Bounds: Bounds[:], Counts: make([]uint64, len(Bounds)), Sum: time.Duration(h.sum.Load())}
	var cum uint64
	for i := range h.fixed {
		cum += h.fixed[i].Load()
		if i < len(Bounds) {
			b.Counts[i] = cum
		}
	}
	b.Count = cum
	return b
}
