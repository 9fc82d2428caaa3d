package l1

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestFillNeverDue checks that an entry filled with Fill is never reported
// due for refresh, staged or handed over.
func TestFillNeverDue(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100}, nil)
	if !c.Fill(c.Reserve("k"), 1, time.Minute) {
		t.Fatal("Fill = false")
	}
	if v, ok, due := c.GetRefresh("k"); !ok || v != 1 || due {
		t.Fatalf("staged: GetRefresh = %v, %v, %v; want 1, true, false", v, ok, due)
	}
	c.Wait()
	if v, ok, due := c.GetRefresh("k"); !ok || v != 1 || due {
		t.Fatalf("GetRefresh = %v, %v, %v; want 1, true, false", v, ok, due)
	}
}

// TestGetRefreshOncePerRetry checks that an entry past its refresh time is
// reported due to exactly one of many concurrent readers, then not again
// until RefreshRetry has passed, and that every reader still gets the value.
func TestGetRefreshOncePerRetry(t *testing.T) {
	const retry = 300 * time.Millisecond
	c := newTest[int](t, Config{MaxEntries: 100, RefreshRetry: retry}, nil)
	if !c.FillRefresh(c.Reserve("k"), 7, time.Minute, 0) {
		t.Fatal("FillRefresh = false")
	}
	c.Wait()
	var dues atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				v, ok, due := c.GetRefresh("k")
				if !ok || v != 7 {
					t.Errorf("GetRefresh = %v, %v; want 7, true", v, ok)
					return
				}
				if due {
					dues.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	if got := dues.Load(); got != 1 && time.Since(start) < retry {
		t.Fatalf("%d readers were told the entry is due within RefreshRetry; want 1", got)
	}
	// After RefreshRetry it is due again, once.
	redistest.WaitFor(t, 10*time.Second, "the entry due again after RefreshRetry", func() bool { _, _, due := c.GetRefresh("k"); return due })
	if _, _, due := c.GetRefresh("k"); due {
		t.Fatal("due twice in a row")
	}
}

// TestFillRefreshLater checks that an entry is not due before its refresh
// time, is due after it, and that Get serves it either way; refresh does not
// extend its life.
func TestFillRefreshLater(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100}, nil)
	if !c.FillRefresh(c.Reserve("k"), 3, 2*time.Second, 200*time.Millisecond) {
		t.Fatal("FillRefresh = false")
	}
	c.Wait()
	start := time.Now()
	if _, ok, due := c.GetRefresh("k"); !ok || (due && time.Since(start) < 150*time.Millisecond) {
		t.Fatalf("GetRefresh right after the fill: ok %v due %v; want a hit, not due", ok, due)
	}
	redistest.WaitFor(t, 10*time.Second, "the entry due", func() bool { _, _, due := c.GetRefresh("k"); return due })
	if time.Since(start) < 190*time.Millisecond {
		t.Fatalf("due after %v, before its refresh time (200ms)", time.Since(start))
	}
	wantHit(t, c, "k", 3)
	redistest.WaitFor(t, 10*time.Second, "the entry to expire", func() bool { _, ok := c.Get("k"); return !ok })
}

// TestFillRefreshRefusedAfterInvalidate checks that FillRefresh keeps the
// fill guard.
func TestFillRefreshRefusedAfterInvalidate(t *testing.T) {
	c := newTest[int](t, Config{MaxEntries: 100}, nil)
	tk := c.Reserve("k")
	c.Invalidate("k")
	if c.FillRefresh(tk, 1, time.Minute, 0) {
		t.Fatal("FillRefresh with an outdated ticket = true")
	}
	wantMiss(t, c, "k")
}
