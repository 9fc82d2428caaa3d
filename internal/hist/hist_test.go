package hist

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	var h Histogram
	if s := h.Snapshot(); s.Count != 0 || s.P99 != 0 {
		t.Fatalf("empty histogram: got %+v", s)
	}
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	h.Record(-time.Second) // clock skew counts as zero
	s := h.Snapshot()
	check := func(name string, got, want time.Duration) {
		t.Helper()
		if got < want || float64(got) > float64(want)*1.13 {
			t.Errorf("%s: got %v, want within [%v, %v]", name, got, want, time.Duration(float64(want)*1.13))
		}
	}
	check("p50", s.P50, 500*time.Microsecond)
	check("p90", s.P90, 900*time.Microsecond)
	check("p99", s.P99, 990*time.Microsecond)
	check("p99.9", s.P999, 999*time.Microsecond)
	if s.Max != time.Millisecond || s.Count != 1001 {
		t.Errorf("max, count: got %v, %d; want 1ms, 1001", s.Max, s.Count)
	}
	for i := 1; i < n-1; i++ {
		if upperBound(i) <= upperBound(i-1) {
			t.Fatalf("bucket bounds not increasing at %d", i)
		}
	}
	h.Record(time.Hour) // beyond the last bucket: counted, reported as the max
	if s := h.Snapshot(); s.Count != 1002 || s.Max != time.Hour {
		t.Fatalf("overflow: %+v", s)
	}
}

func TestBucketBounds(t *testing.T) {
	for _, d := range []time.Duration{0, 500, time.Microsecond, 3 * time.Microsecond, 17 * time.Microsecond,
		time.Millisecond, 1234 * time.Microsecond, time.Second, 30 * time.Second} {
		b := bucketOf(int64(d))
		if up := upperBound(b); d > up {
			t.Errorf("bucketOf(%v)=%d has upper bound %v below it", d, b, up)
		}
		if b > 0 && d <= upperBound(b-1) {
			t.Errorf("bucketOf(%v)=%d but the previous bucket ends at %v", d, b, upperBound(b-1))
		}
	}
}

func TestBuckets(t *testing.T) {
	var h Histogram
	b := h.Buckets()
	if b.Count != 0 || b.Sum != 0 || len(b.Counts) != len(Bounds) || len(b.Bounds) != len(Bounds) {
		t.Fatalf("empty: %+v", b)
	}
	obs := []time.Duration{
		-time.Second,                     // clock skew: zero, first bucket
		100 * time.Microsecond,           // exactly on the first bound: in it
		100*time.Microsecond + 1,         // just above: second bucket
		3 * time.Millisecond,             // (2.5ms, 5ms]
		10 * time.Second,                 // the last bound
		10*time.Second + time.Nanosecond, // +Inf only
		time.Hour,                        // +Inf only
	}
	var sum time.Duration
	for _, d := range obs {
		h.Record(d)
		sum += max(d, 0)
	}
	b = h.Buckets()
	if b.Count != uint64(len(obs)) {
		t.Errorf("Count %d, want %d", b.Count, len(obs))
	}
	if b.Sum != sum {
		t.Errorf("Sum %v, want %v", b.Sum, sum)
	}
	want := map[time.Duration]uint64{
		100 * time.Microsecond:  2,
		250 * time.Microsecond:  3,
		2500 * time.Microsecond: 3,
		5 * time.Millisecond:    4,
		5 * time.Second:         4,
		10 * time.Second:        5,
	}
	for i, bound := range b.Bounds {
		if i > 0 && b.Counts[i] < b.Counts[i-1] {
			t.Errorf("Counts not cumulative at %v: %v", bound, b.Counts)
		}
		if w, ok := want[bound]; ok && b.Counts[i] != w {
			t.Errorf("Counts[≤%v] = %d, want %d", bound, b.Counts[i], w)
		}
	}
	if b.Counts[len(b.Counts)-1] > b.Count {
		t.Errorf("last bound %d above Count %d", b.Counts[len(b.Counts)-1], b.Count)
	}
}

// Sum never wraps to a negative total: a few observations from a clock
// decades off (propagation lag from a publisher whose clock is wrong) or
// years of uptime at a high rate would pass the largest Duration (about
// 292 years of summed nanoseconds); Sum then stays at that largest value,
// which an exporter still reads as a counter that grew.
func TestSumSaturates(t *testing.T) {
	var h Histogram
	const century = 100 * 365 * 24 * time.Hour
	for i := range 5 {
		h.Record(century)
		if b := h.Buckets(); b.Sum < 0 || (i < 2 && b.Sum != time.Duration(i+1)*century) {
			t.Fatalf("after %d centuries: Sum %v", i+1, b.Sum)
		}
	}
	b := h.Buckets()
	if b.Sum != math.MaxInt64 || b.Count != 5 {
		t.Errorf("Sum %d, Count %d; want the largest Duration and 5", int64(b.Sum), b.Count)
	}
}

// Record from many goroutines while Buckets and Snapshot read: every read
// is cumulative, its Count is its last bucket at most, and once the writers
// are done every observation is counted once, with the exact sum.
func TestConcurrentRecord(t *testing.T) {
	var h Histogram
	const writers, each = 4, 5000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readErr atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		var last uint64
		for {
			select {
			case <-stop:
				return
			default:
			}
			b := h.Buckets()
			for i := 1; i < len(b.Counts); i++ {
				if b.Counts[i] < b.Counts[i-1] {
					readErr.Store(fmt.Sprintf("not cumulative: %v", b.Counts))
				}
			}
			if b.Counts[len(b.Counts)-1] > b.Count || b.Count < last {
				readErr.Store(fmt.Sprintf("Count %d (before %d) below the last bound's %d", b.Count, last, b.Counts[len(b.Counts)-1]))
			}
			last = b.Count
			_ = h.Snapshot()
		}
	}()
	var ww sync.WaitGroup
	for w := range writers {
		ww.Add(1)
		go func() {
			defer ww.Done()
			for i := range each {
				h.Record(time.Duration(w*each+i) * time.Microsecond)
			}
		}()
	}
	ww.Wait()
	close(stop)
	wg.Wait()
	if e := readErr.Load(); e != nil {
		t.Fatal(e)
	}
	const total = writers * each
	b, s := h.Buckets(), h.Snapshot()
	if b.Count != total || s.Count != total {
		t.Errorf("Count %d, percentiles' %d; want %d", b.Count, s.Count, total)
	}
	if want := time.Duration(total*(total-1)/2) * time.Microsecond; b.Sum != want {
		t.Errorf("Sum %v, want %v", b.Sum, want)
	}
}
