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

// Cluster is a Redis Cluster of three masters (no replicas), each a Server.
type Cluster struct {
	tb      testing.TB
	Masters []*Server
}

// StartCluster starts three redis-server processes with cluster mode on, joins
// them with redis-cli --cluster create, waits until every node reports
// cluster_state:ok, and stops them when the test ends. Forming a cluster
// takes seconds, so under go test -short it skips the test.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("redistest: a cluster takes a few seconds to form; skipped under -short")
	}
	bin := Binary(tb, "redis-server")
	cli := Binary(tb, "redis-cli")
	c := &Cluster{tb: tb}
	for i := 0; i < 3; i++ {
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
		c.Masters = append(c.Masters, s)
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Masters {
		args = append(args, s.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.waitOK(ctx); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return c
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
