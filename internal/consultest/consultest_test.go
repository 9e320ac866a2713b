package consultest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestRestartKeepsStateAndPorts(t *testing.T) {
	s := Start(t)
	c := s.Client("")
	if _, err := c.KV().Put(&api.KVPair{Key: "consultest/k", Value: []byte("v")}, nil); err != nil {
		t.Fatal(err)
	}
	id, _, err := c.Session().Create(&api.SessionEntry{Name: "survivor", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := s.HTTPAddr
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	if _, _, err := c.KV().Get("consultest/k", nil); err == nil {
		t.Fatal("KV answered while Consul is stopped")
	}
	s.Restart()
	if s.HTTPAddr != addr {
		t.Fatalf("address changed over restart: %s -> %s", addr, s.HTTPAddr)
	}
	p, _, err := c.KV().Get("consultest/k", nil)
	if err != nil || p == nil || string(p.Value) != "v" {
		t.Fatalf("KV after restart = %v, %v; want v", p, err)
	}
	se, _, err := c.Session().Info(id, nil)
	if err != nil || se == nil {
		t.Fatalf("session after restart = %v, %v; want it kept", se, err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestACLDefaultDeny(t *testing.T) {
	s := Start(t, WithACL())
	_, err := s.Client("").KV().Put(&api.KVPair{Key: "x", Value: []byte("1")}, nil)
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != 403 {
		t.Fatalf("anonymous write: err = %v, want 403", err)
	}
	if _, err := s.Client(s.ManagementToken).KV().Put(&api.KVPair{Key: "x", Value: []byte("1")}, nil); err != nil {
		t.Fatalf("management token write: %v", err)
	}
	tok := s.Token("kv-reader", `key_prefix "" { policy = "read" }`)
	if _, _, err := s.Client(tok).KV().Get("x", nil); err != nil {
		t.Fatalf("read with read token: %v", err)
	}
	if _, err := s.Client(tok).KV().Put(&api.KVPair{Key: "x", Value: []byte("2")}, nil); err == nil {
		t.Fatal("read token could write")
	}
}

func TestBinaryLookupOrder(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "consul")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvBinary, fake)
	if got, err := Binary(); err != nil || got != fake {
		t.Fatalf("Binary() with %s = %q, %v", EnvBinary, got, err)
	}
	t.Setenv(EnvBinary, filepath.Join(dir, "missing"))
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), EnvBinary) {
		t.Fatalf("Binary() with a bad %s: err = %v", EnvBinary, err)
	}
	// No env, empty PATH: the build script's cache is next.
	t.Setenv(EnvBinary, "")
	t.Setenv("PATH", "")
	t.Setenv("QSLICE_TOOLS_BIN", dir)
	if got, err := Binary(); err != nil || got != fake {
		t.Fatalf("Binary() from QSLICE_TOOLS_BIN = %q, %v", got, err)
	}
	t.Setenv("QSLICE_TOOLS_BIN", filepath.Join(dir, "none"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "none"))
	t.Setenv("HOME", filepath.Join(dir, "none"))
	if _, err := Binary(); err == nil || err.Error() != SkipMessage {
		t.Fatalf("Binary() with nothing installed: err = %v, want %q", err, SkipMessage)
	}
}

func TestWaitForPolls(t *testing.T) {
	start := time.Now()
	n := 0
	// A long timeout: WaitFor returns when the condition holds, far earlier (20 ms apart, a
	// loaded machine may take seconds), not at the timeout.
	const timeout = 2 * time.Minute
	WaitFor(t, timeout, "third call", func() error {
		n++
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 || time.Since(start) > timeout/2 {
		t.Fatalf("WaitFor: %d calls in %s", n, time.Since(start))
	}
}

// FreePorts' ports are distinct, bindable for TCP and UDP once returned, and outside the kernel's
// ephemeral range, from which any process's outgoing connection may take a port at any time.
func TestFreePortsAreBelowTheEphemeralRange(t *testing.T) {
	lo, hi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
			t.Fatalf("ip_local_port_range %q: %v", b, err)
		}
	}
	ports, err := FreePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d chosen twice in %v", p, ports)
		}
		seen[p] = true
		if p < freePortLow || p > freePortHigh || (p >= lo && p <= hi) {
			t.Errorf("port %d: want %d-%d, outside the ephemeral range %d-%d", p, freePortLow, freePortHigh, lo, hi)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("tcp %d: %v", p, err)
			continue
		}
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("udp %d: %v", p, err)
			continue
		}
		u.Close()
	}
}
