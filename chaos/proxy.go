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

// maxSilentConns bounds the connections one proxy holds silent (KindBlackhole): a node opens a
// few dozen during one blackhole of a few seconds (each request that times out leaves its
// connection and dials a new one). Past the bound a connection is closed at once and counted as
// refused, which makes the blackhole not silent: the soak reports it as a fault not applied.
const maxSilentConns = 512

// proxyDialTimeout bounds the dial to Consul for one accepted connection.
const proxyDialTimeout = 2 * time.Second

// silenceTimeout bounds the wait, in Blackhole, for the copies of the open connections to stop.
const silenceTimeout = 5 * time.Second

// proxyMode is what a proxy does with its connections.
type proxyMode int

const (
	proxyOpen      proxyMode = iota // forward
	proxyCut                        // close every connection at once (KindPartition)
	proxyBlackhole                  // hold every connection silent (KindBlackhole)
)

// cutProxy is a node's own TCP forwarder on 127.0.0.1 in front of Consul's HTTP API: the node's
// config names it as consul.address, so that KindPartition and KindBlackhole can cut that one
// node off Consul while its process runs on.
//
// Cut closes every open connection and closes new ones as soon as they are accepted, until Heal.
// Blackhole silences every open connection and holds every new one silent, until Heal: a silent
// connection stays open on the node's side and is never read, written, dialled through or closed
// again before Close, also after Heal (the flow state is lost: only connections made after Heal
// are forwarded). Its Consul side is closed at once, which the node cannot observe.
//
// Invariants: at most maxProxyConns connections are forwarded at once, three goroutines each
// (dial and wait, one copy each way), plus the accept loop; at most maxSilentConns are held
// silent, with no goroutine; Close closes every socket, stops every goroutine and returns when
// they are gone.
type cutProxy struct {
	upstream string
	ln       net.Listener
	ctx      context.Context // cancelled by Close: ends dials in progress
	cancel   context.CancelFunc

	mu      sync.Mutex
	mode    proxyMode
	closed  bool
	conns   map[*proxyConn]struct{}
	silent  []net.Conn // node's sides held silent, until Close
	refused int        // connections closed at accept (cut or over a bound) since the last Cut or Blackhole
	held    int        // connections accepted and held silent since the last Blackhole
	wg      sync.WaitGroup
}

// proxyConn is one forwarded connection: the node's side and Consul's (nil while dialling).
// Once closed or silenced it stays so; done is closed when its goroutines have ended.
type proxyConn struct {
	down net.Conn
	done chan struct{}

	mu       sync.Mutex
	up       net.Conn
	closed   bool
	silenced bool
}

// close ends both sides, or only Consul's once silenced (the node's side belongs to the proxy's
// silent list then); safe to call more than once and while the other side is dialled.
func (pc *proxyConn) close() {
	pc.mu.Lock()
	silenced := pc.silenced
	pc.closed = pc.closed || !silenced
	up := pc.up
	pc.mu.Unlock()
	if !silenced {
		pc.down.Close()
	}
	if up != nil {
		up.Close()
	}
}

// silence stops the copies without closing the node's side: its deadlines interrupt the copy
// reading or writing it, and Consul's side is closed. False when pc was already closed.
func (pc *proxyConn) silence() bool {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		return false
	}
	pc.silenced = true
	up := pc.up
	pc.mu.Unlock()
	_ = pc.down.SetDeadline(time.Now().Add(-time.Second))
	if up != nil {
		up.Close()
	}
	return true
}

// attach sets Consul's side; false (and up closed) when pc was closed or silenced while dialling.
func (pc *proxyConn) attach(up net.Conn) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed || pc.silenced {
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
		pc := &proxyConn{down: c, done: make(chan struct{})}
		forward, hold := false, false
		p.mu.Lock()
		switch {
		case p.closed:
		case p.mode == proxyOpen && len(p.conns) < maxProxyConns:
			forward = true
			p.conns[pc] = struct{}{}
			p.wg.Add(1)
		case p.mode == proxyBlackhole && len(p.silent) < maxSilentConns:
			hold = true
			p.silent = append(p.silent, c)
			p.held++
		default:
			p.refused++
		}
		p.mu.Unlock()
		switch {
		case forward:
			go p.forward(pc)
		case !hold:
			c.Close()
		}
	}
}

// forward dials Consul for pc and copies both ways until either side ends or the proxy cuts or
// silences it.
func (p *cutProxy) forward(pc *proxyConn) {
	defer p.wg.Done()
	defer close(pc.done)
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
		return // cut or silenced while dialling
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

// enter switches to mode, resets the counts of the new mode's connections, and returns the
// connections forwarded until now.
func (p *cutProxy) enter(mode proxyMode) []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode, p.refused, p.held = mode, 0, 0
	open := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		open = append(open, pc)
	}
	return open
}

// Cut closes every forwarded connection and refuses new ones until Heal. It returns once every
// open connection is closed. Connections held silent by an earlier Blackhole stay so.
func (p *cutProxy) Cut() {
	for _, pc := range p.enter(proxyCut) {
		pc.close()
	}
}

// Blackhole silences every forwarded connection for good and holds new ones silent until Heal
// (see cutProxy). It returns how many open connections it silenced, once no byte is copied on
// any of them; an error when a copy did not stop within silenceTimeout (a harness bug) or an
// open connection had to be closed, the silent ones being at their bound.
func (p *cutProxy) Blackhole() (int, error) {
	open := p.enter(proxyBlackhole)
	var silenced []*proxyConn
	var errs []error
	for _, pc := range open {
		if !pc.silence() {
			continue // closed meanwhile
		}
		silenced = append(silenced, pc)
		p.mu.Lock()
		switch {
		case p.closed:
			pc.down.Close() // Close went through the silent list already
		case len(p.silent) < maxSilentConns:
			p.silent = append(p.silent, pc.down)
		default:
			pc.down.Close()
			errs = append(errs, fmt.Errorf("consul proxy: %d connections held silent already; an open one was closed instead", maxSilentConns))
		}
		p.mu.Unlock()
	}
	deadline := time.NewTimer(silenceTimeout)
	defer deadline.Stop()
	for i, pc := range silenced {
		select {
		case <-pc.done:
		case <-deadline.C:
			errs = append(errs, fmt.Errorf("consul proxy: the copies of %d silenced connections did not stop within %s", len(silenced)-i, silenceTimeout))
			return len(silenced), errors.Join(errs...)
		}
	}
	return len(silenced), errors.Join(errs...)
}

// Heal forwards new connections again and returns how many were refused (closed at accept: cut,
// or over a bound) and how many were held silent (blackholed) since the fault began.
func (p *cutProxy) Heal() (refused, held int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = proxyOpen
	return p.refused, p.held
}

// Silent is how many connections the proxy holds silent (opened before or during a blackhole).
func (p *cutProxy) Silent() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.silent)
}

// Close stops accepting, closes every connection (forwarded or silent) and waits for the proxy's
// goroutines. Idempotent.
func (p *cutProxy) Close() {
	p.mu.Lock()
	p.closed = true
	open := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		open = append(open, pc)
	}
	silent := p.silent
	p.silent = nil
	p.mu.Unlock()
	p.cancel()
	p.ln.Close()
	for _, pc := range open {
		pc.close()
		pc.down.Close() // also when silenced meanwhile
	}
	for _, c := range silent {
		c.Close()
	}
	p.wg.Wait()
}
