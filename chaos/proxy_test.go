package chaos

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// echoServer answers every line with the same line, on 127.0.0.1, until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
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
	return ln.Addr().String()
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

	if refused := p.Heal(); refused != 3 {
		t.Fatalf("Heal: %d connections refused, want 3", refused)
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: Consul stopped
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

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
