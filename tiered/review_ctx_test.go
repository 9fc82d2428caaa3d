package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReviewDeadCtxContract: a write whose ctx has ended (even one that
// would fail for another reason, or on a Cache without Redis) returns an
// error that errors.Is the ctx's error; an L1 hit ignores ctx, a miss does
// not.
func TestReviewDeadCtxContract(t *testing.T) {
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "dead", MaxValueSize: 64})
	local := newCache(t, Config[string]{Namespace: "dead"})
	bg := context.Background()
	// A subscription confirmed after New returned empties L1: wait for it.
	redistest.WaitFor(t, 5*time.Second, "the invalidation stream to be healthy", func() bool { return c.Stats().Health.Healthy })
	if err := c.Set(bg, "k", "v"); err != nil {
		t.Fatal(err)
	}
	// The fill reaches L1 asynchronously: wait until a read is an L1 hit.
	redistest.WaitFor(t, 5*time.Second, "k held in L1", func() bool {
		before := c.Stats().L1.Hits
		v, err := c.Get(bg, "k")
		return err == nil && v == "v" && c.Stats().L1.Hits > before
	})
	dead, cancel := context.WithCancel(bg)
	cancel()
	// Reads served from L1 do no I/O and do not look at ctx (the hit path
	// stays one lookup); a miss waits on ctx.
	if v, err := c.Get(dead, "k"); err != nil || v != "v" {
		t.Errorf("Get (an L1 hit) with a cancelled ctx: %q %v, want the value (documented: L1 hits ignore ctx)", v, err)
	}
	// Many misses: a flight that raced the ended ctx (and found the key
	// absent) once answered ErrNotFound instead.
	for i := range 200 {
		if _, err := c.Get(dead, fmt.Sprintf("absent-%d", i)); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get (a miss, try %d) with a cancelled ctx: err %v, want one that Is context.Canceled", i, err)
		}
		if _, err := c.GetMany(dead, []string{fmt.Sprintf("absent-%d", i), "k"}); !errors.Is(err, context.Canceled) {
			t.Fatalf("GetMany (a miss, try %d) with a cancelled ctx: err %v, want one that Is context.Canceled", i, err)
		}
	}
	if err := c.SetMany(dead, map[string]string{"big": strings.Repeat("x", 100)}); !errors.Is(err, context.Canceled) {
		t.Errorf("SetMany (oversized) with a cancelled ctx: err %v, want one that Is context.Canceled", err)
	}
	if err := local.Set(dead, "k", "v"); !errors.Is(err, context.Canceled) {
		t.Errorf("Set on a Cache without Redis with a cancelled ctx: err %v, want one that Is context.Canceled", err)
	}
}

// TestReviewBatchErrorNamesKeys: a failed SetMany or Delete of several keys
// names how many keys and the first ones (it said `set "":` before).
func TestReviewBatchErrorNamesKeys(t *testing.T) {
	mr := miniredis.RunT(t)
	c := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "msg", BreakerFailures: NoBreaker})
	mr.Close()
	bg := context.Background()
	err := c.SetMany(bg, map[string]string{"alpha": "1", "beta": "2"})
	if err == nil || strings.Contains(err.Error(), `""`) || !(strings.Contains(err.Error(), "alpha") || strings.Contains(err.Error(), "2 keys")) {
		t.Errorf("SetMany error %q: want it to name the keys (or their count), not an empty key", err)
	}
	err = c.Delete(bg, "alpha", "beta")
	if err == nil || strings.Contains(err.Error(), `""`) {
		t.Errorf("Delete of two keys: error %q: want it to name the keys (or their count), not an empty key", err)
	}
}
