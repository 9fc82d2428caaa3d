package redistest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

func TestSentinelFailover(t *testing.T) {
	st := StartSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := st.FailoverClient()
	if err := c.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatalf("set through the failover client: %v", err)
	}
	old, next := st.Master(), st.Replica()
	if got, err := old.Client().Get(ctx, "k").Result(); err != nil || got != "before" {
		t.Fatalf("get on the master %s: %q, %v; want \"before\"", old.Addr(), got, err)
	}
	// The replica has the write once it has replicated it.
	WaitFor(t, 5*time.Second, "the replica to have k", func() bool {
		v, err := next.Client().Get(ctx, "k").Result()
		return err == nil && v == "before"
	})
	nm, err := st.Failover(ctx)
	if err != nil {
		t.Fatalf("Failover: %v", err)
	}
	if nm != next || st.Master() != next || st.Replica() != old {
		t.Fatalf("after Failover: master %s, replica %s; want %s, %s", st.Master().Addr(), st.Replica().Addr(), next.Addr(), old.Addr())
	}
	// The failover client follows: a write lands on the new master.
	WaitFor(t, 10*time.Second, "a write through the failover client to reach the new master", func() bool {
		if err := c.Set(ctx, "k", "after", 0).Err(); err != nil {
			return false
		}
		v, err := next.Client().Get(ctx, "k").Result()
		return err == nil && v == "after"
	})
}

func TestClusterReplicas(t *testing.T) {
	cl := StartClusterReplicas(t)
	ctx := context.Background()
	for i, r := range cl.Replicas {
		info, err := r.Client().Info(ctx, "replication").Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := "master_port:" + strconv.Itoa(cl.Masters[i].Port()); !strings.Contains(info, "role:slave") || !strings.Contains(info, want) {
			t.Errorf("replica %d (%s): want role:slave and %s, INFO says\n%s", i, r.Addr(), want, info)
		}
	}
	if err := cl.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
