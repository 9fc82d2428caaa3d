package l2

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/hashslot"
	"github.com/nearcache/nearcache/internal/redistest"
)

// TestCluster runs the cluster-specific behaviour against a real 3-master
// Redis Cluster: cross-slot batches, SCAN on every master, the notify script
// on several slots.
func TestCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	ctx := context.Background()
	s := openStore(t, Config{Addrs: cl.Addrs(), KeyPrefix: "app:"})
	if !s.IsCluster() {
		t.Fatalf("Open with 3 addresses: want a cluster store")
	}
	raw := rawClient(t, cl.Addrs(), true)

	// Keys spread over every master.
	items := map[string]Entry{}
	var keys []string
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		items[k] = Entry{Value: []byte(k), TTL: time.Minute}
	}
	if err := s.SetMany(ctx, items); err != nil {
		t.Fatalf("SetMany across slots: %v", err)
	}
	perMaster := map[string]int{}
	var mu sync.Mutex
	err := raw.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		mu.Lock()
		perMaster[m.Options().Addr] = int(n)
		mu.Unlock()
		return err
	})
	if err != nil || len(perMaster) != 3 {
		t.Fatalf("per-master sizes: %v %v", perMaster, err)
	}
	for a, n := range perMaster {
		if n == 0 {
			t.Fatalf("master %s holds no keys; the test needs keys on every master: %v", a, perMaster)
		}
	}

	t.Run("GetManyCrossSlot", func(t *testing.T) {
		got, err := s.GetMany(ctx, append(slices.Clone(keys), "missing-1", "missing-2"))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(keys) {
			t.Fatalf("GetMany: got %d entries, want %d", len(got), len(keys))
		}
		for _, k := range keys {
			if string(got[k].Value) != k {
				t.Fatalf("GetMany[%s] = %q", k, got[k].Value)
			}
		}
	})

	t.Run("KeysAcrossMasters", func(t *testing.T) {
		got, err := s.Keys(ctx, "k1*")
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, k := range keys {
			if strings.HasPrefix(k, "k1") {
				want++
			}
		}
		if len(got) != want {
			t.Fatalf("Keys(k1*): got %d, want %d", len(got), want)
		}
	})

	t.Run("NotifyOnSeveralSlots", func(t *testing.T) {
		next := subscribe(t, raw, "inv")
		batch := map[string]Entry{}
		slots := map[int]bool{}
		for i := 0; i < 5; i++ {
			k := fmt.Sprintf("n%d", i)
			batch[k] = Entry{Value: []byte("v")}
			slots[hashslot.Slot("app:"+k)] = true
		}
		if err := s.SetMany(ctx, batch, Notify(testNotify("inv"))); err != nil {
			t.Fatalf("SetMany with notify across slots: %v", err)
		}
		seen := map[int]bool{}
		for range slots {
			m, ok := next()
			if !ok {
				t.Fatalf("missing notifications: got %d of %d", len(seen), len(slots))
			}
			var p int
			fmt.Sscanf(m, "%d|", &p)
			if !strings.HasSuffix(m, "|1") {
				t.Fatalf("first notification of slot %d: %q, want sequence 1", p, m)
			}
			seen[p] = true
		}
		for sl := range slots {
			if !seen[sl] {
				t.Fatalf("no notification for slot %d", sl)
			}
			if v, err := raw.Get(ctx, seqKey(sl)).Result(); err != nil || v != "1" {
				t.Fatalf("sequence of slot %d: %q %v", sl, v, err)
			}
		}
		n, err := s.DeleteMany(ctx, []string{"n0", "n1", "n2"}, Notify(testNotify("inv")))
		if err != nil || n != 3 {
			t.Fatalf("DeleteMany with notify: %d %v", n, err)
		}
	})

	t.Run("Clear", func(t *testing.T) {
		raw.Set(ctx, "foreign", "keep", 0)
		n, err := s.Clear(ctx)
		if err != nil || n < int64(len(keys)) {
			t.Fatalf("Clear: %d %v", n, err)
		}
		if left, _ := s.Keys(ctx, ""); len(left) != 0 {
			t.Fatalf("keys left: %v", left)
		}
		if v, _ := raw.Get(ctx, "foreign").Result(); v != "keep" {
			t.Fatalf("Clear removed a foreign key")
		}
	})

	t.Run("ServerStatsPerMaster", func(t *testing.T) {
		info, err := s.ServerStats(ctx)
		if err != nil || len(info) != 3 {
			t.Fatalf("ServerStats: %d %v", len(info), err)
		}
	})
}
