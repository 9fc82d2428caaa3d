package redistest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of three masters, each a Server, and, from
// StartClusterReplicas, one replica of each. Masters and Replicas are the
// roles at creation: Replicas[i] replicates Masters[i]. A failover swaps
// roles without updating them.
type Cluster struct {
	tb       testing.TB
	Masters  []*Server
	Replicas []*Server
}

// StartCluster starts three redis-server processes with cluster mode on, joins
// them with redis-cli --cluster create, waits until every node reports
// cluster_state:ok, and stops them when the test ends. Forming a cluster
// takes seconds, so under go test -short it skips the test.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	return startCluster(tb, false)
}

// StartClusterReplicas is StartCluster with one replica per master, each
// in sync with its master before it returns.
func StartClusterReplicas(tb testing.TB) *Cluster {
	tb.Helper()
	return startCluster(tb, true)
}

func startCluster(tb testing.TB, replicas bool) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("redistest: a cluster takes a few seconds to form; skipped under -short")
	}
	bin := Binary(tb, "redis-server")
	cli := Binary(tb, "redis-cli")
	c := &Cluster{tb: tb}
	n := 3
	if replicas {
		n = 6
	}
	for i := 0; i < n; i++ {
		port, err := clusterPort()
		if err != nil {
			tb.Fatalf("redistest: cluster port: %v", err)
		}
		s := &Server{tb: tb, bin: bin, dir: tb.TempDir(), port: port, extra: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
		}}
		if err := s.start(); err != nil {
			tb.Fatalf("redistest: start cluster node %d: %v", i, err)
		}
		tb.Cleanup(s.stop)
		if i < 3 {
			c.Masters = append(c.Masters, s)
		} else {
			c.Replicas = append(c.Replicas, s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"--cluster", "create"}
	for _, s := range c.Masters {
		args = append(args, s.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.waitOK(ctx); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	// Each replica joins as the replica of its master, by id: redis-cli
	// --cluster create --cluster-replicas would pair them as it likes.
	for i, r := range c.Replicas {
		m := c.Masters[i]
		id, err := m.Do(ctx, "CLUSTER", "MYID")
		if err != nil {
			tb.Fatalf("redistest: CLUSTER MYID on %s: %v", m.Addr(), err)
		}
		out, err := exec.CommandContext(ctx, cli, "--cluster", "add-node", r.Addr(), m.Addr(),
			"--cluster-slave", "--cluster-master-id", fmt.Sprint(id)).CombinedOutput()
		if err != nil {
			tb.Fatalf("redistest: redis-cli --cluster add-node %s as replica of %s: %v\n%s", r.Addr(), m.Addr(), err, out)
		}
	}
	for _, r := range c.Replicas {
		if err := waitReplicaSynced(ctx, r); err != nil {
			tb.Fatalf("redistest: %v", err)
		}
	}
	if err := c.waitOK(ctx); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return c
}

// waitReplicaSynced waits until r reports its link to its master up.
func waitReplicaSynced(ctx context.Context, r *Server) error {
	for {
		v, err := r.Do(ctx, "INFO", "replication")
		if s, ok := v.(string); ok && err == nil && strings.Contains(s, "master_link_status:up") {
			if st, err := r.Do(ctx, "CLUSTER", "INFO"); err == nil && strings.Contains(fmt.Sprint(st), "cluster_state:ok") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica %s not in sync: %v (last error %v)", r.Addr(), ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Addrs lists the masters' host:port addresses.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.Masters))
	for i, s := range c.Masters {
		a[i] = s.Addr()
	}
	return a
}

// Client returns a new cluster client, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

func (c *Cluster) waitOK(ctx context.Context) error {
	for _, s := range c.Masters {
		for {
			info, err := s.Do(ctx, "CLUSTER", "INFO")
			if err == nil {
				if str, ok := info.(string); ok && strings.Contains(str, "cluster_state:ok") {
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("cluster node %s not ok: %v (last error %v)", s.Addr(), ctx.Err(), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	// Every node must also agree on the full slot map before clients use it.
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer cc.Close()
	for {
		err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.Ping(ctx).Err()
		})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster masters not reachable: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// clusterPort picks a port p such that p and its cluster bus port p+10000 are
// both free on 127.0.0.1.
func clusterPort() (int, error) {
	for attempt := 0; attempt < 200; attempt++ {
		p := 20000 + rand.IntN(20000)
		if portFree(p) && portFree(p+10000) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port pair found")
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
