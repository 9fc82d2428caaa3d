package tiered

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReviewInDoubtLargeSetMany: a SetMany whose invalidation body exceeds
// invalidation.MaxBodySize publishes a clear-all instead of the keys. When
// such a write is in doubt, the writer remembers its keys, but its own
// clear-all message goes to OwnClear, which applies only when a Clear is in
// doubt: the copies the writer refilled before the late script ran are kept
// (until MaxL1TTL), although every other instance moved on.
func TestReviewInDoubtLargeSetMany(t *testing.T) {
	srv := redistest.StartServer(t)
	px := redistest.StartProxy(t, srv.Addr())
	ctx := context.Background()
	w := newCache(t, Config[string]{Redis: newClient(t, px.Addr()), Namespace: "bigdoubt", RedisTimeout: 2 * time.Second})
	o := newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "bigdoubt"})
	pad := strings.Repeat("x", 60)
	items := map[string]string{}
	for i := 0; i < 20000; i++ { // about 1.3 MB of keys: one message cannot name them
		items[fmt.Sprintf("k%05d-%s", i, pad)] = "v1"
	}
	k0 := fmt.Sprintf("k%05d-%s", 0, pad)
	if err := w.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	if v, err := w.Get(ctx, k0); err != nil || v != "v1" {
		t.Fatalf("Get before: %q %v", v, err)
	}
	for k := range items {
		items[k] = "v2"
	}
	release := px.Hold("evalsha")
	if err := w.SetMany(ctx, items); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("SetMany with its script held back: %v, want ErrUnavailable", err)
	}
	v, err := w.Get(ctx, k0)
	if err != nil || v != "v1" {
		t.Fatalf("writer's read while the write is in doubt: %q %v, want v1", v, err)
	}
	release()
	redistest.WaitFor(t, 20*time.Second, "the held script to run (another instance sees v2)", func() bool {
		v, err := o.Get(ctx, k0)
		return err == nil && v == "v2"
	})
	if got := w.doubt.match([]string{k0}, time.Now()); len(got) != 1 {
		t.Fatalf("the write's keys are not in doubt: %v", got)
	}
	eventually(t, "the writer to drop its old copy (its own message was a clear-all)", func() bool {
		v, err := w.Get(ctx, k0)
		return err == nil && v == "v2"
	})
}
