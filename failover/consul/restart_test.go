package consul

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/consultest"
)

// memStore is a failover.RunStore in memory (the agent's is a state file, internal/nodestate).
type memStore struct {
	mu  sync.Mutex
	run *failover.PreviousRun
}

func (s *memStore) SaveRun(r failover.PreviousRun) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.run = &r
	return nil
}

func (s *memStore) ForgetRun() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.run = nil
	return nil
}

func (s *memStore) load() *failover.PreviousRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == nil {
		return nil
	}
	r := *s.run
	return &r
}

func tokensOf(st failover.Status) map[failover.SliceID]uint64 {
	out := map[failover.SliceID]uint64{}
	for _, o := range st.Owned {
		out[o.Slice] = o.FencingToken
	}
	return out
}

// startRestartable starts node a with a store that records its runs for a restart in place,
// and waits until it processes every slice.
func startRestartable(t *testing.T, srv *consultest.Server, l *failovertest.Ledger) (*testNode, *memStore) {
	t.Helper()
	store := &memStore{}
	return startAdopting(t, srv, l, "a", nil, store, "a owns everything"), store
}

// startAdopting starts a process of node a, recorded in the ledger as ledgerName, with prev as
// the previous run it may adopt and store recording its runs, and waits until it processes
// every slice (what names the wait).
func startAdopting(t *testing.T, srv *consultest.Server, l *failovertest.Ledger, ledgerName string, prev *failover.PreviousRun, store *memStore, what string) *testNode {
	t.Helper()
	n := startNodeAs(t, srv, l, "a", ledgerName, nil, func(c *Coordinator) { c.SetRestart(prev, store) })
	waitSplit(t, 15*time.Second, what, map[*testNode][]failover.SliceID{n: allTestSlices()}, n)
	return n
}

// TestConsulRestartInPlace: a node stopped for a restart (Run's context ends, with a store)
// keeps its session and locks; the next process adopts them: same session, same fencing
// tokens, no ownership change anywhere, every slice processed again without waiting for the
// lock-delay, and never by both processes at once (the ledger). A Leave then hands off and
// forgets the session.
func TestConsulRestartInPlace(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	a, store := startRestartable(t, srv, l)
	session, tokens := a.c.sessionID(), tokensOf(a.c.Status())
	consultest.WaitFor(t, 5*time.Second, "the session recorded", func() error {
		if r := store.load(); r == nil || r.Session != session {
			return fmt.Errorf("recorded %+v, want session %s", r, session)
		}
		return nil
	})
	if err := a.stop(t); err != nil {
		t.Fatalf("stop for a restart: %v", err)
	}
	if a.a.Count() != 0 {
		t.Fatal("the stopped process still has slices")
	}
	if se, _, err := cl.Session().Info(session, nil); err != nil || se == nil {
		t.Fatalf("session after a stop for a restart: %v %v, want it kept", se, err)
	}
	kept := 0
	pairs, _, err := cl.KV().List("qslice/test/slices/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		if p.Session == session {
			kept++
		}
	}
	if kept != totalTestSlices {
		t.Fatalf("%d locks held by the session after the stop, want all %d", kept, totalTestSlices)
	}

	prev := store.load()
	start := time.Now()
	a2 := startAdopting(t, srv, l, "a-restarted", prev, store, "the restarted process resumes everything")
	resumed := time.Since(start)
	t.Logf("restart in place: every slice processed again %s after the new process started", resumed.Round(time.Millisecond))
	if got := a2.c.sessionID(); got != session {
		t.Errorf("session after the restart %s, want the adopted %s", got, session)
	}
	for s, tok := range tokensOf(a2.c.Status()) {
		if tok != tokens[s] {
			t.Errorf("%s: fencing token %d after the restart, want the same %d (no change of owner)", s, tok, tokens[s])
		}
	}
	if ch := a2.c.Status().OwnershipChanges; len(ch) != 0 {
		t.Errorf("ownership changes after a restart in place: %v, want none", ch)
	}
	if a2.logs.count("slice adopted from the previous process of this node") != totalTestSlices {
		t.Errorf("adoption log lines: %d, want %d", a2.logs.count("slice adopted from the previous process of this node"), totalTestSlices)
	}
	if a2.logs.count("destroying a session") != 0 {
		t.Error("the restarted process destroyed a session")
	}

	// Leave: everything handed off (nobody to take it here), session destroyed, nothing recorded.
	if err := a2.c.Leave(t.Context()); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if se, _, err := cl.Session().Info(session, nil); err != nil || se != nil {
		t.Errorf("session after Leave: %v %v, want it destroyed", se, err)
	}
	if r := store.load(); r != nil {
		t.Errorf("recorded after Leave: %+v, want nothing", r)
	}
	if ch := a2.c.Status().OwnershipChanges; ch[failover.ReasonReleased] != totalTestSlices {
		t.Errorf("changes after Leave %v, want %d released", ch, totalTestSlices)
	}
	l.Check(t)
}

// TestConsulRestartInPlaceRefusedWhenSessionGone: the recorded session no longer exists (the
// node was down longer than the TTL, or it was destroyed): the new process says why, starts
// with a new session and acquires its slices with larger fencing tokens.
func TestConsulRestartInPlaceRefusedWhenSessionGone(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	a, store := startRestartable(t, srv, l)
	session, tokens := a.c.sessionID(), tokensOf(a.c.Status())
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Session().Destroy(session, nil); err != nil {
		t.Fatal(err)
	}
	prev := store.load()
	if prev == nil || prev.Session != session {
		t.Fatalf("recorded %+v, want %s", prev, session)
	}
	a2 := startAdopting(t, srv, l, "a-restarted", prev, store, "the restarted process owns everything")
	if got := a2.c.sessionID(); got == session || got == "" {
		t.Errorf("session after the refused adoption %q, want a new one", got)
	}
	if a2.logs.count("restart in place: starting with a new session") != 1 || a2.logs.count("the previous session is gone") != 1 {
		t.Errorf("no log line saying why the session was not adopted:\n%s", a2.logs.String())
	}
	for s, tok := range tokensOf(a2.c.Status()) {
		if tok <= tokens[s] {
			t.Errorf("%s: fencing token %d after a new acquisition, want more than %d", s, tok, tokens[s])
		}
	}
	if r := store.load(); r == nil || r.Session != a2.c.sessionID() {
		t.Errorf("recorded %+v, want the new session", r)
	}
	l.Check(t)
}

// TestConsulRestartInPlaceReleasesWhatWasBeingHandedOff: a slice the previous process was
// handing off (recorded as releasing: its release may still land) is released again by the
// new process, never processed under the old lock; the rest is adopted as usual.
func TestConsulRestartInPlaceReleasesWhatWasBeingHandedOff(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	a, store := startRestartable(t, srv, l)
	tokens := tokensOf(a.c.Status())
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	prev := store.load()
	handing := allTestSlices()[0]
	prev.Releasing = []failover.SliceID{handing} // as if it died with this release on its way
	a2 := startAdopting(t, srv, l, "a-restarted", prev, store, "the restarted process owns everything")
	for s, tok := range tokensOf(a2.c.Status()) {
		switch {
		case s == handing && tok <= tokens[s]:
			t.Errorf("%s: token %d, want a new acquisition's, larger than %d", s, tok, tokens[s])
		case s != handing && tok != tokens[s]:
			t.Errorf("%s: token %d, want the adopted %d", s, tok, tokens[s])
		}
	}
	if ch := a2.c.Status().OwnershipChanges; ch[failover.ReasonReleased] != 1 || ch[failover.ReasonAcquired] != 1 || len(ch) != 2 {
		t.Errorf("changes %v: want %s released once and acquired again, nothing else", ch, handing)
	}
	if n := a2.logs.count("slice adopted to be released again"); n != 1 {
		t.Errorf("%d log lines for the slice being handed off, want 1", n)
	}
	consultest.WaitFor(t, 5*time.Second, "nothing recorded as releasing", func() error {
		if r := store.load(); r == nil || len(r.Releasing) != 0 {
			return fmt.Errorf("recorded %+v", r)
		}
		return nil
	})
	l.Check(t)
}

// TestConsulRestartInPlaceRefusedWhenSessionOnAnotherAgent: the recorded session exists, is
// named for this node and is bound to a check with this node's alive check ID, but on another
// Consul node: it is bound to that agent's serfHealth and check, which this process does not
// pass. First the state directory comes from another machine (this agent never held node a's
// checks); then node a ran here and stopped for a restart, and the record names a session on the
// other machine's agent (the comparison of the node names). Each time the new process says why,
// starts with a new session, destroys the earlier session of this node that holds locks, and
// acquires the slices with larger fencing tokens, never under the foreign session.
func TestConsulRestartInPlaceRefusedWhenSessionOnAnotherAgent(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	// The other machine: a node whose agent holds node a's alive check.
	const elsewhere = "elsewhere"
	passing := func(id string) *api.HealthCheck {
		return &api.HealthCheck{Node: elsewhere, CheckID: id, Name: id, Status: api.HealthPassing}
	}
	if _, err := cl.Catalog().Register(&api.CatalogRegistration{
		Node: elsewhere, Address: "127.0.0.2",
		Checks: api.HealthChecks{passing("serfHealth"), passing("qslice-test-a:alive")},
	}, nil); err != nil {
		t.Fatal(err)
	}
	foreignSession := func() string {
		t.Helper()
		id, _, err := cl.Session().Create(&api.SessionEntry{
			Name: "qslice/test/a", Node: elsewhere, LockDelay: time.Second, Behavior: api.SessionBehaviorRelease,
			NodeChecks: []string{"serfHealth"}, ServiceChecks: []api.ServiceCheck{{ID: "qslice-test-a:alive"}},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	// restart starts a process of node a that finds foreign recorded, checks it says why (want,
	// as the text log quotes it) and did not adopt, and that every slice was acquired anew; it returns the process.
	restart := func(ledgerName, foreign, want string, tokens map[failover.SliceID]uint64) *testNode {
		t.Helper()
		store := &memStore{}
		prev := &failover.PreviousRun{Session: foreign, LiveSince: time.Now().Add(-time.Minute)}
		a := startAdopting(t, srv, l, ledgerName, prev, store, ledgerName+" owns everything")
		if got := a.c.sessionID(); got == foreign || got == "" {
			t.Errorf("%s: session %q, want a new one, not the recorded %s", ledgerName, got, foreign)
		}
		if a.logs.count("restart in place: starting with a new session") != 1 || a.logs.count(want) != 1 {
			t.Errorf("%s: no log line saying %q:\n%s", ledgerName, want, a.logs.String())
		}
		if a.logs.count("slice adopted from the previous process of this node") != 0 {
			t.Errorf("%s: slices adopted under a session bound to another agent's checks", ledgerName)
		}
		for s, tok := range tokensOf(a.c.Status()) {
			if tok <= tokens[s] {
				t.Errorf("%s: %s: fencing token %d, want a new acquisition's, larger than %d", ledgerName, s, tok, tokens[s])
			}
		}
		if r := store.load(); r == nil || r.Session != a.c.sessionID() {
			t.Errorf("%s: recorded %+v, want the new session", ledgerName, r)
		}
		return a
	}

	// A state directory copied from the other machine, whose run held every slice.
	copied := foreignSession()
	tokens := map[failover.SliceID]uint64{}
	for _, s := range allTestSlices() {
		key := fmt.Sprintf("qslice/test/slices/%s/%d", s.Queue, s.Index)
		ok, _, err := cl.KV().Acquire(&api.KVPair{Key: key, Value: []byte(`{"node":"a"}`), Session: copied}, nil)
		if err != nil || !ok {
			t.Fatalf("lock %s with the copied run's session: %v %v", key, ok, err)
		}
		p, _, err := cl.KV().Get(key, nil)
		if err != nil || p == nil {
			t.Fatalf("read %s: %v %v", key, p, err)
		}
		tokens[s] = p.ModifyIndex
	}
	a := restart("a", copied, "the local agent does not hold check qslice-test-a:alive", tokens)
	if se, _, err := cl.Session().Info(copied, nil); err != nil || se != nil {
		t.Errorf("the copied run's session after the start: %v %v, want it destroyed (it held locks naming this node)", se, err)
	}

	// Node a's checks are on this agent now; the record names a session on the other one.
	tokens = tokensOf(a.c.Status())
	if err := a.stop(t); err != nil {
		t.Fatalf("stop for a restart: %v", err)
	}
	restart("a-restarted", foreignSession(), fmt.Sprintf(`is on Consul node \"%s\", not on the local agent's \"%s\"`, elsewhere, srv.NodeName), tokens)
	l.Check(t)
}
