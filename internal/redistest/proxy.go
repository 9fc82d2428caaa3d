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

	mu     sync.Mutex // guards match, delay, gate, conns, closed
	match  [][]byte
	delay  time.Duration
	gate   chan struct{} // with Hold: matching writes wait until it is closed
	conns  map[net.Conn]struct{}
	closed bool
	done   chan struct{} // closed by Close: held writes give up

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
	p := &Proxy{tb: tb, ln: ln, target: target, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
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
	p.setRule(d, nil, match)
}

// Hold holds back every later client write that contains all of match
// until release is called (or the proxy closes), whatever the time: a test
// can then order "the write has timed out", "a read came back" and "the
// write runs" by events. release also stops holding later writes.
func (p *Proxy) Hold(match ...string) (release func()) {
	gate := make(chan struct{})
	p.setRule(0, gate, match)
	var once sync.Once
	return func() {
		once.Do(func() {
			p.setRule(0, nil, nil)
			close(gate)
		})
	}
}

func (p *Proxy) setRule(d time.Duration, gate chan struct{}, match []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.match, p.delay, p.gate = nil, d, gate
	for _, m := range match {
		p.match = append(p.match, []byte(m))
	}
}

// holdFor returns how a chunk waits: a delay, or a gate to wait on.
func (p *Proxy) holdFor(chunk []byte) (time.Duration, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if (p.delay <= 0 && p.gate == nil) || len(p.match) == 0 {
		return 0, nil
	}
	for _, m := range p.match {
		if !bytes.Contains(chunk, m) {
			return 0, nil
		}
	}
	return p.delay, p.gate
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
	close(p.done)
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
			d, gate := p.holdFor(buf[:n])
			if d > 0 {
				time.Sleep(d)
			}
			if gate != nil {
				select {
				case <-gate:
				case <-p.done:
				}
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
