// Package redistest starts real redis-server processes for tests: a standalone
// server, a 3-master Redis Cluster, and a Sentinel set (master, replica and
// one redis-server --sentinel) with a helper to fail over, each on free
// loopback ports in temporary directories, with helpers to kill, restart and
// pause them.
//
// Every server is started by the test that uses it and stopped by t.Cleanup, so
// tests may FLUSHDB, CLIENT KILL or SHUTDOWN it freely: no shared server is ever
// touched.
//
// # Missing redis-server
//
// When redis-server (or redis-cli, for a cluster) is not on PATH the test is
// skipped with an install hint. With NEARCACHE_REQUIRE_REDIS=1 in the
// environment (set by .ci/run) a missing binary fails the test instead, so CI can
// never pass by skipping.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RequireEnv is the environment variable that turns a missing redis-server into
// a test failure instead of a skip.
const RequireEnv = "NEARCACHE_REQUIRE_REDIS"

const installHint = "redis-server not found on PATH; install it (Debian/Ubuntu: apt-get install -y redis-server redis-tools; macOS: brew install redis) or these tests skip"

// startTimeout bounds how long a server may take to accept connections.
const startTimeout = 10 * time.Second

// Binary returns the path of the named binary (redis-server, redis-cli), or
// skips (or fails under NEARCACHE_REQUIRE_REDIS=1) when it is missing.
func Binary(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("%s=1 but %s is missing: %s", RequireEnv, name, installHint)
	}
	tb.Skipf("%s (set %s=1 to make this a failure)", installHint, RequireEnv)
	return ""
}

// Server is one redis-server process owned by a test.
type Server struct {
	tb    testing.TB
	bin   string
	dir   string
	port  int
	extra []string
	conf  string // a configuration file to start from (a Sentinel's); "" for none

	mu  sync.Mutex // guards cmd and done
	cmd *exec.Cmd
	// done is closed when cmd has exited.
	done chan struct{}
}

// Option adds arguments to redis-server's command line.
type Option func(*[]string)

// WithArgs passes extra redis-server arguments, e.g. WithArgs("--maxmemory", "10mb").
func WithArgs(args ...string) Option {
	return func(a *[]string) { *a = append(*a, args...) }
}

// StartServer starts a standalone redis-server on a free loopback port with no
// persistence, and stops it when the test ends.
func StartServer(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	bin := Binary(tb, "redis-server")
	var extra []string
	for _, o := range opts {
		o(&extra)
	}
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir(), extra: extra}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		s.port, err = FreePort()
		if err != nil {
			tb.Fatalf("redistest: free port: %v", err)
		}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("redistest: start redis-server: %v", err)
	}
	tb.Cleanup(s.stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's TCP port.
func (s *Server) Port() int { return s.port }

// Dir is the server's working directory.
func (s *Server) Dir() string { return s.dir }

// Client returns a new go-redis client for the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.tb.Cleanup(func() { _ = c.Close() })
	return c
}

func (s *Server) args() []string {
	if s.conf != "" {
		// A Sentinel: everything is in its (rewritable) configuration file.
		return []string{s.conf, "--sentinel"}
	}
	a := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
		"--protected-mode", "no",
	}
	return append(a, s.extra...)
}

func (s *Server) start() error {
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	if err := waitReady(s.Addr(), done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%w; log: %s", err, s.logTail())
	}
	return nil
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

func waitReady(addr string, done <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("redis-server exited during start")
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, _ = c.Write([]byte("PING\r\n"))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			_ = c.Close()
			if rerr == nil && strings.HasPrefix(line, "+PONG") {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s not ready after %v", addr, startTimeout)
}

// Kill stops the server with SIGKILL (no clean shutdown) and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts the server again on the same port and directory after Kill.
// Without persistence it comes back empty, with a new run id.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the port may linger briefly after a kill
	}
	s.tb.Fatalf("redistest: restart on port %d: %v", s.port, err)
}

// Pause stops the process with SIGSTOP: connections stay open but nothing is
// answered, like a black-holed server. Resume undoes it.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a server stopped by Pause.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// Do runs one command on a short-lived connection (for fault injection such as
// CLIENT KILL or DEBUG SLEEP) and returns its reply.
func (s *Server) Do(ctx context.Context, args ...any) (any, error) {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

func (s *Server) stop() {
	s.Resume()
	s.Kill()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitFor polls cond every millisecond until it returns true, and fails the
// test if d passes first. It is for effects that cross a process boundary
// (a pub/sub delivery, a server restart), whose timing no gate inside the
// test controls.
func WaitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}
