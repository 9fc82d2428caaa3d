package invalidation_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/invalidation"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Handler that remembers what it was told.
type recorder struct {
	mu    sync.Mutex
	keys  []string             // guarded by mu
	alls  []invalidation.Cause // guarded by mu
	onKey func(keys []string)  // optional, called outside mu
	calls chan struct{}        // poked (non-blocking) after every call
}

func newRecorder() *recorder { return &recorder{calls: make(chan struct{}, 1)} }

func (r *recorder) InvalidateKeys(keys []string) {
	if r.onKey != nil {
		r.onKey(keys)
	}
	r.mu.Lock()
	r.keys = append(r.keys, keys...)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) InvalidateAll(c invalidation.Cause) {
	r.mu.Lock()
	r.alls = append(r.alls, c)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.calls <- struct{}{}:
	default:
	}
}

func (r *recorder) Keys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.keys)
}

func (r *recorder) Alls() []invalidation.Cause {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.alls)
}

func (r *recorder) HasAll(c invalidation.Cause) bool { return slices.Contains(r.Alls(), c) }

// waitFor polls cond until it holds or the deadline passes: the events it
// waits for cross a network, so there is no gate to wait on.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, d, what, cond)
}

// startBus creates and starts a bus, closed when the test ends.
func startBus(t *testing.T, c redis.UniversalClient, cfg invalidation.Config, h invalidation.Handler) *invalidation.Bus {
	t.Helper()
	b, err := invalidation.New(c, cfg, h)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return b
}

// startMini starts a miniredis server and returns a client for it.
func startMini(t *testing.T) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return mr, c
}

func publishDelete(t *testing.T, b *invalidation.Bus, partition int, keys ...string) {
	t.Helper()
	if err := b.Publish(context.Background(), partition, b.EncodeDelete(partition, keys)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func miniredisRun() (*miniredis.Miniredis, error) { return miniredis.Run() }

// handlerFuncs adapts two funcs to a Handler.
type handlerFuncs struct {
	keys func([]string)
	all  func(invalidation.Cause)
}

func (h handlerFuncs) InvalidateKeys(k []string)          { h.keys(k) }
func (h handlerFuncs) InvalidateAll(c invalidation.Cause) { h.all(c) }
