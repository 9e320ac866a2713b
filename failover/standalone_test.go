package failover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
)

func TestStandalone(t *testing.T) {
	l := newLedger()
	a := newFakeAssignee("standalone", l)
	defer a.close()
	s := NewStandalone(testQueues, a)
	var _ Coordinator = s
	if d := time.Until(s.ValidUntil()); d < 50*365*24*time.Hour {
		t.Fatalf("standalone lease ends in %s", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	consultest.WaitFor(t, 5*time.Second, "every slice assigned", func() error {
		if n := a.count(); n != totalTestSlices {
			return fmt.Errorf("%d slices assigned", n)
		}
		return nil
	})
	st := s.Status()
	if st.Mode != "standalone" || len(st.Owned) != totalTestSlices || !st.LeaseValid || len(st.Slices) != totalTestSlices {
		t.Errorf("status %+v", st)
	}
	if err := s.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := a.count(); n != 0 {
		t.Fatalf("after Drain %d slices assigned", n)
	}
	if st := s.Status(); !st.Draining || len(st.Owned) != 0 || st.OwnershipChanges[ReasonDrain] != totalTestSlices {
		t.Errorf("status after drain %+v", st)
	}
	if err := s.Undrain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := a.count(); n != totalTestSlices {
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
	if n := a.count(); n != 0 {
		t.Fatalf("after stop %d slices assigned", n)
	}
	if err := s.Run(context.Background()); err != ErrAlreadyRunning {
		t.Errorf("second Run: %v", err)
	}
	a.check(t)
	l.check(t)
}

func TestStandaloneRejectsBadQueues(t *testing.T) {
	s := NewStandalone([]QueueSpec{{Name: "out", Slices: 0}}, newFakeAssignee("x", newLedger()))
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("Run accepted a queue with 0 slices")
	}
}
