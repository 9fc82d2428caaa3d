package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nearcache/nearcache/internal/redisinfo"
)

// sentinelMaster is the name under which the Sentinel monitors the master.
const sentinelMaster = "nearcache"

// Sentinel is a master, one replica of it and one redis-server --sentinel
// process that monitors them (quorum 1), each a Server owned by the test.
type Sentinel struct {
	tb       testing.TB
	sentinel *Server

	mu      sync.Mutex // guards master and replica
	master  *Server
	replica *Server
}

// StartSentinel starts a master, a replica of it (--replicaof) and a
// Sentinel that monitors them, waits until the replica is in sync and the
// Sentinel knows both, and stops them when the test ends. The Sentinel
// notices a dead master after 1 s. Forming the set takes a second or two,
// so under go test -short it skips the test.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	if testing.Short() {
		tb.Skip("redistest: a Sentinel set takes a few seconds to form; skipped under -short")
	}
	master := StartServer(tb)
	replica := StartServer(tb, WithArgs("--replicaof", "127.0.0.1", strconv.Itoa(master.Port())))
	st := &Sentinel{tb: tb, master: master, replica: replica}

	bin := Binary(tb, "redis-server")
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if s.port, err = FreePort(); err != nil {
			tb.Fatalf("redistest: free port: %v", err)
		}
		// Sentinel rewrites its configuration file, so it is written
		// afresh for each attempt.
		s.conf = filepath.Join(s.dir, "sentinel.conf")
		conf := strings.Join([]string{
			"port " + strconv.Itoa(s.port),
			"bind 127.0.0.1",
			"protected-mode no",
			"dir " + s.dir,
			"logfile " + filepath.Join(s.dir, "redis.log"),
			fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1", sentinelMaster, master.Port()),
			"sentinel down-after-milliseconds " + sentinelMaster + " 1000",
			"sentinel failover-timeout " + sentinelMaster + " 10000",
			"sentinel parallel-syncs " + sentinelMaster + " 1",
			"",
		}, "\n")
		if err = os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
			tb.Fatalf("redistest: write sentinel.conf: %v", err)
		}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("redistest: start redis-server --sentinel: %v", err)
	}
	tb.Cleanup(s.stop)
	st.sentinel = s

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.waitReady(ctx); err != nil {
		tb.Fatalf("redistest: sentinel set: %v", err)
	}
	return st
}

// MasterName is the name under which the Sentinel knows the master
// (FailoverOptions.MasterName).
func (st *Sentinel) MasterName() string { return sentinelMaster }

// SentinelAddrs lists the Sentinels' host:port addresses
// (FailoverOptions.SentinelAddrs).
func (st *Sentinel) SentinelAddrs() []string { return []string{st.sentinel.Addr()} }

// SentinelServer is the Sentinel process.
func (st *Sentinel) SentinelServer() *Server { return st.sentinel }

// Master is the server that is master now (after a Failover, the former
// replica).
func (st *Sentinel) Master() *Server {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.master
}

// Replica is the server that is not the master now.
func (st *Sentinel) Replica() *Server {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.replica
}

// FailoverClient returns a new go-redis failover client of the set, with
// ContextTimeoutEnabled and short timeouts, closed when the test ends.
func (st *Sentinel) FailoverClient() *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            sentinelMaster,
		SentinelAddrs:         st.SentinelAddrs(),
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		DialTimeout:           time.Second,
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
		PoolTimeout:           time.Second,
	})
	st.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Failover runs SENTINEL FAILOVER and waits until the Sentinel reports the
// former replica as master and that server has taken the master role. It
// returns the new master. The former master keeps its role (and its
// clients) until the Sentinel reconfigures it as a replica, about 10 s
// later.
func (st *Sentinel) Failover(ctx context.Context) (*Server, error) {
	st.mu.Lock()
	oldMaster, next := st.master, st.replica
	st.mu.Unlock()
	if _, err := st.sentinel.Do(ctx, "SENTINEL", "FAILOVER", sentinelMaster); err != nil {
		return nil, fmt.Errorf("SENTINEL FAILOVER: %w", err)
	}
	err := poll(ctx, func() error {
		addr, err := st.masterAddr(ctx)
		if err != nil {
			return err
		}
		if addr != next.Addr() {
			return fmt.Errorf("sentinel reports master %s, want %s", addr, next.Addr())
		}
		if role := serverRole(ctx, next); role != "master" {
			return fmt.Errorf("%s has role %q, want master", next.Addr(), role)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	st.master, st.replica = next, oldMaster
	st.mu.Unlock()
	return next, nil
}

func (st *Sentinel) masterAddr(ctx context.Context) (string, error) {
	v, err := st.sentinel.Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinelMaster)
	if err != nil {
		return "", err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return "", fmt.Errorf("GET-MASTER-ADDR-BY-NAME: unexpected reply %v", v)
	}
	return fmt.Sprintf("%v:%v", a[0], a[1]), nil
}

// waitReady waits until the replica is in sync with the master and the
// Sentinel monitors the master and knows the replica as a healthy replica.
func (st *Sentinel) waitReady(ctx context.Context) error {
	return poll(ctx, func() error {
		info, err := st.replica.Do(ctx, "INFO", "replication")
		if err != nil {
			return err
		}
		if s, _ := info.(string); redisinfo.Field(s, "master_link_status") != "up" {
			return fmt.Errorf("replica %s not in sync", st.replica.Addr())
		}
		addr, err := st.masterAddr(ctx)
		if err != nil {
			return err
		}
		if addr != st.master.Addr() {
			return fmt.Errorf("sentinel reports master %s, want %s", addr, st.master.Addr())
		}
		v, err := st.sentinel.Do(ctx, "SENTINEL", "REPLICAS", sentinelMaster)
		if err != nil {
			return err
		}
		reps, _ := v.([]any)
		for _, r := range reps {
			f := sentinelFields(r)
			if f["ip"]+":"+f["port"] == st.replica.Addr() && f["flags"] == "slave" && f["master-link-status"] == "ok" {
				return nil
			}
		}
		return fmt.Errorf("sentinel does not know replica %s as healthy yet: %v", st.replica.Addr(), v)
	})
}

// sentinelFields turns one entry of SENTINEL REPLICAS (a flat list of
// names and values in RESP2, a map in RESP3) into a map.
func sentinelFields(v any) map[string]string {
	f := map[string]string{}
	switch e := v.(type) {
	case []any:
		for i := 0; i+1 < len(e); i += 2 {
			f[fmt.Sprint(e[i])] = fmt.Sprint(e[i+1])
		}
	case map[any]any:
		for k, v := range e {
			f[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	}
	return f
}

// serverRole is the role INFO replication reports ("" on error).
func serverRole(ctx context.Context, s *Server) string {
	info, err := s.Do(ctx, "INFO", "replication")
	if err != nil {
		return ""
	}
	str, _ := info.(string)
	return redisinfo.Field(str, "role")
}

// poll calls cond every 20 ms until it returns nil or ctx ends; then it
// returns cond's last error.
func poll(ctx context.Context, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
