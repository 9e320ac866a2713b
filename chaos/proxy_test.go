package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// echoServer answers every line with the same line, on 127.0.0.1, until the test ends.
func echoServer(t *testing.T) string {
	addr, _ := countingEchoServer(t)
	return addr
}

// echoCounts are what an echo server saw: connections accepted, and still open on its side.
type echoCounts struct{ accepted, open atomic.Int32 }

// countingEchoServer is echoServer, counting its connections.
func countingEchoServer(t *testing.T) (string, *echoCounts) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counts := &echoCounts{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			counts.accepted.Add(1)
			counts.open.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer counts.open.Add(-1)
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), counts
}

// roundTrip sends one line over c and reads the answer, within a second.
func roundTrip(c net.Conn, r *bufio.Reader, line string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	s, err := r.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

func dialProxy(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestCutProxyForwardsCutsAndHeals(t *testing.T) {
	p, err := newCutProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !strings.HasPrefix(p.Addr(), "127.0.0.1:") {
		t.Fatalf("proxy listens on %s, want 127.0.0.1", p.Addr())
	}

	c1, r1 := dialProxy(t, p.Addr())
	if got, err := roundTrip(c1, r1, "one"); err != nil || got != "one" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	p.Cut()
	// The open connection is closed: the next read ends (EOF or reset), no timeout.
	if _, err := roundTrip(c1, r1, "two"); err == nil || isTimeout(err) {
		t.Fatalf("open connection after Cut: err %v, want it closed", err)
	}
	// New connections are accepted and closed at once.
	for i := range 3 {
		c, r := dialProxy(t, p.Addr())
		if _, err := roundTrip(c, r, "three"); err == nil || isTimeout(err) {
			t.Fatalf("new connection %d while cut: err %v, want it closed", i, err)
		}
	}

	if refused, held := p.Heal(); refused != 3 || held != 0 {
		t.Fatalf("Heal: %d connections refused and %d held silent, want 3 and 0", refused, held)
	}
	c2, r2 := dialProxy(t, p.Addr())
	if got, err := roundTrip(c2, r2, "four"); err != nil || got != "four" {
		t.Fatalf("after Heal: %q, %v", got, err)
	}
}

func TestCutProxyBoundsConnectionsAndCloses(t *testing.T) {
	p, err := newCutProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var readers []*bufio.Reader
	for range maxProxyConns {
		c, r := dialProxy(t, p.Addr())
		if _, err := roundTrip(c, r, "x"); err != nil { // forwarded: counted as open
			t.Fatal(err)
		}
		conns, readers = append(conns, c), append(readers, r)
	}
	c, r := dialProxy(t, p.Addr())
	if _, err := roundTrip(c, r, "over"); err == nil || isTimeout(err) {
		t.Fatalf("connection %d: err %v, want it closed (bound %d)", maxProxyConns+1, err, maxProxyConns)
	}

	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10 s")
	}
	p.Close() // idempotent
	if _, err := roundTrip(conns[0], readers[0], "y"); err == nil || isTimeout(err) {
		t.Fatalf("open connection after Close: err %v, want it closed", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("the proxy still accepts after Close")
	}
}

func TestCutProxyUpstreamDown(t *testing.T) {
	addr := refusingAddr(t) // nothing listens there: Consul stopped
	p, err := newCutProxy(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dialProxy(t, p.Addr())
	if _, err := roundTrip(c, r, "x"); err == nil || isTimeout(err) {
		t.Fatalf("upstream down: err %v, want the connection closed", err)
	}
}

// refusingAddr returns a loopback address that refuses connections for the rest of the test: a
// socket bound to it that does not listen. (A port closed after a listen may be bound again, or
// be given to an outgoing connection, which a dial from an ephemeral port can then meet.)
func refusingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// assertSilent checks that a line sent over c gets no answer, and no close or reset either,
// within 300 ms: the write succeeds and the read times out.
func assertSilent(t *testing.T, c net.Conn, r *bufio.Reader, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := io.WriteString(c, "silence?\n"); err != nil {
		t.Fatalf("%s: write: %v, want it to succeed (nothing is closed)", what, err)
	}
	if s, err := r.ReadString('\n'); !isTimeout(err) {
		t.Fatalf("%s: read %q, %v; want nothing at all (a timeout)", what, s, err)
	}
}

// assertClosed checks that c is closed by the other side: a read ends at once with EOF or a
// reset, not a timeout.
func assertClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatalf("%s: still open after 5 s, want it closed", what)
	}
}

func TestCutProxyBlackholeSilencesForGood(t *testing.T) {
	addr, counts := countingEchoServer(t)
	p, err := newCutProxy(addr)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()
	before, br := dialProxy(t, p.Addr())
	if got, err := roundTrip(before, br, "one"); err != nil || got != "one" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	silenced, err := p.Blackhole()
	if err != nil || silenced != 1 {
		t.Fatalf("Blackhole: %d connections silenced, %v; want 1", silenced, err)
	}
	assertSilent(t, before, br, "open connection while blackholed")
	// Consul's side of the silenced connection is closed; the node cannot tell.
	if err := pollUntil(5*time.Second, func() error {
		if n := counts.open.Load(); n != 0 {
			return fmt.Errorf("%d upstream connections open", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// New connections are accepted (the dial succeeds) and held silent; Consul sees none.
	during, dr := dialProxy(t, p.Addr())
	assertSilent(t, during, dr, "connection made while blackholed")
	if n := counts.accepted.Load(); n != 1 {
		t.Fatalf("upstream accepted %d connections, want only the one before the blackhole", n)
	}

	if refused, held := p.Heal(); refused != 0 || held != 1 {
		t.Fatalf("Heal: %d refused, %d held silent; want 0 and 1", refused, held)
	}
	// The connections made before the healing stay silent; new ones are forwarded.
	assertSilent(t, before, br, "connection from before the blackhole, after the healing")
	assertSilent(t, during, dr, "connection from during the blackhole, after the healing")
	after, ar := dialProxy(t, p.Addr())
	if got, err := roundTrip(after, ar, "two"); err != nil || got != "two" {
		t.Fatalf("new connection after the healing: %q, %v", got, err)
	}
	if n := p.Silent(); n != 2 {
		t.Fatalf("Silent = %d, want 2", n)
	}
	if n := counts.accepted.Load(); n != 2 {
		t.Fatalf("upstream accepted %d connections, want 2 (before the blackhole, after the healing)", n)
	}

	// Close releases everything: every connection of the node closed, the forwarded one's
	// upstream side too, no goroutine left (Close waits for them).
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10 s")
	}
	closed = true
	for _, c := range []struct {
		c    net.Conn
		what string
	}{{before, "silent connection from before"}, {during, "silent connection from during"}, {after, "forwarded connection"}} {
		assertClosed(t, c.c, c.what+", after Close")
	}
	if n := p.Silent(); n != 0 {
		t.Fatalf("Silent after Close = %d, want 0", n)
	}
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "(*cutProxy)") {
		t.Fatalf("a goroutine of the proxy is left after Close:\n%s", stacks)
	}
	if err := pollUntil(5*time.Second, func() error {
		if n := counts.open.Load(); n != 0 {
			return fmt.Errorf("%d upstream connections still open after Close", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestCutProxyBlackholeBoundsSilentConnections(t *testing.T) {
	p, err := newCutProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Blackhole(); err != nil {
		t.Fatal(err)
	}
	for i := range maxSilentConns {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
	}
	if err := pollUntil(10*time.Second, func() error {
		if n := p.Silent(); n != maxSilentConns {
			return fmt.Errorf("%d connections held silent, want %d", n, maxSilentConns)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	over, _ := dialProxy(t, p.Addr())
	assertClosed(t, over, fmt.Sprintf("connection %d while blackholed (bound %d)", maxSilentConns+1, maxSilentConns))
	if refused, held := p.Heal(); refused != 1 || held != maxSilentConns {
		t.Fatalf("Heal: %d refused, %d held silent; want 1 and %d", refused, held, maxSilentConns)
	}
}

func TestCutProxyBlackholeWhileStreaming(t *testing.T) {
	// Bytes flowing both ways when the blackhole strikes: once Blackhole returns, nothing more
	// arrives, though the upstream keeps answering whatever reached it.
	p, err := newCutProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, _ := dialProxy(t, p.Addr())
	stop := make(chan struct{})
	writer := make(chan error, 1)
	go func() { // bounded: ends at stop, or when a write blocks past its deadline
		buf := make([]byte, 32*1024)
		for i := 0; i < 100_000; i++ {
			select {
			case <-stop:
				writer <- nil
				return
			default:
			}
			_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := c.Write(buf); err != nil {
				writer <- err
				return
			}
		}
		writer <- nil
	}()
	// Wait until echoes come back, then strike.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 64*1024)); err != nil {
		t.Fatalf("no echo before the blackhole: %v", err)
	}
	if n, err := p.Blackhole(); err != nil || n != 1 {
		t.Fatalf("Blackhole: %d, %v; want 1 connection silenced", n, err)
	}
	// Drain what was forwarded before Blackhole returned (in the sockets' buffers), then
	// nothing more may come.
	buf := make([]byte, 64*1024)
	for i := 0; ; i++ {
		if i > 10_000 {
			t.Fatal("still reading echoes after 10000 reads")
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(buf); err != nil {
			if !isTimeout(err) {
				t.Fatalf("read after the blackhole: %v, want a timeout (not closed)", err)
			}
			break
		}
	}
	close(stop)
	if err := <-writer; err != nil && !isTimeout(err) {
		t.Fatalf("writer: %v, want no error or a timeout (a full buffer), not a closed connection", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(buf); !isTimeout(err) {
		t.Fatalf("read %d bytes, %v after the buffers drained; want nothing", n, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
