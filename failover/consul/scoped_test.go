package consul

import (
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
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
