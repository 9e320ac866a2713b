package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/clock"
)

func TestExplainErrors(t *testing.T) {
	c, err := New(failover.ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "127.0.0.1:8500"}, failovertest.NewAssignee("n", failovertest.NewLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		err  error
		want string
		kind error
	}{
		{api.StatusError{Code: 403, Body: "Permission denied: token lacks 'service:write'"},
			"register service: consul at 127.0.0.1:8500: permission denied: check the ACL token (CONSUL_HTTP_TOKEN or consul.token) (consul said: Permission denied: token lacks 'service:write')", failover.ErrPermissionDenied},
		{api.StatusError{Code: 403, Body: "ACL not found"}, "consul at 127.0.0.1:8500: permission denied: check the ACL token", failover.ErrPermissionDenied},
		{api.StatusError{Code: 500, Body: "No cluster leader"}, "consul at 127.0.0.1:8500: no cluster leader: Consul servers are electing a leader", failover.ErrConsulUnavailable},
		{api.StatusError{Code: 429, Body: "slow down"}, "rate limited", failover.ErrConsulUnavailable},
		{api.StatusError{Code: 500, Body: "boom"}, "unexpected response 500", nil},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")},
			"consul at 127.0.0.1:8500: unreachable: is the Consul agent running? check CONSUL_HTTP_ADDR or consul.address", failover.ErrConsulUnavailable},
		{fmt.Errorf("get: %w", context.DeadlineExceeded), "timed out", failover.ErrConsulUnavailable},
		{errors.New("tls: failed to verify certificate: x509: certificate signed by unknown authority"), "TLS failure: check consul.tls", failover.ErrConsulUnavailable},
	}
	if got := c.explain(failover.OpKVWatch, context.DeadlineExceeded).Error(); !strings.Contains(got, "no answer within "+(watchWait+watchWait/16+c.cfg.RequestTimeout).String()) {
		t.Errorf("a blocking query's timeout quotes the wrong limit: %q", got)
	}
	for _, tc := range cases {
		got := c.explain(failover.OpRegister, tc.err)
		if !strings.Contains(got.Error(), tc.want) {
			t.Errorf("explain(%v) = %q, want it to contain %q", tc.err, got, tc.want)
		}
		if tc.kind != nil && !errors.Is(got, tc.kind) {
			t.Errorf("explain(%v) is not %v", tc.err, tc.kind)
		}
		if !errors.Is(got, tc.err) {
			t.Errorf("explain(%v) does not wrap the cause", tc.err)
		}
	}
}

func TestNewConsulAddressAndTLS(t *testing.T) {
	c, err := New(failover.ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "https://consul.example:8501", Token: "tok",
		TLS: failover.TLSConfig{ServerName: "consul.example"}}, failovertest.NewAssignee("n", failovertest.NewLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "consul.example:8501" {
		t.Errorf("addr %q", c.addr)
	}
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.2:8500")
	c, err = New(failover.ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues}, failovertest.NewAssignee("n", failovertest.NewLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.2:8500" {
		t.Errorf("CONSUL_HTTP_ADDR not honoured: %q", c.addr)
	}
}

// TestConsulStateLogging replays what a Consul restart looks like from one node (taken from a
// real run): requests fail as unreachable, then time out during the leader election, a request
// sent during the election fails after others succeeded, the agent is slow while it syncs. The
// operator must read one "failing" line per distinct problem and one "answers again" line,
// once Consul has been fine for a TTL.
func TestConsulStateLogging(t *testing.T) {
	c, logs, clk := newIdleCoordinator(t)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	timeout := fmt.Errorf("get: %w", context.DeadlineExceeded)
	ok := func(context.Context) error { return nil }
	fail := func(e error) func(context.Context) error { return func(context.Context) error { return e } }
	ctx := context.Background()
	step := clk.Advance
	lines := func(msg string, want int) {
		t.Helper()
		if n := logs.count(msg); n != want {
			t.Fatalf("%d %q lines, want %d:\n%s", n, msg, want, logs)
		}
	}

	_ = c.call(ctx, failover.OpKVWatch, fail(refused))
	_ = c.call(ctx, failover.OpSessionInfo, fail(refused))
	lines("consul request failing", 1)
	if e := c.Status().ConsulError; !strings.Contains(e, "unreachable") {
		t.Fatalf("Status.ConsulError = %q", e)
	}
	step(time.Second)
	_ = c.call(ctx, failover.OpSessionInfo, fail(timeout))
	lines("consul request failing", 2) // a new problem
	step(time.Second)
	_ = c.call(ctx, failover.OpKVWatch, ok) // the servers answer...
	if e := c.Status().ConsulError; e != "" {
		t.Fatalf("Status.ConsulError = %q while Consul answers", e)
	}
	step(200 * time.Millisecond)
	_ = c.call(ctx, failover.OpCheckTTL, fail(timeout)) // ...and a slow request still times out
	_ = c.call(ctx, failover.OpSessionInfo, fail(timeout))
	lines("consul request failing", 2)
	if e := c.Status().ConsulError; !strings.Contains(e, "timed out") {
		t.Fatalf("Status.ConsulError = %q, want the current failure", e)
	}
	step(100 * time.Millisecond)
	_ = c.call(ctx, failover.OpCheckTTL, ok)
	step(time.Second)
	_ = c.call(ctx, failover.OpSessionInfo, ok)
	lines("consul answers again", 0) // fine for 1s < TTL
	step(time.Second)
	_ = c.call(ctx, failover.OpCheckTTL, ok)
	lines("consul answers again", 1)
	if !strings.Contains(logs.String(), "outage=2.3s") {
		t.Errorf("the recovery line does not say how long the outage lasted:\n%s", logs)
	}
	_ = c.call(ctx, failover.OpCheckTTL, ok)
	lines("consul answers again", 1)

	// A new outage logs its problem again.
	_ = c.call(ctx, failover.OpSessionInfo, fail(timeout))
	lines("consul request failing", 3)

	// A denied permission is not cleared by another op's answer.
	_ = c.call(ctx, failover.OpAcquire, fail(api.StatusError{Code: 403, Body: "Permission denied"}))
	step(5 * time.Second)
	_ = c.call(ctx, failover.OpSessionInfo, ok)
	_ = c.call(ctx, failover.OpSessionInfo, ok)
	if e := c.Status().ConsulError; !strings.Contains(e, "permission denied") {
		t.Fatalf("Status.ConsulError = %q, want the denied permission to stay", e)
	}
	lines("consul answers again", 1)
	if n := c.Status().ConsulErrors[failover.OpSessionInfo.String()]; n != 4 {
		t.Errorf("session_info failures counted = %d, want 4", n)
	}
}

// resetConnections gives up the watches' requests only while fewer than maxAbandoned given-up
// ones may still run on the agent (Consul 1.13 runs a given-up blocking query, its connection
// counted against the agent's per-client limit, until its wait ends): over the budget a request
// is left running, once logged; the budget frees as those queries' waits end.
func TestAbandonedWatchesStayWithinTheAgentsConnectionBudget(t *testing.T) {
	c, logs, clk := newIdleCoordinator(t)
	ctx := context.Background()
	watches := func(n int) []context.Context {
		out := make([]context.Context, n)
		for i := range out {
			out[i], _ = c.watchContext(ctx)
		}
		return out
	}
	// Waits for every watch's decision: given up (cancelled) or left running.
	given := func(ws []context.Context) int {
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := 0
			for _, w := range ws {
				if w.Err() != nil {
					n++
				}
			}
			c.mu.Lock()
			kept := c.keptOpen
			c.mu.Unlock()
			if n+kept == len(ws) || time.Now().After(deadline) {
				return n
			}
			time.Sleep(time.Millisecond)
		}
	}
	first := watches(60)
	c.resetConnections()
	if n := given(first); n != 60 {
		t.Fatalf("first reset gave up %d of 60 requests, want all", n)
	}
	clk.Advance(time.Minute)
	second := watches(60)
	c.resetConnections()
	if n := given(second); n != maxAbandoned-60 {
		t.Fatalf("second reset gave up %d of 60, want %d (budget %d, 60 still running on the agent)", n, maxAbandoned-60, maxAbandoned)
	}
	if got := strings.Count(logs.String(), "left watch requests running"); got != 1 {
		t.Errorf("%d warnings, want one per reset over the budget:\n%s", got, logs.String())
	}
	// The first 60 end on the agent watchWait (and its jitter) after they were sent.
	clk.Advance(watchWait + watchWait/16 - time.Minute)
	third := watches(60)
	c.resetConnections()
	if n := given(third); n != 60 {
		t.Fatalf("after the first queries' waits ended, a reset gave up %d of 60, want 60", n)
	}
}

// newIdleCoordinator is a Coordinator that is never run, on a fake clock, logging into logs:
// for tests of its request bookkeeping, which need no Consul.
func newIdleCoordinator(t *testing.T) (*Coordinator, *syncBuffer, *clock.Fake) {
	t.Helper()
	logs := &syncBuffer{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	c, err := New(failover.ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "127.0.0.1:8500", TTL: 2 * time.Second},
		failovertest.NewAssignee("n", failovertest.NewLedger()), nil, slog.New(slog.NewTextHandler(logs, nil)), clk)
	if err != nil {
		t.Fatal(err)
	}
	return c, logs, clk
}
