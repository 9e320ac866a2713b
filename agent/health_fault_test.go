package agent

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/runner"
)

// A runner's disk fault makes the queue's slices warning at once, critical after stall_after,
// and passing-or-as-before once it clears; another queue is not affected.
func TestDiskFaultWarnsThenCritical(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	h := newHealthTracker(config.Health{StallAfter: 5 * time.Minute}, clk)
	id := failover.SliceID{Queue: "in", Index: 1}
	if _, ok := h.fault("in"); ok {
		t.Fatal("fault before any")
	}
	h.Fault("in", runner.FaultClaim, fmt.Errorf("claim: %w", syscall.EACCES))
	got, ok := h.fault("in")
	if !ok || got.Status != failover.StatusWarning || !strings.Contains(got.Output, "claim") || !strings.Contains(got.Output, "permission denied") {
		t.Fatalf("at once: %+v", got)
	}
	if got := h.slice(id); got.Status != failover.StatusWarning {
		t.Fatalf("slice health: %+v", got)
	}
	clk.Advance(6 * time.Minute)
	h.Fault("in", runner.FaultClaim, fmt.Errorf("claim: %w", syscall.EACCES)) // repeats keep the start
	if got, _ := h.fault("in"); got.Status != failover.StatusCritical {
		t.Fatalf("after stall_after: %+v", got)
	}
	if _, ok := h.fault("out"); ok {
		t.Fatal("another queue affected")
	}
	h.Fault("in", runner.FaultClaim, nil)
	if got, ok := h.fault("in"); ok {
		t.Fatalf("after clearing: %+v", got)
	}
}
