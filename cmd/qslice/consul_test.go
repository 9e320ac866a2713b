package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
)

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runUntil runs `qslice run` until its log shows want (or 20 s pass), then stops it; the node must
// keep running meanwhile (losing Consul never crashes the agent) and stop cleanly.
func runUntil(t *testing.T, cfgPath string, want ...string) string {
	t.Helper()
	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"run", "--config", cfgPath}, strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		log := stderr.String()
		all := true
		for _, w := range want {
			all = all && strings.Contains(log, w)
		}
		if all {
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("qslice run exited %d while Consul was failing; log:\n%s", code, log)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("log never showed %q:\n%s", want, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after a clean stop", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("qslice run did not stop within 30s")
	}
	return stderr.String()
}

func consulConfig(t *testing.T, address, extra string) string {
	return writeConfig(t, t.TempDir(), fmt.Sprintf(`listen: 127.0.0.1:0
control: {socket: ""}
consul: {address: %q, ttl: 2s, lock_delay: 1s, hold_down: 2s%s}
queues:
  - {name: in, dir: q/in, slices: 2, handler: {exec: [cat]}}
`, address, extra))
}

func TestConsulUnreachableIsExplainedAndSurvived(t *testing.T) {
	log := runUntil(t, consulConfig(t, "127.0.0.1:1", ""), "consul at 127.0.0.1:1: unreachable", "is the Consul agent running")
	if strings.Count(log, "consul request failing") > 3 {
		t.Errorf("the same failure was logged %d times; want one line per state change:\n%s", strings.Count(log, "consul request failing"), log)
	}
}

func TestBadConsulTokenIsExplained(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Consul")
	}
	srv := consultest.Start(t, consultest.WithACL())
	log := runUntil(t, consulConfig(t, srv.HTTPAddr, ", token: not-a-real-token"), "permission denied", "ACL token")
	if strings.Contains(log, "not-a-real-token") {
		t.Errorf("the token was logged:\n%s", log)
	}
}
