package hist

import (
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	for _, d := range []time.Duration{0, time.Microsecond, 3 * time.Microsecond, 5 * time.Microsecond,
		17 * time.Microsecond, time.Millisecond, 1234 * time.Microsecond, time.Second, 30 * time.Second} {
		b := bucket(d)
		if up := upper(b); d >= up {
			t.Errorf("bucket(%v)=%d has upper bound %v, want > %v", d, b, up, d)
		}
		if b > 0 {
			if lo := upper(b - 1); d < lo {
				t.Errorf("bucket(%v)=%d but previous bucket ends at %v", d, b, lo)
			}
		}
		if d >= 8*time.Microsecond && float64(upper(b)) > 1.25*float64(d)+float64(time.Microsecond) {
			t.Errorf("bucket(%v) upper bound %v is more than 25%% above", d, upper(b))
		}
	}
}

func TestQuantile(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 {
		t.Fatalf("empty histogram: want 0")
	}
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	p := h.Snapshot()
	if p.Count != 1000 {
		t.Fatalf("count: got %d, want 1000", p.Count)
	}
	check := func(name string, got, want time.Duration) {
		if got < want || float64(got) > 1.25*float64(want) {
			t.Errorf("%s: got %v, want within [%v, %v]", name, got, want, time.Duration(1.25*float64(want)))
		}
	}
	check("p50", p.P50, 500*time.Microsecond)
	check("p99", p.P99, 990*time.Microsecond)
	h.Record(10 * time.Minute) // beyond the last bucket: clamped, not lost
	if h.Count() != 1001 {
		t.Fatalf("count after overflow: got %d", h.Count())
	}
}
