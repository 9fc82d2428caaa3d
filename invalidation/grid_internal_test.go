package invalidation

import (
	"testing"
	"time"
)

func TestGridAfter(t *testing.T) {
	g := newGrid(250*time.Millisecond, time.Second, time.Second)
	if g.step != 250*time.Millisecond {
		t.Fatalf("step %v, want the smallest interval", g.step)
	}
	at := func(d time.Duration) time.Time { return g.origin.Add(d) }
	for _, tc := range []struct {
		t, iv, want time.Duration
	}{
		{0, time.Second, time.Second},
		{time.Millisecond, 250 * time.Millisecond, 250 * time.Millisecond},
		{250 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond}, // strictly after
		{1900 * time.Millisecond, time.Second, 2 * time.Second},
		{-time.Second, time.Second, 0},
	} {
		if got := g.after(at(tc.t), tc.iv).Sub(g.origin); got != tc.want {
			t.Errorf("after(%v, %v) = %v, want %v", tc.t, tc.iv, got, tc.want)
		}
	}
}

func TestGridDeadline(t *testing.T) {
	g := newGrid(250*time.Millisecond, time.Second)
	at := func(d time.Duration) time.Time { return g.origin.Add(d) }
	ping := time.Second
	if s := g.fine(ping); s != 250*time.Millisecond {
		t.Fatalf("fine(1s) = %v", s)
	}
	for _, tc := range []struct{ t, want time.Duration }{
		{1000 * time.Millisecond, 1000 * time.Millisecond}, // on the grid
		{1002 * time.Millisecond, 1000 * time.Millisecond}, // a reply's round trip late: same point
		{1062 * time.Millisecond, 1000 * time.Millisecond}, // at most slack early
		{1063 * time.Millisecond, 1250 * time.Millisecond},
		{1249 * time.Millisecond, 1250 * time.Millisecond},
	} {
		got := g.deadline(at(tc.t), ping).Sub(g.origin)
		if got != tc.want {
			t.Errorf("deadline(%v) = %v, want %v", tc.t, got, tc.want)
		}
		if early, late := tc.t-got, got-tc.t; early > g.slack(ping) || late >= 3*g.fine(ping)/4 {
			t.Errorf("deadline(%v) = %v: outside [-slack, 3/4 step)", tc.t, got)
		}
	}
	// A grid coarser than a quarter of the wait is refined, and its
	// points stay points of the finer grid.
	g = newGrid(time.Second)
	if s := g.fine(time.Second); s != 250*time.Millisecond {
		t.Fatalf("fine(1s) on a 1s grid = %v, want 250ms", s)
	}
	if got := g.deadline(at(3*time.Second+time.Millisecond), time.Second).Sub(g.origin); got != 3*time.Second {
		t.Errorf("deadline just after a coarse point = %v, want 3s", got)
	}
}
