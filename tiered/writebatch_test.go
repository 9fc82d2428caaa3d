package tiered

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestWriteBatchConfig checks the bounds of WriteBatchWindow.
func TestWriteBatchConfig(t *testing.T) {
	for _, w := range []time.Duration{-time.Millisecond, 11 * time.Millisecond} {
		_, err := New(Config[string]{WriteBatchWindow: w})
		if err == nil || !strings.Contains(err.Error(), "WriteBatchWindow") {
			t.Errorf("New(WriteBatchWindow %v) = %v, want an error naming it", w, err)
		}
	}
	b, _ := json.Marshal(Config[string]{WriteBatchWindow: time.Millisecond})
	if !strings.Contains(string(b), `"WriteBatchWindow":1000000`) {
		t.Fatalf("JSON %s lacks WriteBatchWindow", b)
	}
}

// TestWriteBatchSets: Sets that overlap on one instance share scripts and
// messages (Stats.L2.Store.Batches), and another instance holding every
// old value in L1 serves every new one once the writes have returned
// and their messages arrived; the writer reads its own writes at once.
func TestWriteBatchSets(t *testing.T) {
	srv := redistest.StartServer(t)
	cfg := func() Config[string] {
		return Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "wb", MaxL1TTL: time.Hour,
			RedisTimeout: 5 * time.Second, WriteBatchWindow: 2 * time.Millisecond}
	}
	w, r := newCache(t, cfg()), newCache(t, cfg())
	ctx := context.Background()
	const keys, writers = 200, 16
	for i := range keys {
		if err := w.Set(ctx, fmt.Sprint("k", i), "old"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range keys {
		k := fmt.Sprint("k", i)
		redistest.WaitFor(t, 5*time.Second, "the reader to hold "+k, func() bool {
			before := r.Stats().L1.Hits
			v, err := r.Get(ctx, k)
			return err == nil && v == "old" && r.Stats().L1.Hits > before
		})
	}
	for round := 0; r.Stats().L2.Store.Batches+w.Stats().L2.Store.Batches == 0; round++ {
		if round == 20 {
			t.Fatal("20 rounds of 16 concurrent writers never shared a script")
		}
		var wg sync.WaitGroup
		errs := make(chan error, keys)
		for g := range writers {
			wg.Go(func() {
				for i := g; i < keys; i += writers {
					k := fmt.Sprint("k", i)
					v := fmt.Sprint("new", round)
					if err := w.Set(ctx, k, v); err != nil {
						errs <- err
						return
					}
					if got, err := w.Get(ctx, k); err != nil || got != v {
						errs <- fmt.Errorf("the writer's Get(%s) after its Set = %q, %v; want %s", k, got, err, v)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		want := fmt.Sprint("new", round)
		redistest.WaitFor(t, 5*time.Second, "the reader to serve every new value", func() bool {
			for i := range keys {
				if v, err := r.Get(ctx, fmt.Sprint("k", i)); err != nil || v != want {
					return false
				}
			}
			return true
		})
	}
	st := w.Stats().L2.Store
	t.Logf("%d writes shared %d scripts; %d notifications for %d keys written", st.BatchedWrites, st.Batches, st.Notifications, st.Sets)
	if st.Notifications >= st.Sets {
		t.Fatalf("%d notifications for %d keys written: batching saved none", st.Notifications, st.Sets)
	}
	// Deletes batch as well; the reader drops every copy it held.
	for i := range keys {
		if _, err := r.Get(ctx, fmt.Sprint("k", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := w.Stats().L2.Store
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := g; i < keys; i += writers {
				if err := w.Delete(ctx, fmt.Sprint("k", i)); err != nil {
					t.Errorf("Delete: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	redistest.WaitFor(t, 5*time.Second, "the reader to miss every deleted key", func() bool {
		for i := range keys {
			if _, err := r.Get(ctx, fmt.Sprint("k", i)); !errors.Is(err, ErrNotFound) {
				return false
			}
		}
		return true
	})
	after := w.Stats().L2.Store
	t.Logf("deletes: %d of %d shared %d scripts", after.BatchedWrites-before.BatchedWrites, keys, after.Batches-before.Batches)
	if after.Deletes-before.Deletes != keys {
		t.Fatalf("%d keys deleted, want %d", after.Deletes-before.Deletes, keys)
	}
}
