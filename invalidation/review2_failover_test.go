package invalidation_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

// timedHandler remembers when each key was invalidated and when each
// InvalidateAll ran.
type timedHandler struct {
	mu   sync.Mutex
	keys map[string]time.Time
	alls []time.Time
}

func newTimedHandler() *timedHandler { return &timedHandler{keys: map[string]time.Time{}} }

func (h *timedHandler) InvalidateKeys(keys []string) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range keys {
		if _, ok := h.keys[k]; !ok {
			h.keys[k] = now
		}
	}
}

func (h *timedHandler) InvalidateAll(invalidation.Cause) {
	h.mu.Lock()
	h.alls = append(h.alls, time.Now())
	h.mu.Unlock()
}

// covered reports whether a write acknowledged at ack reached the handler
// or was followed by an InvalidateAll.
func (h *timedHandler) covered(key string, ack time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.keys[key]; ok {
		return true
	}
	for _, a := range h.alls {
		if a.After(ack) {
			return true
		}
	}
	return false
}

// TestReview2FailoverWritesCovered: two subscribers and a writer that
// publishes on one partition of master 0 every few milliseconds while
// master 0 fails over to its replica (CLUSTER FAILOVER, or the master
// killed and promoted after cluster-node-timeout). Every acknowledged
// write must reach each subscriber, or be followed there by an
// InvalidateAll. Health is sampled too: a subscriber healthy at a write's
// acknowledgement that neither hears it nor repairs afterwards is stale
// beyond the contract.
func TestReview2FailoverWritesCovered(t *testing.T) {
	for _, mode := range []string{"manual", "kill"} {
		t.Run(mode, func(t *testing.T) {
			// Registered first, so it runs last: go-redis's pool retries
			// dialing the killed master in a goroutine that sleeps a
			// second between attempts, even after the client closed.
			t.Cleanup(func() {
				redistest.WaitFor(t, 10*time.Second, "go-redis's dial retries to end", func() bool {
					buf := make([]byte, 1<<20)
					return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*ConnPool).tryDial")
				})
			})
			cl := redistest.StartClusterReplicas(t)
			c := cl.Client()
			ctx := context.Background()
			slots, err := c.ClusterSlots(ctx).Result()
			if err != nil {
				t.Fatal(err)
			}
			p := -1
			for _, r := range slots {
				if r.Nodes[0].Addr == cl.Masters[0].Addr() {
					p = r.Start + 5
				}
			}
			if p < 0 {
				t.Fatalf("no slot range of %s in %v", cl.Masters[0].Addr(), slots)
			}
			hs := []*timedHandler{newTimedHandler(), newTimedHandler()}
			var subs []*invalidation.Bus
			for _, h := range hs {
				subs = append(subs, startBus(t, c, invalidation.Config{Namespace: "t", AntiEntropyInterval: time.Hour, Logger: zaptest.NewLogger(t)}, h))
			}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("health: %+v %+v; stats %+v", subs[0].Health(), subs[1].Health(), subs[0].Stats())
				}
			})
			w, err := invalidation.New(c, invalidation.Config{Namespace: "t"}, newRecorder())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })
			publishDelete(t, w, p, "before")
			waitFor(t, 5*time.Second, "the subscribers to hear the first write", func() bool {
				return hs[0].covered("before", time.Now()) && hs[1].covered("before", time.Now())
			})

			type ack struct {
				key     string
				at      time.Time
				healthy [2]bool
			}
			var (
				mu   sync.Mutex
				acks []ack
			)
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(3 * time.Millisecond):
					}
					k := fmt.Sprintf("w%d", i)
					wctx, cancel := context.WithTimeout(ctx, time.Second)
					err := w.Publish(wctx, p, w.EncodeDelete(p, []string{k}))
					cancel()
					if err != nil {
						continue
					}
					a := ack{key: k, at: time.Now(), healthy: [2]bool{subs[0].Health().Healthy, subs[1].Health().Healthy}}
					mu.Lock()
					acks = append(acks, a)
					mu.Unlock()
				}
			}()
			time.Sleep(200 * time.Millisecond)
			switch mode {
			case "manual":
				if err := cl.Replicas[0].Client().Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
					t.Fatalf("CLUSTER FAILOVER: %v", err)
				}
			case "kill":
				cl.Masters[0].Kill()
			}
			waitFor(t, 30*time.Second, "the replica to become master", func() bool {
				info, err := cl.Replicas[0].Client().Info(ctx, "replication").Result()
				return err == nil && strings.Contains(info, "role:master")
			})
			// AntiEntropyInterval is an hour: the masters watcher must follow
			// the promotion without waiting for its next scheduled look.
			waitFor(t, 20*time.Second, "the subscribers healthy again after the promotion", func() bool {
				return subs[0].Health().Healthy && subs[1].Health().Healthy
			})
			time.Sleep(500 * time.Millisecond)
			close(stop)
			<-done
			time.Sleep(300 * time.Millisecond) // the last messages' delivery
			mu.Lock()
			defer mu.Unlock()
			missed := 0
			for _, a := range acks {
				for i, h := range hs {
					if !h.covered(a.key, a.at) {
						missed++
						if missed <= 10 {
							t.Errorf("subscriber %d: write %s acknowledged at %s (subscriber healthy then: %v) neither heard nor followed by an InvalidateAll",
								i, a.key, a.at.Format("15:04:05.000"), a.healthy[i])
						}
					}
				}
			}
			t.Logf("%d acknowledged writes, %d uncovered deliveries", len(acks), missed)
		})
	}
}
