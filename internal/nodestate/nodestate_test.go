package nodestate

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A helper process: holds the lock of node "n" in $NODESTATE_DIR until killed.
func init() {
	if dir := os.Getenv("NODESTATE_HOLD_DIR"); dir != "" {
		l, err := Acquire(dir, "n")
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		_ = l
		time.Sleep(time.Minute) // killed by the test
		os.Exit(0)
	}
}

func TestLockIsExclusiveAndDiesWithItsProcess(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NODESTATE_HOLD_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
		t.Fatalf("helper: %q %v", buf, err)
	}
	_, err = Acquire(dir, "n")
	if !errors.Is(err, ErrRunning) || !strings.Contains(err.Error(), "process ") || !strings.Contains(err.Error(), "n.lock") {
		t.Fatalf("second process of node n: %v; want ErrRunning naming the holder's PID and the lock file", err)
	}
	other, err := Acquire(dir, "m")
	if err != nil {
		t.Fatalf("another node on the same host: %v", err)
	}
	other.Release()
	// SIGKILL: no chance to clean up; the kernel drops the lock.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	l, err := Acquire(dir, "n")
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	if _, err := Acquire(dir, "n"); !errors.Is(err, ErrRunning) {
		t.Fatalf("a second Acquire in the same process: %v, want ErrRunning", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	l2, err := Acquire(dir, "n")
	if err != nil {
		t.Fatalf("after Release: %v", err)
	}
	l2.Release()
}

func TestStateRoundTripAndCheck(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if _, err := l.Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no state file yet: %v, want ErrNotExist", err)
	}
	live := time.Date(2030, 1, 2, 3, 4, 5, 6e6, time.UTC)
	if err := l.Save(State{Cluster: "c", Node: "n1", Session: "s-1", LiveSince: live}); err != nil {
		t.Fatal(err)
	}
	st, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	if st.Session != "s-1" || !st.LiveSince.Equal(live) || st.PID != os.Getpid() || st.Version != stateVersion {
		t.Fatalf("loaded %+v", st)
	}
	if err := st.Check("c", "n1"); err != nil {
		t.Fatalf("check of a good state: %v", err)
	}
	for _, c := range []struct {
		st            State
		cluster, node string
		want          string
	}{
		{st, "c", "n2", `state file of node "n1", this is node "n2"`},
		{st, "d", "n1", `state file of cluster "c", this node is in cluster "d"`},
		{State{Version: stateVersion, Cluster: "c", Node: "n1"}, "c", "n1", "left no session"},
		{State{Version: 99, Cluster: "c", Node: "n1", Session: "s"}, "c", "n1", "format 99"},
	} {
		if err := c.st.Check(c.cluster, c.node); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%+v, %s, %s) = %v, want %q", c.st, c.cluster, c.node, err, c.want)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
	if err := l.Forget(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Forget: %v", err)
	}
	if err := l.Forget(); err != nil {
		t.Fatalf("Forget twice: %v", err)
	}
	// A corrupt file is an error, not a panic or an empty state.
	if err := os.WriteFile(l.Path(), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Load(); err == nil {
		t.Fatal("a corrupt state file loaded")
	}
}
