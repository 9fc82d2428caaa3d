package tiered

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestOpCtxConcurrentRollover: operations that begin concurrently while
// ends roll over each get a deadline no earlier than RedisTimeout after
// they began and at most slack after RedisTimeout from when they got it,
// and a Done that is still open when they get it.
func TestOpCtxConcurrentRollover(t *testing.T) {
	const timeout = 2 * time.Millisecond // slack 125 µs: ends roll over constantly
	d := newOpDeadlines(timeout)
	var wg sync.WaitGroup
	errs := make(chan string, 1)
	report := func(s string) {
		select {
		case errs <- s:
		default:
		}
	}
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				before := time.Now()
				ctx := d.context(context.Background())
				after := time.Now()
				dl, ok := ctx.Deadline()
				switch {
				case !ok:
					report("no deadline")
				case dl.Before(before.Add(timeout)):
					report("deadline " + dl.Sub(before).String() + " after the start, before RedisTimeout")
				case dl.After(after.Add(timeout + d.slack)):
					report("deadline " + dl.Sub(after).String() + " after the start, past RedisTimeout + slack")
				}
				if ctx.Err() != nil && time.Now().Before(before.Add(timeout)) {
					report("Err before RedisTimeout: " + ctx.Err().Error())
				}
				select {
				case <-ctx.Done():
					if time.Now().Before(before.Add(timeout)) {
						report("Done closed before RedisTimeout")
					}
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case s := <-errs:
		t.Fatal(s)
	default:
	}
}

// TestOpDeadlinesPendingBounded: however long RedisTimeout, the ends pending
// at once under steady traffic (RedisTimeout / slack) stay within
// maxPendingEnds, and the slack stays within max(10ms, RedisTimeout/1024)
// and below RedisTimeout.
func TestOpDeadlinesPendingBounded(t *testing.T) {
	for _, to := range []time.Duration{time.Millisecond, 250 * time.Millisecond, time.Second, time.Minute, time.Hour, 24 * time.Hour} {
		d := newOpDeadlines(to)
		if d.slack <= 0 || to/d.slack > maxPendingEnds {
			t.Errorf("RedisTimeout %v: slack %v allows %d pending ends, want at most %d", to, d.slack, to/max(d.slack, 1), maxPendingEnds)
		}
		if d.slack > max(maxOpSlack, to/maxPendingEnds) || d.slack >= to {
			t.Errorf("RedisTimeout %v: slack %v, want at most max(%v, %v) and below the timeout", to, d.slack, maxOpSlack, to/maxPendingEnds)
		}
	}
}
