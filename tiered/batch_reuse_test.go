package tiered

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// slowMGet holds every MGET for d before sending it, so that the window in
// which other callers can join a batch's flights is wide enough for them
// to do so often. It orders nothing: the test checks what it got, whatever
// the interleaving.
type slowMGet struct{ d time.Duration }

func (slowMGet) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h slowMGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "mget" {
			time.Sleep(h.d)
		}
		return next(ctx, cmd)
	}
}

func (slowMGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestGetManyReusesOnlyUnwaitedFlights: a GetMany led inline hands its
// flights to its next batch unless a caller of another call waited on one
// of them. Gets join the flights of GetMany batches while the leaders go
// straight on to their next batches; every value each caller gets must be
// its key's. Run with -race: a flight reused while a joined Get still
// reads it is a data race as well as a wrong value.
func TestGetManyReusesOnlyUnwaitedFlights(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	w := newCache(t, Config[string]{Redis: newClient(t, mr.Addr()), Namespace: "reuse"})
	const nkeys = 64
	keys := make([]string, nkeys)
	items := make(map[string]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
		items[keys[i]] = "v:" + keys[i]
	}
	if err := w.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	rc := newClient(t, mr.Addr())
	rc.AddHook(slowMGet{d: time.Millisecond})
	c := newCache(t, Config[string]{Redis: rc, Namespace: "reuse"})
	if !c.canLeadInline(ctx) {
		t.Fatal("the reader cannot lead batches inline: the test would not reach the reuse")
	}

	const rounds = 150
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() { // leaders: one batch after another, L1 dropped before each
			defer wg.Done()
			for r := range rounds {
				lo := (g*7 + r*5) % (nkeys - 16)
				window := keys[lo : lo+16]
				c.local.InvalidateAll()
				m, err := c.GetMany(ctx, window)
				if err != nil {
					errs <- fmt.Errorf("GetMany: %w", err)
					return
				}
				if len(m) != len(window) {
					errs <- fmt.Errorf("GetMany(%v): %d values, want %d", window, len(m), len(window))
					return
				}
				for _, k := range window {
					if m[k] != "v:"+k {
						errs <- fmt.Errorf("GetMany: %s = %q, want %q", k, m[k], "v:"+k)
						return
					}
				}
			}
		}()
	}
	for g := range 3 {
		wg.Add(1)
		go func() { // joiners: single Gets of the keys the batches read
			defer wg.Done()
			for r := range rounds * 8 {
				k := keys[(g*11+r*3)%nkeys]
				v, err := c.Get(ctx, k)
				if err != nil {
					errs <- fmt.Errorf("Get(%s): %w", k, err)
					return
				}
				if v != "v:"+k {
					errs <- fmt.Errorf("Get(%s) = %q, want %q", k, v, "v:"+k)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := c.Stats().Loads; st.Coalesced == 0 {
		t.Fatalf("no caller joined another's flight (%+v): the test proved nothing", st)
	}
}
