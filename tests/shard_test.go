package tests

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redisinfo"
	"github.com/nearcache/nearcache/internal/redistest"
	"github.com/nearcache/nearcache/tiered"
)

// clusterPublishSent sums CLUSTER INFO's cluster_stats_messages_publish_sent
// (PUBLISH messages sent over the cluster bus) over the masters.
func clusterPublishSent(t *testing.T, cl *redistest.Cluster) uint64 {
	t.Helper()
	var sum uint64
	for _, m := range cl.Masters {
		info, err := m.Client().ClusterInfo(context.Background()).Result()
		if err != nil {
			t.Fatalf("CLUSTER INFO on %s: %v", m.Addr(), err)
		}
		// Absent until the node has sent one.
		if v := redisinfo.Field(info, "cluster_stats_messages_publish_sent"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("cluster_stats_messages_publish_sent %q on %s: %v", v, m.Addr(), err)
			}
			sum += n
		}
	}
	return sum
}

// TestShardedPubSubClusterBus: on the 3-master cluster, writes no longer
// grow the cluster bus's publish traffic (their invalidations go with
// SPUBLISH to the slot's master only), and still reach every other
// instance; with DisableShardedPubSub each write's PUBLISH crosses the bus
// to the two other masters, as before.
func TestShardedPubSubClusterBus(t *testing.T) {
	cl := redistest.StartCluster(t)
	const writes = 300
	for _, plain := range []bool{false, true} {
		name := map[bool]string{false: "sharded", true: "plain"}[plain]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			caches := make([]*tiered.Cache[int], 3)
			for i := range caches {
				caches[i] = newCache(t, tiered.Config[int]{
					Redis:                newClusterClient(t, cl.Addrs(), healthyTimeouts),
					Namespace:            "bus" + name,
					MaxL1TTL:             time.Minute, // only invalidations end an L1 copy here
					DisableShardedPubSub: plain,
				})
			}
			a, others := caches[0], caches[1:]
			keys := make([]string, writes)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%03d", i)
				if err := a.Set(ctx, keys[i], 0); err != nil {
					t.Fatalf("Set %s: %v", keys[i], err)
				}
			}
			for _, c := range others {
				for _, k := range keys {
					holdInL1(t, c, k)
				}
			}
			before := clusterPublishSent(t, cl)
			start := time.Now()
			for i, k := range keys {
				if err := a.Set(ctx, k, i+1); err != nil {
					t.Fatalf("Set %s: %v", k, err)
				}
			}
			for j, c := range others {
				waitFor(t, repairBound, fmt.Sprintf("instance %d to serve every new value", j+1), func() bool {
					for i, k := range keys {
						if v, err := c.Get(ctx, k); err != nil || v != i+1 {
							return false
						}
					}
					return true
				})
			}
			took := time.Since(start)
			grew := clusterPublishSent(t, cl) - before
			var applied, dups, alls uint64
			for _, c := range others {
				st := c.Stats().Invalidation
				applied, dups = applied+st.Applied, dups+st.Duplicates
				for _, n := range st.InvalidateAll {
					alls += n
				}
			}
			t.Logf("%s: %d writes on 3 masters: cluster_stats_messages_publish_sent +%d; 2 other instances applied %d messages, %d duplicates, %d InvalidateAll; all served the new values %v after the first write",
				name, writes, grew, applied, dups, alls, took)
			if plain {
				if grew < 2*writes {
					t.Errorf("plain: publish traffic grew by %d, want at least %d (each PUBLISH crosses the bus to 2 masters): the measure does not see it", grew, 2*writes)
				}
				return
			}
			if grew != 0 {
				t.Errorf("sharded: publish traffic over the cluster bus grew by %d over %d writes, want 0", grew, writes)
			}
			if dups != 0 {
				t.Errorf("sharded: %d duplicates, want 0 (one copy per message)", dups)
			}
		})
	}
}

// reshard moves n slots from one master to another with redis-cli
// --cluster reshard (keys included, MIGRATE by MIGRATE), and returns how
// long it took.
func reshard(t *testing.T, cl *redistest.Cluster, from, to *redistest.Server, n int) time.Duration {
	t.Helper()
	id := func(s *redistest.Server) string {
		v, err := s.Client().ClusterMyID(context.Background()).Result()
		if err != nil {
			t.Fatalf("CLUSTER MYID on %s: %v", s.Addr(), err)
		}
		return v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, redistest.Binary(t, "redis-cli"), "--cluster", "reshard", from.Addr(),
		"--cluster-from", id(from), "--cluster-to", id(to), "--cluster-slots", strconv.Itoa(n),
		"--cluster-yes", "--cluster-pipeline", "100").CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster reshard: %v\n%s", err, tailLines(string(out), 20))
	}
	return time.Since(start)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestConsistencyClusterReshard runs the consistency checker on the
// 3-master cluster while redis-cli moves a third of the slots (the
// checker's keys among them, values, sequence and tag keys with them) from
// one master to another and then on to the third: every shard channel of a
// moved slot leaves its old master's subscription, and no read may be
// stale beyond the repair bound. Writes and reads refused during a
// migration (TRYAGAIN, or an ASK left unresolved by the client's retries)
// are counted until the reshard ends; none may fail after.
func TestConsistencyClusterReshard(t *testing.T) {
	cl := redistest.StartCluster(t)
	fault := checkerFault{run: func(t *testing.T, caches []*tiered.Cache[int64], since func() time.Duration) time.Duration {
		slots, err := cl.Client().ClusterSlots(context.Background()).Result()
		if err != nil {
			t.Fatalf("CLUSTER SLOTS: %v", err)
		}
		owner := map[string]*redistest.Server{}
		for _, m := range cl.Masters {
			owner[m.Addr()] = m
		}
		first := owner[slots[0].Nodes[0].Addr]
		var second, third *redistest.Server
		for _, m := range cl.Masters {
			switch {
			case m == first:
			case second == nil:
				second = m
			default:
				third = m
			}
		}
		d1 := reshard(t, cl, first, second, 2000)
		d2 := reshard(t, cl, second, third, 2000)
		t.Logf("reshard: 2000 slots %s -> %s in %v, then 2000 %s -> %s in %v", first.Addr(), second.Addr(), d1, second.Addr(), third.Addr(), d2)
		for i, c := range caches {
			s := c.Stats().Invalidation
			t.Logf("instance %d: gaps %d, lost tails %d, InvalidateAll %v, healthy %v", i, s.Gaps, s.LostTails, s.InvalidateAll, c.Stats().Health.Healthy)
		}
		return since()
	}, judgeAll: true}
	runChecker(t, "chkreshard", checkerDuration(t, 10*time.Second), repairBound, func(t *testing.T) redis.UniversalClient {
		return newClusterClient(t, cl.Addrs(), healthyTimeouts)
	}, fault)
}
