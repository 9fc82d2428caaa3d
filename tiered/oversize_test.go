package tiered

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nearcache/nearcache/l2"
)

const oversizeLimit = 1024

// inRedis reports whether the server holds a key for the cache key k (a
// Redis key ending in k; the test's keys end no other key).
func inRedis(mr *miniredis.Miniredis, k string) bool {
	for _, rk := range mr.Keys() {
		if strings.HasSuffix(rk, k) {
			return true
		}
	}
	return false
}

// newOversizeCache returns a cache with MaxValueSize oversizeLimit on mr,
// and the Warn lines it logs.
func newOversizeCache(t *testing.T, mr *miniredis.Miniredis) (*Cache[string], *observer.ObservedLogs) {
	core, logs := observer.New(zap.WarnLevel)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "big",
		MaxValueSize: oversizeLimit, Logger: zap.New(core)})
	return c, logs
}

// TestWriteBackLeavesOutOversized: one loaded value above MaxValueSize is
// left out of the write-back, alone: the batch's other values reach Redis
// (so other instances need not load them again), the caller gets every
// value, the refusal is counted once and logged once per batch, and this
// instance keeps the big value in L1 as the single-key path does.
func TestWriteBackLeavesOutOversized(t *testing.T) {
	ctx := context.Background()
	huge := strings.Repeat("x", 4*oversizeLimit)
	value := func(k string) string {
		if strings.HasPrefix(k, "huge") {
			return huge
		}
		return "v:" + k
	}
	var calls atomic.Int64
	var lastKeys []string
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		calls.Add(1)
		lastKeys = append([]string(nil), keys...)
		m := make(map[string]string, len(keys))
		for _, k := range keys {
			m[k] = value(k)
		}
		return m, nil
	}

	t.Run("batch", func(t *testing.T) {
		mr := miniredis.RunT(t)
		c, logs := newOversizeCache(t, mr)
		keys := []string{"small-1", "small-2", "huge-1", "small-3", "small-4"}
		calls.Store(0)
		before := c.Stats()
		got, err := c.GetManyOrLoad(ctx, keys, load)
		if err != nil {
			t.Fatalf("GetManyOrLoad: %v", err)
		}
		for _, k := range keys {
			if got[k] != value(k) {
				t.Errorf("GetManyOrLoad[%q] = %.20q, want %.20q", k, got[k], value(k))
			}
			if in, want := inRedis(mr, k), k != "huge-1"; in != want {
				t.Errorf("%q in Redis: %v, want %v", k, in, want)
			}
		}
		st := c.Stats()
		if d := st.L2.Store.TooLarge - before.L2.Store.TooLarge; d != 1 {
			t.Errorf("L2.Store.TooLarge moved by %d, want 1", d)
		}
		if d := st.L2.Errors - before.L2.Errors; d != 0 {
			t.Errorf("L2.Errors moved by %d, want 0 (no Redis operation failed)", d)
		}
		warns := logs.FilterMessage(msgUnstored).All()
		if len(warns) != 1 {
			t.Fatalf("%d Warn lines about the oversized value, want 1: %v", len(warns), logs.All())
		}
		fields := warns[0].ContextMap()
		if fields["key"] != "huge-1" || !strings.Contains(fmtField(fields["error"]), "too large") ||
			!strings.Contains(fmtField(fields["error"]), strconv.Itoa(oversizeLimit)) {
			t.Errorf("Warn fields %v, want key huge-1 and an error saying too large and naming the limit", fields)
		}

		// This instance keeps every value in L1: no second load.
		c.local.(interface{ Wait() }).Wait()
		if _, err := c.GetManyOrLoad(ctx, keys, load); err != nil || calls.Load() != 1 {
			t.Errorf("second GetManyOrLoad: err %v, %d loader calls; want nil, 1", err, calls.Load())
		}
		// Another instance finds the small values in Redis and loads only
		// the big one.
		other, _ := newOversizeCache(t, mr)
		if _, err := other.GetManyOrLoad(ctx, keys, load); err != nil {
			t.Fatalf("GetManyOrLoad on another instance: %v", err)
		}
		if calls.Load() != 2 || len(lastKeys) != 1 || lastKeys[0] != "huge-1" {
			t.Errorf("other instance: %d loader calls in all, last with %v; want 2, [huge-1]", calls.Load(), lastKeys)
		}
	})

	t.Run("single", func(t *testing.T) {
		mr := miniredis.RunT(t)
		c, logs := newOversizeCache(t, mr)
		calls.Store(0)
		before := c.Stats()
		one := func(ctx context.Context, k string) (string, error) {
			m, err := load(ctx, []string{k})
			return m[k], err
		}
		got, err := c.GetOrLoad(ctx, "huge-2", one)
		if err != nil || got != huge {
			t.Fatalf("GetOrLoad = %.20q, %v; want the big value", got, err)
		}
		if inRedis(mr, "huge-2") {
			t.Error("the oversized value is in Redis")
		}
		st := c.Stats()
		if d := st.L2.Store.TooLarge - before.L2.Store.TooLarge; d != 1 {
			t.Errorf("L2.Store.TooLarge moved by %d, want 1", d)
		}
		if n := logs.FilterMessage(msgUnstored).Len(); n != 1 {
			t.Errorf("%d Warn lines about the oversized value, want 1: %v", n, logs.All())
		}
		c.local.(interface{ Wait() }).Wait()
		if _, err := c.GetOrLoad(ctx, "huge-2", one); err != nil || calls.Load() != 1 {
			t.Errorf("second GetOrLoad: err %v, %d loader calls; want nil, 1", err, calls.Load())
		}
	})
}

func fmtField(v any) string {
	s, _ := v.(string)
	return s
}

// TestSetManyOversized: an explicit write with one value above MaxValueSize
// fails as a whole, before anything is written, with an error that wraps
// l2.ErrTooLarge and names the key and the limit; it is the caller's
// mistake, not a Redis failure.
func TestSetManyOversized(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c, _ := newOversizeCache(t, mr)
	if err := c.Set(ctx, "set-a", "old"); err != nil {
		t.Fatal(err)
	}
	before := c.Stats()
	err := c.SetMany(ctx, map[string]string{"set-a": "new", "set-huge": strings.Repeat("x", 4*oversizeLimit), "set-b": "new"})
	if !errors.Is(err, l2.ErrTooLarge) || !strings.Contains(err.Error(), `"set-huge"`) ||
		!strings.Contains(err.Error(), strconv.Itoa(oversizeLimit)) {
		t.Fatalf("SetMany: got %v, want l2.ErrTooLarge naming set-huge and the limit %d", err, oversizeLimit)
	}
	for _, k := range []string{"set-huge", "set-b"} {
		if inRedis(mr, k) {
			t.Errorf("%q written to Redis by the failed SetMany", k)
		}
	}
	other, _ := newOversizeCache(t, mr)
	if v, err := other.Get(ctx, "set-a"); err != nil || v != "old" {
		t.Errorf("set-a after the failed SetMany: %q, %v; want old", v, err)
	}
	st := c.Stats()
	if d := st.L2.Errors - before.L2.Errors; d != 0 || st.L2.Breaker != BreakerClosed {
		t.Errorf("L2.Errors moved by %d, breaker %s; want 0, closed (no Redis operation failed)", d, st.L2.Breaker)
	}
}
