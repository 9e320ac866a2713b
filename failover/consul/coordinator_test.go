package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/consultest"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Integration tests against a real Consul (internal/consultest). Timings: TTL 2 s, lock-delay
// 1 s, hold-down 3 s; renew, request timeout and lease margin default to 200 ms each.

func TestConsulAcquireAndRelease(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	// A previous run served a queue "old": its check must go.
	if err := cl.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "qslice-test-a", Name: ServiceName,
		Checks: api.AgentServiceChecks{{CheckID: "qslice-test-a:queue:old", TTL: "1m"}}}); err != nil {
		t.Fatal(err)
	}
	l := failovertest.NewLedger()
	a := startNode(t, srv, l, "a", nil)

	waitSplit(t, 15*time.Second, "a owns every slice", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)
	st := a.c.Status()
	if !st.LeaseValid || st.LeaseRemaining <= 0 || st.LeaseRemaining > time.Second {
		t.Errorf("lease valid %v remaining %s; want valid, at most min(TTL, lock-delay)", st.LeaseValid, st.LeaseRemaining)
	}
	if len(st.Owned) != totalTestSlices {
		t.Fatalf("Status.Owned has %d slices", len(st.Owned))
	}
	session := a.c.sessionID()
	for _, o := range st.Owned {
		p, _, err := cl.KV().Get(a.c.sliceKey(o.Slice), nil)
		if err != nil || p == nil {
			t.Fatalf("get %s: %v %v", o.Slice, p, err)
		}
		if p.Session != session || parseLockValue(p.Value).Node != "a" {
			t.Errorf("%s: session %q value %s; want our session and node a", o.Slice, p.Session, p.Value)
		}
		if o.FencingToken == 0 || o.FencingToken != p.ModifyIndex || o.LockIndex != p.LockIndex || !o.Processing {
			t.Errorf("%s: fencing token %d lock index %d processing %v; KV has modify index %d lock index %d",
				o.Slice, o.FencingToken, o.LockIndex, o.Processing, p.ModifyIndex, p.LockIndex)
		}
	}
	// Registration: one instance, Meta with owned slices, alive check bound to the session.
	consultest.WaitFor(t, 5*time.Second, "meta shows owned slices", func() error {
		svcs, _, err := cl.Health().Service(ServiceName, "", false, nil)
		if err != nil {
			return err
		}
		if len(svcs) != 1 {
			return fmt.Errorf("%d instances", len(svcs))
		}
		m := svcs[0].Service.Meta
		if m["owned"] != "in:0-3 out:0-7" || m["queues"] != "out:8,in:4" || m["node"] != "a" || m["cluster"] != "test" || m["draining"] != "false" {
			return fmt.Errorf("meta %v", m)
		}
		var ids []string
		for _, ch := range svcs[0].Checks {
			ids = append(ids, ch.CheckID+"="+ch.Status)
		}
		slices.Sort(ids)
		want := []string{"qslice-test-a:alive=passing", "qslice-test-a:queue:in=passing", "qslice-test-a:queue:out=passing", "serfHealth=passing"}
		if !slices.Equal(ids, want) {
			return fmt.Errorf("checks %v, want %v", ids, want)
		}
		return nil
	})
	se, _, err := cl.Session().Info(session, nil)
	if err != nil || se == nil {
		t.Fatalf("session info: %v %v", se, err)
	}
	if se.Behavior != api.SessionBehaviorRelease || se.LockDelay != time.Second ||
		!slices.Contains(se.NodeChecks, "serfHealth") || len(se.ServiceChecks) != 1 || se.ServiceChecks[0].ID != "qslice-test-a:alive" {
		t.Errorf("session %+v: want release, 1s lock-delay, bound to serfHealth and the alive check", se)
	}

	if err := a.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := a.a.Count(); n != 0 {
		t.Errorf("after stop the assignee still has %d slices", n)
	}
	for _, s := range allTestSlices() {
		p, _, err := cl.KV().Get(a.c.sliceKey(s), nil)
		if err != nil || p == nil {
			t.Fatalf("get %s: %v", s, err)
		}
		if v := parseLockValue(p.Value); p.Session != "" || v.Reason != failover.ReasonReleased || v.Node != "a" {
			t.Errorf("%s after stop: session %q value %s; want released by a", s, p.Session, p.Value)
		}
	}
	if se, _, _ := cl.Session().Info(session, nil); se != nil {
		t.Error("session still exists after stop")
	}
	if svcs, _, _ := cl.Health().Service(ServiceName, "", false, nil); len(svcs) != 0 {
		t.Errorf("%d service instances after stop", len(svcs))
	}
	st = a.c.Status()
	if st.OwnershipChanges[failover.ReasonAcquired] != totalTestSlices || st.OwnershipChanges[failover.ReasonReleased] != totalTestSlices {
		t.Errorf("ownership changes %v; want %d acquired and released", st.OwnershipChanges, totalTestSlices)
	}
	if !a.c.ValidUntil().IsZero() {
		t.Error("ValidUntil not cleared after stop")
	}
	if n := a.logs.count("slice ownership changed"); n != 2*totalTestSlices {
		t.Errorf("%d ownership log lines, want %d", n, 2*totalTestSlices)
	}
	l.Check(t)
}

func TestConsulTwoNodesSpreadAfterHoldDown(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	a := startNode(t, srv, l, "a", nil)
	waitSplit(t, 15*time.Second, "a owns everything", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)
	waitSettled(t, a)
	b := startNode(t, srv, l, "b", nil)
	want := rendezvousSplit(a, b)
	if len(want[a]) == 0 || len(want[b]) == 0 {
		t.Fatalf("test needs both nodes to have a share: %v", want)
	}
	waitSplit(t, 20*time.Second, "rendezvous split", want, a, b)
	// b is new: a gives slices to it only after b has been live for the hold-down.
	checkFirstStarts(t, l, "b", want[b], b.started, "b started", 3*time.Second, "the hold-down")
	sa, sb := a.c.Status(), b.c.Status()
	if int(sa.OwnershipChanges[failover.ReasonFailback]) != len(want[b]) || int(sb.OwnershipChanges[failover.ReasonFailback]) != len(want[b]) {
		t.Errorf("failback counts a=%d b=%d, want %d each", sa.OwnershipChanges[failover.ReasonFailback], sb.OwnershipChanges[failover.ReasonFailback], len(want[b]))
	}
	for _, ss := range sb.Slices {
		if ss.Home == "" || (ss.State == failover.SliceOwned) != (ss.Owner == "b") {
			t.Errorf("b's view of %s: %+v", ss.Slice, ss)
		}
	}
	l.Check(t)
}

func TestConsulTTLFailureFailoverThenFailback(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	a, b, want := startSettledPair(t, srv, l)

	tokenBefore := map[failover.SliceID]uint64{}
	for _, s := range want[a] {
		tok := a.c.FencingToken(s.Queue, s.Index)
		if tok == 0 || b.c.FencingToken(s.Queue, s.Index) != 0 {
			t.Fatalf("%s: fencing token %d on its owner a, %d on b; want non-zero on a only", s, tok, b.c.FencingToken(s.Queue, s.Index))
		}
		tokenBefore[s] = tok
	}

	// On a loaded machine a renewal may come late at start-up (a lapse of its own): the failure
	// starts from a valid lease and no outage in progress, and its lines are counted from there.
	waitSteadyLease(t, a, "the failure")
	mark := len(a.logs.String())
	failedAt := time.Now()
	a.h.set(errors.New("shared disk unreachable"))
	waitSplit(t, 15*time.Second, "b takes over everything", map[*testNode][]failover.SliceID{a: {}, b: allTestSlices()}, a, b)
	for _, s := range want[a] {
		if got := b.c.FencingToken(s.Queue, s.Index); got <= tokenBefore[s] {
			t.Errorf("%s: b's fencing token %d is not above a's %d: a stale owner could not be refused", s, got, tokenBefore[s])
		}
		if got := a.c.FencingToken(s.Queue, s.Index); got != 0 {
			t.Errorf("%s: a still hands out fencing token %d after losing the slice", s, got)
		}
	}
	// a passed its TTL at most one renew interval before failing: the check lapses no earlier
	// than failedAt - renew + TTL, and lock-delay comes on top.
	checkFirstStarts(t, l, "b", want[a], failedAt, "a's check stopped passing", 2*time.Second+time.Second-200*time.Millisecond, "TTL + lock-delay")
	if since := a.logs.String()[mark:]; strings.Count(since, "node unhealthy") != 1 || strings.Count(since, "lease lapsed") != 1 {
		t.Errorf("want one 'node unhealthy' and one 'lease lapsed' line on a since the failure:\n%s", since)
	}
	waitChanges(t, a, failover.ReasonLeaseLost, len(want[a]))
	waitChanges(t, b, failover.ReasonFailover, len(want[a]))

	healedAt := time.Now()
	a.h.set(nil)
	waitSplit(t, 20*time.Second, "fail-back to the rendezvous split", want, a, b)
	checkFirstStarts(t, l, "a", want[a], healedAt, "a was healed", 3*time.Second, "the hold-down")
	if got := b.c.Status().OwnershipChanges[failover.ReasonFailback]; int(got) < len(want[a]) {
		t.Errorf("b counted %d failback, want >= %d", got, len(want[a]))
	}
	l.Check(t)
}

func TestConsulCrashFailoverHonoursLeaseAndLockDelay(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	a, b, want := startSettledPair(t, srv, l)
	session := a.c.sessionID()

	// a dies: it stops renewing; its handlers would be killed at its lease deadline.
	crashAt := time.Now()
	aValid := a.crash(t)
	// Watch a's session from outside: lastAlive is a lower bound of its invalidation.
	var lastAlive time.Time
	consultest.WaitFor(t, 10*time.Second, "a's session invalidated", func() error {
		before := time.Now()
		se, _, err := cl.Session().Info(session, nil)
		if err != nil {
			return err
		}
		if se != nil {
			lastAlive = before
			return errors.New("still alive")
		}
		return nil
	})
	waitSplit(t, 10*time.Second, "b takes over", map[*testNode][]failover.SliceID{b: allTestSlices()}, b)
	for _, s := range want[a] {
		start := l.FirstStart(s, "b", crashAt)
		if start.Before(lastAlive.Add(time.Second)) {
			t.Errorf("b took %s %s after a's session was last seen alive: lock-delay (1s) not honoured",
				s, start.Sub(lastAlive))
		}
		if !start.After(aValid) {
			t.Errorf("b took %s at %s, before a's lease deadline %s", s, start.Format("15:04:05.000"), aValid.Format("15:04:05.000"))
		}
		t.Logf("%s: taken %s after a's lease ended, %s after its session was last seen", s, start.Sub(aValid).Round(time.Millisecond), start.Sub(lastAlive).Round(time.Millisecond))
	}
	l.Check(t)
}

func TestConsulNodeRestartAfterCrash(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	a := startNode(t, srv, l, "a", nil)
	waitSplit(t, 15*time.Second, "a owns everything", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)
	old := a.c.sessionID()
	validUntil := a.crash(t)

	// The same node comes back at once, before its old session could lapse: the new process
	// passes the same alive check, so it must destroy the old session itself.
	a2 := startNodeAs(t, srv, l, "a", "a-restarted", nil)
	waitSplit(t, 15*time.Second, "the restarted node owns everything", map[*testNode][]failover.SliceID{a2: allTestSlices()}, a2)
	for _, s := range allTestSlices() {
		if start := l.FirstStart(s, "a-restarted", time.Time{}); !start.After(validUntil) {
			t.Errorf("%s restarted at %s, before the crashed run's lease ended at %s", s, start.Format("15:04:05.000"), validUntil.Format("15:04:05.000"))
		}
	}
	if se, _, err := cl.Session().Info(old, nil); err != nil || se != nil {
		t.Errorf("old session still there: %v %v", se, err)
	}
	if a2.logs.count("destroying a session left by a previous run of this node") == 0 {
		t.Error("no log line for the stale session")
	}
	l.Check(t)
}

func TestConsulSessionDestroyedOutOfBand(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	a, b, want := startSettledPair(t, srv, l)
	session := a.c.sessionID()

	destroyedAt := time.Now()
	if _, err := cl.Session().Destroy(session, nil); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 3*time.Second, "a stops processing", func() error {
		if n := a.a.Count(); n != 0 {
			return fmt.Errorf("a still has %d slices", n)
		}
		return nil
	})
	if d := time.Since(destroyedAt); d > time.Second {
		t.Errorf("a stopped %s after its session was destroyed: not before lock-delay ran out", d)
	}
	// Losing its session restarts a's hold-down: b takes a's slices, but only after lock-delay...
	waitSplit(t, 10*time.Second, "b takes a's slices", map[*testNode][]failover.SliceID{a: {}, b: allTestSlices()}, a, b)
	checkFirstStarts(t, l, "b", want[a], destroyedAt, "a's session was destroyed", time.Second, "the lock-delay (1s)")
	// ...and a gets them back once it has held its new session for a hold-down.
	waitSplit(t, 10*time.Second, "fail-back to a", want, a, b)
	checkFirstStarts(t, l, "a", want[a], destroyedAt, "a lost its session", 3*time.Second, "the hold-down")
	if a.c.sessionID() == session {
		t.Error("a still uses the destroyed session")
	}
	if got := a.c.Status().OwnershipChanges[failover.ReasonLeaseLost]; int(got) != len(want[a]) {
		t.Errorf("a counted %d lease_lost, want %d", got, len(want[a]))
	}
	if got := b.c.Status().OwnershipChanges[failover.ReasonLeaseLost]; got != 0 {
		t.Errorf("b lost %d slices", got)
	}
	if a.logs.count("left by a previous run") != 0 {
		t.Error("a took its own ended session for one left by a previous run")
	}
	lost := a.endedSpans("qslice.slice.lost")
	for _, s := range want[a] {
		if sp := lost[s.String()]; len(sp) != 1 || spanAttr(sp[0], "qslice.why") == "" {
			t.Errorf("%s: %d slice.lost spans on a, want one saying why", s, len(sp))
		}
	}
	l.Check(t)
}

func TestConsulRestart(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	a := startNode(t, srv, l, "a", nil)
	waitSplit(t, 15*time.Second, "a owns everything", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)
	liveBefore, sessionBefore := publishedLiveSince(t, srv, a)

	// On a loaded machine a renewal may come late before the outage (a lapse and failing
	// requests of their own, at start-up): the outage starts from a valid lease and no outage
	// in progress, and what it logs and traces is counted from there on.
	waitSteadyLease(t, a, "Consul stops")
	mark := len(a.logs.String())
	logSince := func() string { return a.logs.String()[mark:] }
	spansBefore := len(a.endedSpans("qslice.lease.lapsed")[""])
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	consultest.WaitFor(t, 5*time.Second, "processing stops when the lease lapses", func() error {
		if n := a.a.Count(); n != 0 {
			return fmt.Errorf("%d slices still processed", n)
		}
		return nil
	})
	// The lease is at most min(TTL, lock-delay) - margin = 800ms; allow for a loaded machine.
	if d := time.Since(stoppedAt); d > 3*time.Second {
		t.Errorf("processing stopped %s after Consul went away; the lease is at most 800ms", d)
	}
	if time.Now().Before(a.c.ValidUntil()) {
		t.Error("ValidUntil still in the future with Consul down")
	}
	if st := a.c.Status(); st.ConsulError == "" || !strings.Contains(st.ConsulError, "consul at "+srv.HTTPAddr) {
		t.Errorf("Status.ConsulError = %q", st.ConsulError)
	}
	select {
	case err := <-a.done:
		t.Fatalf("Run returned while Consul was down: %v", err)
	default:
	}

	srv.Restart()
	waitSplit(t, 20*time.Second, "processing resumes", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)
	// One lapse for the outage, until the lease is valid again (a loaded machine may lapse again
	// later, a lapse of its own).
	outage := logSince()
	if i := strings.Index(outage, "lease lapsed"); i >= 0 {
		if j := strings.Index(outage[i:], "lease valid"); j >= 0 {
			outage = outage[:i+j]
		}
	}
	if n := strings.Count(outage, "lease lapsed"); n != 1 {
		t.Errorf("%d 'lease lapsed' lines from Consul's stop until the lease was valid again, want 1", n)
	}
	lapses := a.endedSpans("qslice.lease.lapsed")[""]
	lapses = lapses[min(spansBefore, len(lapses)):]
	slices.SortFunc(lapses, func(x, y sdktrace.ReadOnlySpan) int { return x.StartTime().Compare(y.StartTime()) })
	switch {
	case len(lapses) == 0 || lapses[0].EndTime().Sub(lapses[0].StartTime()) <= 0:
		t.Errorf("%d lease.lapsed spans since Consul's stop, want one with a duration", len(lapses))
	case len(lapses) > 1 && lapses[1].StartTime().Before(lapses[0].EndTime()):
		t.Errorf("%d lease.lapsed spans for one outage, want one", len(lapses))
	}
	// The outage is declared over once Consul has been fine for a TTL (2s here).
	consultest.WaitFor(t, 10*time.Second, "the recovery is logged", func() error {
		if n := strings.Count(logSince(), "consul answers again"); n != 1 {
			return fmt.Errorf("%d 'consul answers again' lines, want 1", n)
		}
		return nil
	})
	if n := strings.Count(logSince(), "consul request failing"); n < 1 || n > 4 {
		t.Errorf("%d 'consul request failing' lines; want one per distinct problem, not one per retry", n)
	}
	// live_since: a restart that kept the node's session (Consul keeps its state) is no new live
	// stretch, or every node would look unsettled after it and a restarted node would take its
	// slices back without its hold-down (failover.LiveStretch). A lost session starts a new one.
	// The provisional live_since published while the session could not be confirmed must not
	// stay: a registration sent during the outage may reach the agent late and overwrite the
	// restored one, so the keeper registers again for two TTLs after a failed registration.
	switch liveAfter, sessionAfter := publishedLiveSince(t, srv, a); {
	case sessionAfter == sessionBefore && liveAfter != liveBefore:
		t.Errorf("after the Consul restart node a's service Meta shows live_since %s (the provisional one, published while "+
			"its session could not be confirmed), though the session %s survived and its live stretch began at %s: peers see the node as started later than it did "+
			"and hold slices back from it for a hold-down", liveAfter, sessionBefore, liveBefore)
	case sessionAfter != sessionBefore && liveAfter <= liveBefore:
		t.Errorf("live_since %s after the Consul restart, want later than %s: session %s was replaced by %s", liveAfter, liveBefore, sessionBefore, sessionAfter)
	default:
		t.Logf("session %s -> %s, live_since %s -> %s", sessionBefore, sessionAfter, liveBefore, liveAfter)
	}
	if err := a.stop(t); err != nil {
		t.Errorf("Run after restart: %v", err)
	}
	l.Check(t)
}

// publishedLiveSince reads n's live_since from its service Meta and its session from Consul.
func publishedLiveSince(t *testing.T, srv *consultest.Server, n *testNode) (liveSince, session string) {
	t.Helper()
	cl := srv.Client("")
	svc, _, err := cl.Agent().Service(n.c.serviceID, nil)
	if err != nil {
		t.Fatalf("reading the service of %s: %v", n.c.serviceID, err)
	}
	sessions, _, err := cl.Session().List(nil)
	if err != nil {
		t.Fatalf("listing sessions: %v", err)
	}
	for _, se := range sessions {
		if se.Name == n.c.sessionName {
			session = se.ID
		}
	}
	return svc.Meta["live_since"], session
}

// qsliceRules is the ACL policy docs/failover.md documents for a node of cluster "test".
const qsliceRules = `
service "qslice" { policy = "write" }
node_prefix "" { policy = "read" }
key_prefix "qslice/test/" { policy = "write" }
session_prefix "" { policy = "write" }
`

func TestConsulACL(t *testing.T) {
	srv := consultest.Start(t, consultest.WithACL())
	l := failovertest.NewLedger()

	t.Run("unknown token", func(t *testing.T) {
		n := startNode(t, srv, l, "denied", func(c *failover.ConsulConfig) { c.Token = "00000000-dead-beef-0000-000000000000" })
		consultest.WaitFor(t, 5*time.Second, "clear error", func() error {
			if !strings.Contains(n.logs.String(), "consul at "+srv.HTTPAddr+": permission denied: check the ACL token (CONSUL_HTTP_TOKEN or consul.token) (consul said: ACL not found)") {
				return errors.New("no clear error logged yet")
			}
			// Registration and the watches start together: a watch may be refused (and logged)
			// first, so wait for the registration's refusal too.
			if n.c.Status().ConsulErrors["register"] == 0 {
				return errors.New("registration not refused yet")
			}
			return nil
		})
		st := n.c.Status()
		if !strings.Contains(st.ConsulError, "consul at "+srv.HTTPAddr+": permission denied") || st.ConsulErrors["register"] == 0 {
			t.Errorf("status: error %q counts %v", st.ConsulError, st.ConsulErrors)
		}
		if err := n.stop(t); err != nil {
			t.Errorf("Run: %v", err)
		}
		if calls := n.a.CallCount(); calls != 0 {
			t.Errorf("assignee called %d times without any lock", calls)
		}
		// Counted among the lines about this problem: on a loaded machine a request may also
		// time out at start-up, a problem of its own with its own line.
		denied := 0
		for _, line := range strings.Split(n.logs.String(), "\n") {
			if strings.Contains(line, "consul request failing") && strings.Contains(line, "permission denied") {
				denied++
			}
		}
		if denied != 1 {
			t.Errorf("%d error lines for one persistent problem, want 1:\n%s", denied, n.logs.String())
		}
	})

	t.Run("token without KV write", func(t *testing.T) {
		tok := srv.Token("no-kv", `
service "qslice" { policy = "write" }
node_prefix "" { policy = "read" }
key_prefix "qslice/test/" { policy = "read" }
session_prefix "" { policy = "write" }
`)
		n := startNode(t, srv, l, "readonly", func(c *failover.ConsulConfig) { c.Token = tok })
		consultest.WaitFor(t, 10*time.Second, "clear error", func() error {
			// The member key is written first; a node on the prefix layout also tries to lock.
			logs := n.logs.String()
			if !strings.Contains(logs, "write member key: consul at "+srv.HTTPAddr+": permission denied: check the ACL token") {
				return errors.New("no clear error logged yet for the member key")
			}
			// (One log line per problem and outage: the refused acquisitions are counted.)
			if testLayout() == failover.LayoutPrefix && n.c.Status().ConsulErrors[string(failover.OpAcquire)] == 0 {
				return errors.New("no acquisition refused yet")
			}
			return nil
		})
		if n.a.Count() != 0 {
			t.Error("slices assigned without locks")
		}
		if err := n.stop(t); err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	t.Run("documented policy", func(t *testing.T) {
		n := startNode(t, srv, l, "good", func(c *failover.ConsulConfig) { c.Token = srv.Token("qslice-good", qsliceRules) })
		waitSplit(t, 15*time.Second, "node with the documented policy owns everything", map[*testNode][]failover.SliceID{n: allTestSlices()}, n)
		if err := n.stop(t); err != nil {
			t.Errorf("Run with the documented policy: %v", err)
		}
		// The policy grants everything qslice does: no request was refused (every new problem is
		// logged, a refusal as "permission denied"). A request that timed
		// out on a loaded machine is counted too, but says nothing about the policy.
		if logs := n.logs.String(); strings.Contains(logs, "permission denied") {
			st := n.c.Status()
			t.Errorf("a request was refused with the documented policy: %v (%s)\n%s", st.ConsulErrors, st.ConsulError, logs)
		}
	})

	// Adopting reads the local agent's node name from its checks: the documented policy must
	// allow it (agent/self would need agent:read).
	t.Run("documented policy, restart in place", func(t *testing.T) {
		tok := srv.Token("qslice-restart", qsliceRules)
		withToken := func(c *failover.ConsulConfig) { c.Token = tok }
		store := &memStore{}
		n := startNodeAs(t, srv, l, "kept", "kept", withToken, func(c *Coordinator) { c.SetRestart(nil, store) })
		waitSplit(t, 15*time.Second, "node kept owns everything", map[*testNode][]failover.SliceID{n: allTestSlices()}, n)
		session := n.c.sessionID()
		consultest.WaitFor(t, 5*time.Second, "the session recorded", func() error {
			if r := store.load(); r == nil || r.Session != session {
				return fmt.Errorf("recorded %+v, want session %s", r, session)
			}
			return nil
		})
		if err := n.stop(t); err != nil {
			t.Fatalf("stop for a restart: %v", err)
		}
		n2 := startNodeAs(t, srv, l, "kept", "kept-restarted", withToken, func(c *Coordinator) { c.SetRestart(store.load(), store) })
		waitSplit(t, 15*time.Second, "the restarted process owns everything", map[*testNode][]failover.SliceID{n2: allTestSlices()}, n2)
		if got := n2.c.sessionID(); got != session || n2.logs.count("restart in place: adopted the previous process's session") != 1 {
			t.Errorf("session %s after the restart, want the adopted %s:\n%s", got, session, n2.logs.String())
		}
	})
	l.Check(t)
}

// waitChanges waits until n's published Status counts want ownership changes for reason. The
// Status is published after the round whose SetSlices waitSplit saw, so it may lag by a round.
func waitChanges(t *testing.T, n *testNode, reason string, want int) {
	t.Helper()
	consultest.WaitFor(t, 10*time.Second, fmt.Sprintf("%s's status counts %d %s", n.id, want, reason), func() error {
		if got := n.c.Status().OwnershipChanges[reason]; int(got) != want {
			return fmt.Errorf("%s counted %d %s, want %d", n.id, got, reason, want)
		}
		return nil
	})
}

func TestConsulDrainAndUndrain(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	a, b, want := startSettledPair(t, srv, l)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	drainStart := time.Now()
	if err := a.c.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if n := a.a.Count(); n != 0 || len(a.c.Status().Owned) != 0 {
		t.Fatalf("after Drain a still processes %d slices / owns %d", n, len(a.c.Status().Owned))
	}
	t.Logf("drain took %s", time.Since(drainStart))
	// Explicit release: no lock-delay, b takes over at once. (The deadline is a deadline: at
	// 2 s it did not tell a lock-delay of 1 s apart, and a loaded machine takes seconds.)
	waitSplit(t, 10*time.Second, "b owns everything", map[*testNode][]failover.SliceID{a: {}, b: allTestSlices()}, a, b)
	if !a.c.Status().Draining {
		t.Error("Status.Draining false after Drain")
	}
	waitChanges(t, b, failover.ReasonDrain, len(want[a]))
	// The timeline in traces: a hand-off span per slice on a, an acquire span on b.
	handoffs, acquires := a.endedSpans("qslice.slice.handoff"), b.endedSpans("qslice.slice.acquire")
	for _, s := range want[a] {
		h, acq := handoffs[s.String()], acquires[s.String()]
		if len(h) != 1 || spanAttr(h[0], "qslice.reason") != failover.ReasonDrain || spanAttr(h[0], "qslice.outcome") != "released" ||
			spanAttr(h[0], "qslice.to") != "b" || h[0].EndTime().Before(h[0].StartTime()) {
			t.Errorf("%s: hand-off spans on a: %d, want one (reason drain, to b, released)", s, len(h))
			continue
		}
		var drained *sdktrace.ReadOnlySpan
		for i := range acq {
			if spanAttr(acq[i], "qslice.reason") == failover.ReasonDrain {
				drained = &acq[i]
			}
		}
		if drained == nil || spanAttr(*drained, "qslice.from") != "a" || spanAttr(*drained, "qslice.fencing_token") == "0" {
			t.Errorf("%s: no acquire span on b with reason drain, from a and a fencing token", s)
			continue
		}
		if (*drained).StartTime().Before(h[0].EndTime().Add(-time.Second)) {
			t.Errorf("%s: b acquired at %s, before a released at %s", s, (*drained).StartTime(), h[0].EndTime())
		}
	}
	// a stays empty while drained, even after a hold-down.
	holdEnd := time.Now().Add(3500 * time.Millisecond)
	consultest.WaitFor(t, 5*time.Second, "a stays drained past a hold-down", func() error {
		if n := a.a.Count(); n != 0 {
			t.Fatalf("drained node took %d slices", n)
		}
		if time.Now().Before(holdEnd) {
			return errors.New("waiting")
		}
		return nil
	})
	if err := a.c.Undrain(ctx); err != nil {
		t.Fatal(err)
	}
	waitSplit(t, 10*time.Second, "a gets its share back", want, a, b)
	l.Check(t)
}

func TestConsulStuckSliceHandoff(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	stuck := func(c *failover.ConsulConfig) { c.StuckHandoff, c.StuckAfter = true, 500*time.Millisecond }
	a := startNode(t, srv, l, "a", stuck)
	b := startNode(t, srv, l, "b", stuck)
	want := rendezvousSplit(a, b)
	waitSplit(t, 25*time.Second, "rendezvous split", want, a, b)
	waitSettled(t, a)
	waitSettled(t, b)

	s := want[a][0]
	a.h.setSlice(s, failover.Health{Status: failover.StatusCritical, Output: "worker exits 1"})
	consultest.WaitFor(t, 10*time.Second, "stuck slice moves to b", func() error {
		if !slices.Contains(b.a.Slices(), s) {
			return fmt.Errorf("%s not on b", s)
		}
		return nil
	})
	p, _, err := srv.Client("").KV().Get(a.c.sliceKey(s), nil)
	if err != nil || p == nil {
		t.Fatal(err)
	}
	var v failover.LockValue
	if err := json.Unmarshal(p.Value, &v); err != nil || v.Node != "b" || len(v.Avoid) != 1 || v.Avoid[0].Node != "a" {
		t.Errorf("lock value %s: want owner b avoiding a", p.Value)
	}
	if got := a.c.Status().OwnershipChanges[failover.ReasonStuck]; got != 1 {
		t.Errorf("a counted %d stuck hand-offs", got)
	}
	// b keeps it while the avoidance lasts (one hold-down), then it goes home.
	a.h.setSlice(s, failover.Health{Status: failover.StatusPassing})
	consultest.WaitFor(t, 10*time.Second, "slice goes home after the avoidance", func() error {
		if !slices.Contains(a.a.Slices(), s) {
			return fmt.Errorf("%s not back on a", s)
		}
		return nil
	})
	l.Check(t)
}

func TestConsulServiceMaintenanceHandsOff(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	a, b, want := startSettledPair(t, srv, l)
	liveBefore, sessionBefore := publishedLiveSince(t, srv, a)

	if err := cl.Agent().EnableServiceMaintenance("qslice-test-a", "replacing a disk"); err != nil {
		t.Fatal(err)
	}
	waitSplit(t, 20*time.Second, "b owns everything", map[*testNode][]failover.SliceID{a: {}, b: allTestSlices()}, a, b)
	if err := cl.Agent().DisableServiceMaintenance("qslice-test-a"); err != nil {
		t.Fatal(err)
	}
	// Maintenance does not end a's session, so a stays settled (its live stretch goes on) and
	// gets its share back without a hold-down. (A time bound cannot tell: the hold-down is 3 s,
	// and a loaded machine takes seconds.)
	waitSplit(t, 20*time.Second, "a gets its share back", want, a, b)
	if liveAfter, sessionAfter := publishedLiveSince(t, srv, a); liveAfter != liveBefore || sessionAfter != sessionBefore {
		t.Errorf("after the maintenance a publishes live_since %s with session %s, want %s with %s: it looks unsettled to its peers",
			liveAfter, sessionAfter, liveBefore, sessionBefore)
	}
	if got := a.c.Status().OwnershipChanges[failover.ReasonLeaseLost]; got != 0 {
		t.Errorf("a lost %d locks; maintenance should hand off cleanly", got)
	}
	l.Check(t)
}

func TestNewConsulRejectsBadConfig(t *testing.T) {
	_, err := New(failover.ConsulConfig{Cluster: "c", NodeID: "n"}, failovertest.NewAssignee("n", failovertest.NewLedger()), nil, nil, nil)
	var fe *failover.FieldError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "queues: must list at least one queue") {
		t.Fatalf("err = %v", err)
	}
}

func TestConsulDrainWithoutRun(t *testing.T) {
	c, err := New(failover.ConsulConfig{Cluster: "c", NodeID: "n", Queues: testQueues, Address: "127.0.0.1:1"},
		failovertest.NewAssignee("n", failovertest.NewLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Drain(context.Background()); !errors.Is(err, failover.ErrNotRunning) {
		t.Fatalf("Drain without Run: %v", err)
	}
}

// txnBench is a real Consul with a coordinator of node b that does not run (its transactions
// are called directly) and a session of b's, with a lock-delay of 1 ms.
func txnBench(t *testing.T) (*api.Client, *Coordinator, string) {
	t.Helper()
	srv := consultest.Start(t)
	cl := srv.Client("")
	c, err := New(testConfig(srv, "b"), failovertest.NewAssignee("b", failovertest.NewLedger()), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	session, _, err := cl.Session().Create(&api.SessionEntry{Name: "test-b", LockDelay: time.Millisecond, Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cl, c, session
}

// TestAcquireRefusesStaleSnapshot: the previous owner, reason and avoid list of an acquisition
// come from the KV snapshot, so the lock is taken only while the key is as the snapshot saw it.
// Against a real Consul: a key changed after the snapshot is not taken (and not retried until a
// newer snapshot), and taken at once with the newer one, carrying its avoid list over.
func TestAcquireRefusesStaleSnapshot(t *testing.T) {
	cl, c, session := txnBench(t)
	s := failover.SliceID{Queue: "out", Index: 3}
	key := c.sliceKey(s)
	put := func(v failover.LockValue) uint64 {
		body, _ := json.Marshal(v)
		if _, err := cl.KV().Put(&api.KVPair{Key: key, Value: body}, nil); err != nil {
			t.Fatal(err)
		}
		p, _, err := cl.KV().Get(key, nil)
		if err != nil || p == nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return p.ModifyIndex
	}
	until := time.Now().Add(time.Hour).Round(0)
	oldIdx := put(failover.LockValue{Node: "a", Reason: failover.ReasonReleased})
	newIdx := put(failover.LockValue{Node: "c", Reason: failover.ReasonStuck, Avoid: []failover.Avoid{{Node: "c", Until: until}}})

	// The Machine decides, the real Consul answers: only the acquisition of s is carried out.
	m := failover.NewMachine(c.machineConfig(), nil, nil)
	now := time.Now()
	m.Step(failover.EvLease{Now: now, Session: session, Deadline: now.Add(time.Hour)})
	m.Step(failover.EvMembers{Now: now, Members: []failover.MemberInfo{{Node: "b", Live: true}}})
	m.Step(failover.EvKV{Now: now, Snap: &failover.KVSnapshot{Index: oldIdx, Entries: map[failover.SliceID]failover.KVEntry{s: {Value: failover.LockValue{Node: "a", Reason: failover.ReasonReleased}, ModifyIndex: oldIdx}}}})
	ctx := context.Background()
	var last failover.EvAcquireResult
	acquire := func() (tried bool) {
		rd := m.Ready()
		for _, a := range rd.Acquire {
			if a.Move.Slice == s {
				last = c.acquireTxn(ctx, a)
				m.Step(last)
				tried = true
			}
		}
		m.Advance(rd)
		return tried
	}
	if !acquire() {
		t.Fatal("the acquisition of a free slice was not even tried")
	}
	if last.Granted || last.Err || !last.Stale {
		t.Fatalf("acquisition on a stale snapshot: %+v, want refused by its check-index", last)
	}
	if p, _, _ := cl.KV().Get(key, nil); p == nil || p.Session != "" {
		t.Fatal("took the lock on a stale snapshot")
	}
	if acquire() { // same snapshot: not even tried
		t.Fatal("an acquisition was tried again on the same stale snapshot")
	}
	if p, _, _ := cl.KV().Get(key, nil); p == nil || p.ModifyIndex != newIdx {
		t.Fatal("the key changed: an acquisition was tried again on the same stale snapshot")
	}

	m.Step(failover.EvKV{Now: time.Now(), Snap: &failover.KVSnapshot{Index: newIdx, Entries: map[failover.SliceID]failover.KVEntry{s: {Value: failover.LockValue{Node: "c", Reason: failover.ReasonStuck, Avoid: []failover.Avoid{{Node: "c", Until: until}}}, ModifyIndex: newIdx}}}})
	acquire()
	rd := m.Ready()
	m.Advance(rd)
	if tok := rd.Tokens[s]; !last.Granted || tok <= newIdx {
		t.Fatalf("not taken with a fresh snapshot: %+v, token %d", last, tok)
	}
	if got := m.Changes()[failover.ReasonStuck]; got != 1 {
		t.Errorf("changes counted as stuck = %d, want 1 (reason from the snapshot)", got)
	}
	p, _, err := cl.KV().Get(key, nil)
	if err != nil || p == nil || p.Session != session {
		t.Fatalf("the key is not locked by our session: %+v, %v", p, err)
	}
	if v := parseLockValue(p.Value); v.Node != "b" || len(v.Avoid) != 1 || v.Avoid[0].Node != "c" {
		t.Errorf("lock value %+v: want node b and c's avoid entry carried over", v)
	}
}

// TestRelockConfirmsOurOwnLock: the re-lock of a key our session holds unknown to the Machine
// (failover.Machine.relocks), against a real Consul: granted with the LockIndex unchanged and
// the key's ModifyIndex as the fencing token (a new one when the value changed, the same when
// it did not: Consul writes nothing then), and refused by its check once the key was released.
func TestRelockConfirmsOurOwnLock(t *testing.T) {
	cl, c, session := txnBench(t)
	s := failover.SliceID{Queue: "out", Index: 2}
	key := c.sliceKey(s)
	expired := []failover.Avoid{{Node: "c", Until: time.Now().Add(-time.Hour).Round(0)}}
	body, _ := json.Marshal(failover.LockValue{Node: "b", Avoid: expired})
	if ok, _, err := cl.KV().Acquire(&api.KVPair{Key: key, Value: body, Session: session}, nil); err != nil || !ok {
		t.Fatalf("lock %s: %v %v", key, ok, err)
	}
	p, _, err := cl.KV().Get(key, nil)
	if err != nil || p == nil || p.Session != session {
		t.Fatalf("get %s: %+v %v", key, p, err)
	}

	m := failover.NewMachine(c.machineConfig(), nil, nil)
	now := time.Now()
	m.Step(failover.EvLease{Now: now, Session: session, Deadline: now.Add(time.Hour)})
	m.Step(failover.EvMembers{Now: now, Members: []failover.MemberInfo{{Node: "b", Live: true}}})
	m.Step(failover.EvKV{Now: now, Snap: &failover.KVSnapshot{Index: p.ModifyIndex, Entries: map[failover.SliceID]failover.KVEntry{
		s: {Session: session, Value: failover.LockValue{Node: "b", Avoid: expired}, ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}}}})
	var relock *failover.AcquireReq
	for _, a := range m.Ready().Acquire {
		if a.Move.Slice == s {
			relock = &a
		}
	}
	if relock == nil || !relock.Relock || relock.CheckIndex != p.ModifyIndex {
		t.Fatalf("re-lock of %s: %+v, want one with check-index %d", s, relock, p.ModifyIndex)
	}
	// The expired avoid entry is dropped: the value changes, so does the ModifyIndex.
	res := c.acquireTxn(context.Background(), *relock)
	if !res.Granted || res.Token <= p.ModifyIndex || res.LockIndex != p.LockIndex {
		t.Fatalf("re-lock: %+v; want granted with a new ModifyIndex above %d and LockIndex %d", res, p.ModifyIndex, p.LockIndex)
	}
	// Again with the value unchanged: Consul writes nothing, the token is the key's ModifyIndex.
	again := *relock
	again.CheckIndex, again.Value = res.Token, failover.LockValue{Node: "b"}
	if res2 := c.acquireTxn(context.Background(), again); !res2.Granted || res2.Token != res.Token || res2.LockIndex != p.LockIndex {
		t.Fatalf("re-lock with the same value: %+v; want granted, token %d, LockIndex %d", res2, res.Token, p.LockIndex)
	}
	// Released since the snapshot: the check fails and the key stays free.
	if ok, _, err := cl.KV().Release(&api.KVPair{Key: key, Session: session}, nil); err != nil || !ok {
		t.Fatalf("release: %v %v", ok, err)
	}
	if res3 := c.acquireTxn(context.Background(), again); res3.Granted || !res3.Stale {
		t.Fatalf("re-lock of a released key: %+v; want refused by its check", res3)
	}
	if p, _, err := cl.KV().Get(key, nil); err != nil || p == nil || p.Session != "" {
		t.Fatalf("the released key after a re-lock: %+v %v; want free", p, err)
	}
}

// TestConsulRestartLosingState: Consul restarts without its state (a -dev agent): keys,
// sessions and the registration are gone and its index starts again lower. A blocking query
// from an index Consul no longer reaches answers only when its wait ends (watchWait, 5
// minutes; failover/sim's TestModelMatchesConsul/consul/state-loss shows it), so the watches
// must read afresh after their failed request to see the reset. The node then owns its slices
// again within the outage plus one lease of quarantine plus a few renew intervals, not minutes,
// including slices it acquired at once from the restarted Consul and dropped on the old
// Consul's last snapshot (whose index is above their tokens): their keys stay locked by its
// session, and it re-locks them (failover.Machine.relocks).
func TestConsulRestartLosingState(t *testing.T) {
	for _, tc := range []struct {
		name     string
		watchMin time.Duration
	}{
		{"watch_min_50ms", 50 * time.Millisecond},
		// The default: the node's last KV answer before the outage is likely to miss its latest
		// acquisitions, so grants of the restarted Consul are likely dropped on it and re-locked.
		{"watch_min_default", failover.DefaultWatchMinInterval},
	} {
		t.Run(tc.name, func(t *testing.T) { restartLosingState(t, tc.watchMin) })
	}
}

func restartLosingState(t *testing.T, watchMin time.Duration) {
	srv := consultest.Start(t)
	// A Consul in production has an index in the millions when it loses its state; a fresh test
	// Consul is at a few dozen, which the restarted one passes within a second (its own writes
	// and the node's), so the index might not go backwards at all. Raise it first: the node's
	// locks then carry indexes the restarted Consul is far below when the watch reads afresh.
	cl := srv.Client("")
	for i := 0; i < 300; i++ {
		if _, err := cl.KV().Put(&api.KVPair{Key: "elsewhere/index-raiser", Value: []byte(strconv.Itoa(i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	l := failovertest.NewLedger()
	a := startNode(t, srv, l, "a", func(c *failover.ConsulConfig) { c.WatchMinInterval = watchMin })
	waitSplit(t, 15*time.Second, "a owns everything", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 5*time.Second, "processing stops when the lease lapses", func() error {
		if n := a.a.Count(); n != 0 {
			return fmt.Errorf("%d slices still processed", n)
		}
		return nil
	})
	srv.RestartLosingState()
	back := time.Now()
	waitSplit(t, 30*time.Second, "a owns everything again after the state loss", map[*testNode][]failover.SliceID{a: allTestSlices()}, a)
	t.Logf("slices owned again %s after Consul was back; %d re-locked after a snapshot from before the reset dropped them",
		time.Since(back).Round(time.Millisecond), a.logs.count("slice re-locked"))
	if n := a.logs.count("consul KV index went backwards"); n < 1 {
		t.Error("the reset of Consul's index was not noticed")
	}
	if err := a.stop(t); err != nil {
		t.Errorf("Run after the state loss: %v", err)
	}
	l.Check(t)
}

// waitSteadyLease waits until n holds a valid lease with no Consul outage in progress, so that
// what a test counts from then on (log lines, spans) is the fault's doing, not a late renewal's
// at start-up on a loaded machine.
func waitSteadyLease(t *testing.T, n *testNode, before string) {
	t.Helper()
	consultest.WaitFor(t, 20*time.Second, "a valid lease and no Consul outage in progress before "+before, func() error {
		n.c.mu.Lock()
		inOutage := n.c.outage != nil
		n.c.mu.Unlock()
		if inOutage || !time.Now().Before(n.c.ValidUntil()) {
			return fmt.Errorf("outage in progress %v, lease valid until %s", inOutage, n.c.ValidUntil().Format("15:04:05.000"))
		}
		return nil
	})
}
