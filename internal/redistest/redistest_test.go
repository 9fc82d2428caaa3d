package redistest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/nearcache/nearcache/internal/redisinfo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestServerKillRestartPause(t *testing.T) {
	s := StartServer(t)
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, ReadTimeout: 200 * time.Millisecond})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	id1, err := c.Do(ctx, "INFO", "server").Text()
	if err != nil {
		t.Fatal(err)
	}
	s.Pause()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatalf("ping on a paused server: got nil error, want a timeout")
	}
	s.Resume()
	s.Restart()
	c2 := s.Client()
	if err := c2.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("get after restart without persistence: got %v, want redis.Nil", err)
	}
	id2, err := c2.Do(ctx, "INFO", "server").Text()
	if err != nil {
		t.Fatal(err)
	}
	if redisinfo.Field(id1, "run_id") == redisinfo.Field(id2, "run_id") || redisinfo.Field(id1, "run_id") == "" {
		t.Fatalf("run id did not change across restart: %q", redisinfo.Field(id1, "run_id"))
	}
}

func TestCluster(t *testing.T) {
	cl := StartCluster(t)
	ctx := context.Background()
	c := cl.Client()
	var masters atomic.Int32
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		masters.Add(1)
		return nil
	})
	if err != nil || masters.Load() != 3 {
		t.Fatalf("masters: got %d (%v), want 3", masters.Load(), err)
	}
	for i := 0; i < 50; i++ {
		k := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
}
