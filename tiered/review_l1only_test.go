package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func logf(t *testing.T, n int, format string, args ...any) {
	t.Helper()
	if n <= 3 {
		t.Logf(format, args...)
	}
}

// TestReviewL1OnlyVersionedBackToBack: in L1-only mode, a versioned Set
// followed at once (no L1 Wait) by an older one is refused, and concurrent
// versioned writers never end with an older version held (a miss is allowed:
// ristretto may drop a fill). setLocal compared with l1.Get, which misses
// while a fill sits in ristretto's buffers or after ristretto dropped it, so
// the older write won; versions are now remembered beside L1.
func TestReviewL1OnlyVersionedBackToBack(t *testing.T) {
	ctx := context.Background()
	c := newCache(t, Config[string]{})
	accepted := 0
	for i := 0; i < 2000; i++ {
		k := fmt.Sprintf("k%d", i)
		if err := c.Set(ctx, k, "v5", WithVersion(5)); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, k, "v3", WithVersion(3)); !errors.Is(err, ErrStale) {
			accepted++
			v, gerr := c.Get(ctx, k)
			logf(t, accepted, "%s: older Set accepted (%v); Get now %q %v", k, err, v, gerr)
		}
	}
	if accepted > 0 {
		t.Errorf("%d of 2000 older versioned Sets accepted right after a newer one", accepted)
	}
	var wg sync.WaitGroup
	for w := 1; w <= 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				_ = c.Set(ctx, fmt.Sprintf("c%d", i), fmt.Sprintf("v%d", w), WithVersion(uint64(w)))
			}
		}()
	}
	wg.Wait()
	bad := 0
	for i := 0; i < 500; i++ {
		// A cache may miss (ristretto drops or has not yet applied a fill);
		// it must never hold an older version.
		if v, err := c.Get(ctx, fmt.Sprintf("c%d", i)); errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil || v != "v4" {
			bad++
			logf(t, bad, "c%d: Get %q %v, want v4", i, v, err)
		}
	}
	if bad > 0 {
		t.Errorf("%d of 500 keys do not hold the highest version after concurrent versioned writers", bad)
	}
}
