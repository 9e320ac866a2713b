package consul

import (
	"fmt"
	"sync"
	"testing"
	"time"

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
