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
