package hist

import (
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
