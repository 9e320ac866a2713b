package failover_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/consultest"
)

// The queues of the standalone tests: 12 slices.
var standaloneQueues = []failover.QueueSpec{{Name: "out", Slices: 8}, {Name: "in", Slices: 4}}

const standaloneSlices = 12

func TestStandalone(t *testing.T) {
	l := failovertest.NewLedger()
	a := failovertest.NewAssignee("standalone", l)
	defer a.Close()
	s := failover.NewStandalone(standaloneQueues, a, nil)
	var _ failover.Coordinator = s
	if d := time.Until(s.ValidUntil()); d < 50*365*24*time.Hour {
		t.Fatalf("standalone lease ends in %s", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	consultest.WaitFor(t, 5*time.Second, "every slice assigned", func() error {
		if n := a.Count(); n != standaloneSlices {
			return fmt.Errorf("%d slices assigned", n)
		}
		return nil
	})
	st := s.Status()
	if st.Mode != "standalone" || len(st.Owned) != standaloneSlices || !st.LeaseValid || len(st.Slices) != standaloneSlices {
		t.Errorf("status %+v", st)
	}
	if err := s.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := a.Count(); n != 0 {
		t.Fatalf("after Drain %d slices assigned", n)
	}
	if st := s.Status(); !st.Draining || len(st.Owned) != 0 || st.OwnershipChanges[failover.ReasonDrain] != standaloneSlices {
		t.Errorf("status after drain %+v", st)
	}
	if err := s.Undrain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := a.Count(); n != standaloneSlices {
		t.Fatalf("after Undrain %d slices assigned", n)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := a.Count(); n != 0 {
		t.Fatalf("after stop %d slices assigned", n)
	}
	if err := s.Run(context.Background()); err != failover.ErrAlreadyRunning {
		t.Errorf("second Run: %v", err)
	}
	a.Check(t)
	l.Check(t)
}

func TestStandaloneRejectsBadQueues(t *testing.T) {
	s := failover.NewStandalone([]failover.QueueSpec{{Name: "out", Slices: 0}}, failovertest.NewAssignee("x", failovertest.NewLedger()), nil)
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("Run accepted a queue with 0 slices")
	}
}
