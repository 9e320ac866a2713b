package agent

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

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
