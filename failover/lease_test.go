package failover

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
	"github.com/qslice/qslice/internal/clock"
)

func TestLeaseDeadline(t *testing.T) {
	const ttl, ld, m = 15 * time.Second, 10 * time.Second, 2 * time.Second
	cases := []struct {
		name           string
		ttlAt, confirm time.Time
		want           time.Time
	}{
		{"never passed", time.Time{}, t0, time.Time{}},
		{"never confirmed", t0, time.Time{}, time.Time{}},
		{"lock-delay binds", t0, t0, t0.Add(ld - m)},
		{"old TTL pass binds", t0, t0.Add(10 * time.Second), t0.Add(ttl - m)},
		{"old confirmation binds", t0.Add(10 * time.Second), t0, t0.Add(ld - m)},
	}
	for _, c := range cases {
		if got := LeaseDeadline(c.ttlAt, c.confirm, ttl, ld, m); !got.Equal(c.want) {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestLeaseArgument checks the inequality the safety argument rests on, over a grid of timings:
// whenever the session is invalidated (by the TTL or otherwise, never before the last
// confirmation), the earliest takeover is at least LeaseMargin after the deadline.
func TestLeaseArgument(t *testing.T) {
	checked := 0
	defer func() {
		if checked < 8 {
			t.Errorf("only %d valid timing combinations checked", checked)
		}
	}()
	for _, ttl := range []time.Duration{time.Second, 2 * time.Second, 15 * time.Second, time.Minute} {
		for _, ld := range []time.Duration{time.Second, 15 * time.Second, MaxLockDelay} {
			c := validConfig()
			c.TTL, c.LockDelay, c.HoldDown = ttl, ld, ttl
			c = c.WithDefaults()
			if err := c.Validate(); err != nil {
				continue
			}
			checked++
			for _, lag := range []time.Duration{0, c.RenewInterval, 5 * time.Second} {
				ttlAt, confirm := t0, t0.Add(lag)
				d := LeaseDeadline(ttlAt, confirm, c.TTL, c.LockDelay, c.LeaseMargin)
				// TTL path: invalidation no earlier than ttlAt + TTL.
				if take := ttlAt.Add(c.TTL + c.LockDelay); take.Before(d.Add(c.LeaseMargin)) {
					t.Errorf("ttl %s ld %s lag %s: TTL-path takeover %s before deadline+margin", ttl, ld, lag, take.Sub(d))
				}
				// Other invalidations: no earlier than the confirmation was sent.
				if take := confirm.Add(c.LockDelay); take.Before(d.Add(c.LeaseMargin)) {
					t.Errorf("ttl %s ld %s lag %s: takeover %s before deadline+margin", ttl, ld, lag, take.Sub(d))
				}
			}
			// Liveness: renewed every RenewInterval with answers within RequestTimeout, one round
			// lost, the lease never lapses.
			sent := t0
			d := LeaseDeadline(sent, sent, c.TTL, c.LockDelay, c.LeaseMargin)
			if next := sent.Add(2*c.RenewInterval + c.RequestTimeout); !next.Before(d) {
				t.Errorf("ttl %s ld %s: lease lapses before the renewal after a lost one", ttl, ld)
			}
		}
	}
}

func TestOwnedMeta(t *testing.T) {
	qs := []QueueSpec{{Name: "out", Slices: 64}, {Name: "in", Slices: 8}, {Name: "bounces", Slices: 2}}
	if got := ownedMeta(qs, map[string][]int{"out": {7, 0, 1, 2, 3}, "in": {1, 2}}); got != "in:1-2 out:0-3,7" {
		t.Errorf("ownedMeta = %q", got)
	}
	if got := ownedMeta(qs, nil); got != "" {
		t.Errorf("ownedMeta(nil) = %q", got)
	}
	big := []QueueSpec{{Name: "out", Slices: 1024}}
	var every []int
	for i := 0; i < 1024; i += 2 {
		every = append(every, i)
	}
	if got := ownedMeta(big, map[string][]int{"out": every}); got != "out:512/1024" {
		t.Errorf("ownedMeta for a long list = %q, want the count form", got)
	}
}

func TestParseLockValue(t *testing.T) {
	if v := parseLockValue([]byte(`{"node":"a","reason":"drain","to":"b","avoid":[{"node":"c","until":"2030-01-01T00:00:00Z"}]}`)); v.Node != "a" ||
		v.Reason != ReasonDrain || v.To != "b" || len(v.Avoid) != 1 || !v.Avoid[0].Until.Equal(t0) {
		t.Errorf("parsed %+v", v)
	}
	if v := parseLockValue([]byte("mx1\n")); v.Node != "mx1" {
		t.Errorf("bare name parsed as %+v", v)
	}
}

func TestEntryLive(t *testing.T) {
	entry := func(checks ...*api.HealthCheck) *api.ServiceEntry {
		return &api.ServiceEntry{Service: &api.AgentService{ID: "qslice-c-a"}, Checks: checks}
	}
	alive := &api.HealthCheck{CheckID: "qslice-c-a:alive", ServiceID: "qslice-c-a", Status: api.HealthPassing}
	serf := &api.HealthCheck{CheckID: "serfHealth", Status: api.HealthPassing}
	queueCrit := &api.HealthCheck{CheckID: "qslice-c-a:queue:out", ServiceID: "qslice-c-a", Status: api.HealthCritical}
	cases := []struct {
		name string
		e    *api.ServiceEntry
		want bool
	}{
		{"alive", entry(serf, alive), true},
		{"a failing queue does not take the node out", entry(serf, alive, queueCrit), true},
		{"alive check missing", entry(serf), false},
		{"alive check critical", entry(serf, &api.HealthCheck{CheckID: "qslice-c-a:alive", ServiceID: "qslice-c-a", Status: api.HealthCritical}), false},
		{"serf failing", entry(&api.HealthCheck{CheckID: "serfHealth", Status: api.HealthCritical}, alive), false},
		{"node maintenance", entry(serf, alive, &api.HealthCheck{CheckID: "_node_maintenance", Status: api.HealthCritical}), false},
		{"service maintenance", entry(serf, alive, &api.HealthCheck{CheckID: "_service_maintenance:qslice-c-a", ServiceID: "qslice-c-a", Status: api.HealthCritical}), false},
	}
	for _, c := range cases {
		if got := entryLive(c.e); got != c.want {
			t.Errorf("%s: live = %v", c.name, got)
		}
	}
}

func TestExplainErrors(t *testing.T) {
	c, err := NewConsul(ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "127.0.0.1:8500"}, newFakeAssignee("n", newLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		err  error
		want string
		kind error
	}{
		{api.StatusError{Code: 403, Body: "Permission denied: token lacks 'service:write'"},
			"register service: consul at 127.0.0.1:8500: permission denied: check the ACL token (CONSUL_HTTP_TOKEN or consul.token) (consul said: Permission denied: token lacks 'service:write')", ErrPermissionDenied},
		{api.StatusError{Code: 403, Body: "ACL not found"}, "consul at 127.0.0.1:8500: permission denied: check the ACL token", ErrPermissionDenied},
		{api.StatusError{Code: 500, Body: "No cluster leader"}, "consul at 127.0.0.1:8500: no cluster leader: Consul servers are electing a leader", ErrConsulUnavailable},
		{api.StatusError{Code: 429, Body: "slow down"}, "rate limited", ErrConsulUnavailable},
		{api.StatusError{Code: 500, Body: "boom"}, "unexpected response 500", nil},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")},
			"consul at 127.0.0.1:8500: unreachable: is the Consul agent running? check CONSUL_HTTP_ADDR or consul.address", ErrConsulUnavailable},
		{fmt.Errorf("get: %w", context.DeadlineExceeded), "timed out", ErrConsulUnavailable},
		{errors.New("tls: failed to verify certificate: x509: certificate signed by unknown authority"), "TLS failure: check consul.tls", ErrConsulUnavailable},
	}
	if got := c.explain(OpKVWatch, context.DeadlineExceeded).Error(); !strings.Contains(got, "no answer within "+(watchWait+watchWait/16+c.cfg.RequestTimeout).String()) {
		t.Errorf("a blocking query's timeout quotes the wrong limit: %q", got)
	}
	for _, tc := range cases {
		got := c.explain(OpRegister, tc.err)
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
	c, err := NewConsul(ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "https://consul.example:8501", Token: "tok",
		TLS: TLSConfig{ServerName: "consul.example"}}, newFakeAssignee("n", newLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "consul.example:8501" {
		t.Errorf("addr %q", c.addr)
	}
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.2:8500")
	c, err = NewConsul(ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues}, newFakeAssignee("n", newLedger()), nil, nil, nil)
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
	logs := &syncBuffer{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	c, err := NewConsul(ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "127.0.0.1:8500", TTL: 2 * time.Second},
		newFakeAssignee("n", newLedger()), nil, slog.New(slog.NewTextHandler(logs, nil)), clk)
	if err != nil {
		t.Fatal(err)
	}
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

	_ = c.call(ctx, OpKVWatch, fail(refused))
	_ = c.call(ctx, OpSessionInfo, fail(refused))
	lines("consul request failing", 1)
	if e := c.Status().ConsulError; !strings.Contains(e, "unreachable") {
		t.Fatalf("Status.ConsulError = %q", e)
	}
	step(time.Second)
	_ = c.call(ctx, OpSessionInfo, fail(timeout))
	lines("consul request failing", 2) // a new problem
	step(time.Second)
	_ = c.call(ctx, OpKVWatch, ok) // the servers answer...
	if e := c.Status().ConsulError; e != "" {
		t.Fatalf("Status.ConsulError = %q while Consul answers", e)
	}
	step(200 * time.Millisecond)
	_ = c.call(ctx, OpCheckTTL, fail(timeout)) // ...and a slow request still times out
	_ = c.call(ctx, OpSessionInfo, fail(timeout))
	lines("consul request failing", 2)
	if e := c.Status().ConsulError; !strings.Contains(e, "timed out") {
		t.Fatalf("Status.ConsulError = %q, want the current failure", e)
	}
	step(100 * time.Millisecond)
	_ = c.call(ctx, OpCheckTTL, ok)
	step(time.Second)
	_ = c.call(ctx, OpSessionInfo, ok)
	lines("consul answers again", 0) // fine for 1s < TTL
	step(time.Second)
	_ = c.call(ctx, OpCheckTTL, ok)
	lines("consul answers again", 1)
	if !strings.Contains(logs.String(), "outage=2.3s") {
		t.Errorf("the recovery line does not say how long the outage lasted:\n%s", logs)
	}
	_ = c.call(ctx, OpCheckTTL, ok)
	lines("consul answers again", 1)

	// A new outage logs its problem again.
	_ = c.call(ctx, OpSessionInfo, fail(timeout))
	lines("consul request failing", 3)

	// A denied permission is not cleared by another op's answer.
	_ = c.call(ctx, OpAcquire, fail(api.StatusError{Code: 403, Body: "Permission denied"}))
	step(5 * time.Second)
	_ = c.call(ctx, OpSessionInfo, ok)
	_ = c.call(ctx, OpSessionInfo, ok)
	if e := c.Status().ConsulError; !strings.Contains(e, "permission denied") {
		t.Fatalf("Status.ConsulError = %q, want the denied permission to stay", e)
	}
	lines("consul answers again", 1)
	if n := c.Status().ConsulErrors[OpSessionInfo.String()]; n != 4 {
		t.Errorf("session_info failures counted = %d, want 4", n)
	}
}
