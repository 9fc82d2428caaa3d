package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/nearcache/nearcache/internal/redistest"
)

// TestReviewClearRacingWrites: Clear on one instance racing with Sets and
// Deletes on another and reads everywhere; after everything returns, every
// instance converges on what Redis holds.
func TestReviewClearRacingWrites(t *testing.T) {
	srv := redistest.StartServer(t)
	ctx := context.Background()
	var cs []*Cache[string]
	for range 3 {
		cs = append(cs, newCache(t, Config[string]{Redis: newClient(t, srv.Addr()), Namespace: "clr"}))
	}
	keys := make([]string, 300)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = c.Get(ctx, keys[i%len(keys)])
			}
		}()
	}
	var writers sync.WaitGroup
	writers.Add(2)
	go func() {
		defer writers.Done()
		for round := 0; round < 20; round++ {
			items := map[string]string{}
			for _, k := range keys {
				items[k] = fmt.Sprintf("%s@%d", k, round)
			}
			if err := cs[1].SetMany(ctx, items); err != nil {
				t.Error(err)
			}
			if err := cs[1].Delete(ctx, keys[round]); err != nil {
				t.Error(err)
			}
		}
	}()
	go func() {
		defer writers.Done()
		for range 10 {
			if err := cs[0].Clear(ctx); err != nil {
				t.Error(err)
			}
		}
	}()
	writers.Wait()
	close(stop)
	wg.Wait()
	for _, k := range keys {
		e, err := cs[0].l2.Read(ctx, k)
		gone := err != nil || e.Tombstone
		for i, c := range cs {
			eventually(t, fmt.Sprintf("instance %d to agree with Redis on %s", i, k), func() bool {
				v, gerr := c.Get(ctx, k)
				if gone {
					return errors.Is(gerr, ErrNotFound)
				}
				return gerr == nil && v == string(e.Value)
			})
		}
	}
}
