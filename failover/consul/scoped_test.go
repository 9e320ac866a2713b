package consul

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/consultest"
)

// A node on the scoped layout beside a qslice from before member keys (a rolling upgrade): it
// watches the whole prefix while that peer is there, so the two share the slices, and goes
// back to single keys once the peer runs the new version.
func TestScopedLayoutBesideAnOlderPeer(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	scoped := func(c *failover.ConsulConfig) {
		c.WatchLayout, c.FullReadInterval = failover.LayoutScoped, 3*time.Second
	}
	old := startNodeAs(t, srv, l, "b", "b-old", func(c *failover.ConsulConfig) { c.WatchLayout = failover.LayoutPrefix },
		func(c *Coordinator) { c.noMemberKey = true })
	a := startNode(t, srv, l, "a", scoped)
	consultest.WaitFor(t, 20*time.Second, "a watching the whole prefix because of the older b", func() error {
		if a.logs.count("a member has no member key") == 0 {
			return errString("not yet")
		}
		return nil
	})
	waitSplit(t, 25*time.Second, "a (scoped) and an older b share the slices", rendezvousSplit(a, old), a, old)
	waitSettled(t, a)
	if err := old.stop(t); err != nil {
		t.Fatalf("stop the older b: %v", err)
	}
	b := startNodeAs(t, srv, l, "b", "b-new", scoped)
	consultest.WaitFor(t, 20*time.Second, "a back on single keys", func() error {
		if a.logs.count("every member has a member key; watching single keys again") == 0 {
			return errString("not yet")
		}
		return nil
	})
	// b is back after a's hold-down only: its slices return to it after its own hold-down.
	waitSplit(t, 25*time.Second, "a and the upgraded b share the slices", rendezvousSplit(a, b), a, b)
}

type errString string

func (e errString) Error() string { return string(e) }

// A node's first write of its member key with a new session reaches its view (its own key's
// watch, a full read) before the keeper has Consul's answer. The node must not see itself among
// the members before a full read sent one watch interval after the write: deciding in a round
// in between, alone in its view, it took every free slice and handed most of them back (a
// start-up of TestConsulDrainAndUndrain on the scoped layout: six spurious hand-offs). The steps
// are the keeper's and the watches', in the order that failed, on a fake clock.
func TestScopedNodeSeesItselfOnlyAfterItsPeers(t *testing.T) {
	srv := consultest.Start(t)
	cfg := testConfig(srv, "a")
	cfg.WatchLayout, cfg.WatchMinInterval = failover.LayoutScoped, time.Second
	clk := clock.NewFake(time.Now())
	c, err := New(cfg, failovertest.NewAssignee("a", failovertest.NewLedger()), nil, nil, clk)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := newScoped(c, ctx)
	c.sc = s
	defer func() { cancel(); s.wg.Wait() }()

	cl := srv.Client(srv.ManagementToken)
	holdMemberKey := func(node string) string {
		t.Helper()
		id, _, err := cl.Session().Create(&api.SessionEntry{Name: node, TTL: "60s", Behavior: api.SessionBehaviorRelease}, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(failover.MemberValue{LiveSince: clk.Now().UnixMilli()})
		if ok, _, err := cl.KV().Acquire(&api.KVPair{Key: c.memberKey(node), Value: body, Session: id}, nil); err != nil || !ok {
			t.Fatalf("member key of %s: %v %v", node, ok, err)
		}
		return id
	}
	fullRead := func() {
		t.Helper()
		if _, _, err := s.fullRead(ctx); err != nil {
			t.Fatal(err)
		}
	}
	members := func(step string, want ...string) {
		t.Helper()
		var got []string
		for _, ev := range s.take(clk.Now()) {
			if m, ok := ev.(failover.EvMembers); ok {
				got = got[:0]
				for _, mi := range m.Members {
					got = append(got, mi.Node)
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Fatalf("%s: the Machine is told the members %v, want %v", step, got, want)
				}
				return
			}
		}
		t.Fatalf("%s: no membership for the Machine, want %v", step, want)
	}

	holdMemberKey("b")
	fullRead()
	members("b's key read", "b")
	s.freshWrite() // the keeper sends a's first write with its new session...
	session := holdMemberKey("a")
	fullRead() // ...which a read shows before the keeper has its answer
	members("a's write applied, its answer not back", "b")
	c.memberHeld.Store(&memberWrite{session: session, fresh: true})
	s.mu.Lock()
	s.dirty = true
	s.mu.Unlock()
	members("a's write answered", "b")
	fullRead()
	members("a full read sent less than a watch interval after the write", "b")
	clk.Advance(cfg.WatchMinInterval)
	fullRead()
	members("a full read sent a watch interval after the write", "a", "b")
}
