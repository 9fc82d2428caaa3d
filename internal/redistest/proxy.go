package redistest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a loopback TCP proxy in front of a Redis server that can hold
// back the client's writes that contain a given byte string (a command name
// such as "evalsha") for a while before passing them on, so that a test can
// make one kind of command outlast the client's timeout while every other
// command, and every reply, passes at once. A held write still reaches the
// server after the delay even if the client has given up and closed its
// connection: the command was sent, and Redis runs it late.
type Proxy struct {
	tb     testing.TB
	ln     net.Listener
	target string

	mu     sync.Mutex // guards match, delay, conns, closed
	match  [][]byte
	delay  time.Duration
	conns  map[net.Conn]struct{}
	closed bool

	wg sync.WaitGroup // accept loop and every pipe
}

// StartProxy starts a proxy to target on a free loopback port, stopped by
// t.Cleanup.
func StartProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: proxy listen: %v", err)
	}
	p := &Proxy{tb: tb, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Delay holds back every later client write that contains all of match
// for d before it is forwarded (d <= 0 or no match: forward at once). The
// match is against each read chunk, case-sensitive: go-redis sends command
// names in lower case.
func (p *Proxy) Delay(d time.Duration, match ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.match, p.delay = nil, d
	for _, m := range match {
		p.match = append(p.match, []byte(m))
	}
}

func (p *Proxy) holdFor(chunk []byte) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.delay <= 0 || len(p.match) == 0 {
		return 0
	}
	for _, m := range p.match {
		if !bytes.Contains(chunk, m) {
			return 0
		}
	}
	return p.delay
}

// Close stops accepting, closes every connection and waits for the pipes.
// It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		_ = c.Close()
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client, server) {
			return
		}
		p.wg.Add(2)
		go p.pipe(client, server)
		go p.back(client, server)
	}
}

// pipe forwards the client's writes to the server, holding back the ones
// that match. When the client goes away, what it sent is still delivered,
// then the server sees end of input (and closes its side, ending back).
func (p *Proxy) pipe(client, server net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if d := p.holdFor(buf[:n]); d > 0 {
				time.Sleep(d)
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				_ = server.Close()
				return
			}
		}
		if err != nil {
			if tc, ok := server.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			} else {
				_ = server.Close()
			}
			return
		}
	}
}

// back forwards the server's replies to the client until the server closes
// the connection; replies to a client that has gone are read and dropped
// (closing with unread data would reset the connection, and Redis could lose
// a command it has not read yet).
func (p *Proxy) back(client, server net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client, server)
	if _, err := io.Copy(client, server); err != nil && !errors.Is(err, net.ErrClosed) {
		_ = client.Close()
		_, _ = io.Copy(io.Discard, server)
	}
}
