package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/nodestate"
	"github.com/qslice/qslice/internal/testenv"
)

// TestStateDirLockAndLeave: with a state_dir a second agent of the same node refuses to start,
// saying which process holds the node; `leave` (on the control socket) stops the node, after
// which the node may start again.
func TestStateDirLockAndLeave(t *testing.T) {
	state := t.TempDir()
	cfg := standaloneConfig(t, fmt.Sprintf("node: n1\nstate_dir: %s\n", state))
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	bg := testenv.Start(t, "agent", 30*time.Second, a.Run)

	cfg2 := standaloneConfig(t, fmt.Sprintf("node: n1\nstate_dir: %s\n", state))
	if _, err := New(cfg2, Options{}); !errors.Is(err, nodestate.ErrRunning) || !strings.Contains(err.Error(), "n1.lock") {
		t.Fatalf("second agent of node n1: %v, want an error saying another qslice runs for the node", err)
	}
	other := standaloneConfig(t, fmt.Sprintf("node: n2\nstate_dir: %s\n", state))
	b, err := New(other, Options{})
	if err != nil {
		t.Fatalf("another node beside it: %v", err)
	}
	b.lock.Release() // never run
	b.server.Close()

	if code, body := postJSON(t, socketClient(cfg.Control.Socket), "http://qslice/api/leave", nil); code != 200 || !strings.Contains(body, "left") {
		t.Fatalf("leave: %d %s", code, body)
	}
	poll(t, "the agent stops after leave", 10*time.Second, func() bool { done, _ := bg.Exited(); return done })
	if _, err := bg.Exited(); err != nil {
		t.Fatalf("Run after leave: %v", err)
	}
	again, err := New(cfg2, Options{})
	if err != nil {
		t.Fatalf("the node after it stopped: %v", err)
	}
	again.lock.Release()
	again.server.Close()
}

// TestRunStoreRoundTrip: what the coordinator records is what the next process adopts, the
// slices being handed off included; a state file of another node is not adopted.
func TestRunStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	l, err := nodestate.Acquire(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	cfg := standaloneConfig(t, "node: n1\ncluster: c1\n")
	store := runStore{l: l, cluster: "c1", node: "n1"}
	want := failover.PreviousRun{Session: "s-1", LiveSince: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		Releasing: []failover.SliceID{{Queue: "in", Index: 3}, {Queue: "out-2", Index: 0}}}
	if err := store.SaveRun(want); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: cfg, lock: l, log: slog.New(slog.DiscardHandler)}
	got, why := a.previousRun(t.Context())
	if got == nil || got.Session != want.Session || !got.LiveSince.Equal(want.LiveSince) || !slices.Equal(got.Releasing, want.Releasing) {
		t.Fatalf("previous run %+v (%s), want %+v", got, why, want)
	}
	other := runStore{l: l, cluster: "c1", node: "n9"}
	if err := other.SaveRun(want); err != nil {
		t.Fatal(err)
	}
	if got, why := a.previousRun(t.Context()); got != nil || !strings.Contains(why, `node "n9", this is node "n1"`) {
		t.Fatalf("a state file of another node: %+v, %q", got, why)
	}
	if err := store.ForgetRun(); err != nil {
		t.Fatal(err)
	}
	if got, why := a.previousRun(t.Context()); got != nil || !strings.Contains(why, "no state file") {
		t.Fatalf("after ForgetRun: %+v, %q", got, why)
	}
}
