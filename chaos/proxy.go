package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// maxProxyConns bounds the connections one proxy forwards at once (a qslice node keeps a handful
// to Consul: blocking queries and its keeper's requests); more are closed at once, like the
// connections arriving while the proxy is cut, and counted as refused.
const maxProxyConns = 64

// proxyDialTimeout bounds the dial to Consul for one accepted connection.
const proxyDialTimeout = 2 * time.Second

// cutProxy is a node's own TCP forwarder on 127.0.0.1 in front of Consul's HTTP API: the node's
// config names it as consul.address, so that KindPartition can cut that one node off Consul while
// its process runs on. Cut closes every open connection and closes new ones as soon as they are
// accepted, until Heal. Invariants: at most maxProxyConns connections are forwarded at once,
// three goroutines each (dial and wait, one copy each way), plus the accept loop; Close stops
// them all and returns when they are gone.
type cutProxy struct {
	upstream string
	ln       net.Listener
	ctx      context.Context // cancelled by Close: ends dials in progress
	cancel   context.CancelFunc

	mu      sync.Mutex
	cut     bool
	closed  bool
	conns   map[*proxyConn]struct{}
	refused int // connections closed at accept (cut or over the bound) since the last Cut
	wg      sync.WaitGroup
}

// proxyConn is one forwarded connection: the node's side and Consul's (nil while dialling).
type proxyConn struct {
	down net.Conn

	mu     sync.Mutex
	up     net.Conn
	closed bool
}

// close ends both sides; safe to call more than once and while the other side is dialled.
func (pc *proxyConn) close() {
	pc.mu.Lock()
	pc.closed = true
	up := pc.up
	pc.mu.Unlock()
	pc.down.Close()
	if up != nil {
		up.Close()
	}
}

// attach sets Consul's side; false (and up closed) when pc was closed while dialling.
func (pc *proxyConn) attach(up net.Conn) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed {
		up.Close()
		return false
	}
	pc.up = up
	return true
}

// newCutProxy listens on a free port of 127.0.0.1 and forwards to upstream (host:port).
func newCutProxy(upstream string) (*cutProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("consul proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &cutProxy{upstream: upstream, ln: ln, conns: map[*proxyConn]struct{}{}, ctx: ctx, cancel: cancel}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the host:port the node talks to.
func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return // Close
			}
			time.Sleep(10 * time.Millisecond) // out of file descriptors, say: try again
			continue
		}
		pc := &proxyConn{down: c}
		p.mu.Lock()
		ok := !p.cut && !p.closed && len(p.conns) < maxProxyConns
		if ok {
			p.conns[pc] = struct{}{}
			p.wg.Add(1)
		} else if !p.closed {
			p.refused++
		}
		p.mu.Unlock()
		if !ok {
			c.Close()
			continue
		}
		go p.forward(pc)
	}
}

// forward dials Consul for pc and copies both ways until either side ends or the proxy cuts it.
func (p *cutProxy) forward(pc *proxyConn) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
		pc.close()
	}()
	dctx, cancel := context.WithTimeout(p.ctx, proxyDialTimeout)
	up, err := (&net.Dialer{}).DialContext(dctx, "tcp", p.upstream)
	cancel()
	if err != nil {
		return // Consul down (a restart): the node sees its connection closed
	}
	if !pc.attach(up) {
		return // cut while dialling
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Half-close would keep a cut connection half alive; end both sides instead.
		pc.close()
		done <- struct{}{}
	}
	go pipe(up, pc.down)
	go pipe(pc.down, up)
	<-done
	<-done
}

// Cut closes every forwarded connection and refuses new ones until Heal. It returns once every
// open connection is closed.
func (p *cutProxy) Cut() {
	p.mu.Lock()
	p.cut, p.refused = true, 0
	open := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		open = append(open, pc)
	}
	p.mu.Unlock()
	for _, pc := range open {
		pc.close()
	}
}

// Heal forwards new connections again and returns how many were refused during the cut.
func (p *cutProxy) Heal() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	return p.refused
}

// Close stops accepting, closes every connection and waits for the proxy's goroutines.
// Idempotent.
func (p *cutProxy) Close() {
	p.mu.Lock()
	p.closed = true
	open := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		open = append(open, pc)
	}
	p.mu.Unlock()
	p.cancel()
	p.ln.Close()
	for _, pc := range open {
		pc.close()
	}
	p.wg.Wait()
}
