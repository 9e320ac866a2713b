//go:build linux

package proctree

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as the "starter" of TestKillAfterStarterKilled: a process that starts a tree,
// records it and is then killed with SIGKILL, as the OOM killer would kill qslice.
func TestMain(m *testing.M) {
	if path := os.Getenv("PROCTREE_TEST_STARTER"); path != "" {
		os.Exit(starter(path))
	}
	os.Exit(m.Run())
}

// starter starts "sh -c 'sleep 300 & echo $!; wait'" as a tree recorded at path, prints the
// sleeper's PID and then waits to be killed.
func starter(path string) int {
	rec, err := New()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	f, err := Create(path, rec)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	cmd := exec.Command("sh", "-c", "sleep 300 & echo $!; wait")
	rec.Prepare(cmd)
	cmd.Stdout = os.Stdout
	if err := Start(cmd, &rec); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if err := f.Started(rec); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	time.Sleep(time.Hour) // (select{} would be a deadlock to the runtime: no other goroutine)
	return 0
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && st.state != 'Z' && st.state != 'X'
}

// waitGone polls until pid no longer runs, failing after 10 s.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startTree starts script under sh as a recorded tree and returns the PIDs it prints, one per
// line, count of them.
func startTree(t *testing.T, script string, count int) (*exec.Cmd, Record, []int) {
	t.Helper()
	rec, err := New()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", script)
	rec.Prepare(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := Start(cmd, &rec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = killGroup(rec.PGID); _ = cmd.Wait() })
	var pids []int
	sc := bufio.NewScanner(out)
	for len(pids) < count && sc.Scan() {
		pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil {
			t.Fatalf("tree printed %q", sc.Text())
		}
		pids = append(pids, pid)
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	}
	if len(pids) < count {
		t.Fatalf("tree printed %d PIDs, want %d", len(pids), count)
	}
	return cmd, rec, pids
}

func TestStartRecordsGroupAndStartTime(t *testing.T) {
	_, rec, pids := startTree(t, "sleep 300 & echo $!; wait", 1)
	if rec.PGID == 0 || rec.StartTicks == 0 || !rec.Local() {
		t.Fatalf("record %+v: want a group, a start time and Local", rec)
	}
	st, err := readStat(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	if st.pgrp != rec.PGID {
		t.Errorf("child in group %d, want %d", st.pgrp, rec.PGID)
	}
	got, err := Survivors(rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 { // sh and sleep
		t.Errorf("survivors %v, want the shell %d and the sleeper %d", got, rec.PGID, pids[0])
	}
}

// A child that leaves the group (setsid) is still found through the marker in its environment.
func TestKillFindsDetachedChildByMarker(t *testing.T) {
	_, rec, pids := startTree(t, "setsid sleep 300 & echo $!; sleep 300 & echo $!; wait", 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := readStat(pids[0])
		if err == nil && st.pgrp != rec.PGID {
			break // setsid ran
		}
		if time.Now().After(deadline) {
			t.Fatal("setsid child never left the group")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := Kill(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("killed %d, want 3 (sh, the detached sleeper, the grouped one)", n)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d survived Kill", pid)
		}
	}
}

// A record whose group number now names another process (PID reuse) kills nothing: the
// leader's start time differs and the process carries no marker.
func TestKillSparesPIDReuse(t *testing.T) {
	stranger := exec.Command("sleep", "300")
	stranger.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stranger.Process.Kill(); _ = stranger.Wait() }()
	st, err := readStat(stranger.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := New()
	if err != nil {
		t.Fatal(err)
	}
	rec.PGID, rec.StartTicks = stranger.Process.Pid, st.start-1 // the recorded leader started earlier
	n, err := Kill(context.Background(), rec)
	if err != nil || n != 0 {
		t.Fatalf("Kill = %d, %v; want 0, nil", n, err)
	}
	if !alive(stranger.Process.Pid) {
		t.Fatal("a process that reused the recorded group number was killed")
	}
	// The same record with the right start time is the group: it is killed.
	rec.StartTicks = st.start
	if n, err := Kill(context.Background(), rec); err != nil || n != 1 {
		t.Fatalf("Kill = %d, %v; want 1, nil", n, err)
	}
}

func TestKillRefusesForeignRecord(t *testing.T) {
	_, rec, pids := startTree(t, "sleep 300 & echo $!; wait", 1)
	for _, r := range []Record{
		{Host: rec.Host + "-other", BootID: rec.BootID, Marker: rec.Marker, PGID: rec.PGID, StartTicks: rec.StartTicks},
		{Host: rec.Host, BootID: "an-earlier-boot", Marker: rec.Marker, PGID: rec.PGID, StartTicks: rec.StartTicks},
	} {
		if _, err := Kill(context.Background(), r); !errors.Is(err, ErrForeign) {
			t.Errorf("Kill(%+v) = %v, want ErrForeign", r, err)
		}
	}
	if !alive(pids[0]) || !alive(rec.PGID) {
		t.Fatal("a foreign record's Kill killed local processes")
	}
}

// Wait kills what the leader left in its group before reaping it; after a failure also what
// left the group, through the marker.
func TestWaitAfterFailureKillsDetached(t *testing.T) {
	cmd, rec, pids := startTree(t, "setsid sleep 300 & echo $!; sleep 0.1; exit 3", 1)
	start := time.Now()
	exitErr, survivors := Wait(cmd, &rec)
	if exitErr == nil || survivors != nil {
		t.Fatalf("Wait = %v, %v; want exit status 3, no survivors", exitErr, survivors)
	}
	if alive(pids[0]) {
		t.Fatalf("detached process %d runs after Wait returned", pids[0])
	}
	// The detached child held the stdout pipe: killed before the reaping, it does not hold
	// Wait up until its sleep 300 ends (cmd has no WaitDelay). The bound is far from both, for
	// a loaded machine.
	if d := time.Since(start); d > time.Minute {
		t.Errorf("Wait took %s", d)
	}
}

// Wait kills what the leader left in its group before reaping it.
func TestWaitKillsGroupLeftovers(t *testing.T) {
	cmd, _, pids := startTree(t, "sleep 300 & echo $!; exit 0", 1)
	if exitErr, survivors := Wait(cmd, nil); exitErr != nil || survivors != nil {
		t.Fatal(exitErr, survivors)
	}
	if alive(pids[0]) {
		t.Fatalf("process %d of the group runs after Wait returned", pids[0])
	}
}

// The promise itself: the starter dies by SIGKILL, its tree's grandchild survives it (Pdeathsig
// reaches only the leader), and Kill with the record read back from the file, or KillOrphans,
// finds and kills it.
func TestKillAfterStarterKilled(t *testing.T) {
	for _, how := range []string{"record", "orphans"} {
		t.Run(how, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.procs.json")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "PROCTREE_TEST_STARTER="+path)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			if !sc.Scan() {
				_ = cmd.Process.Kill()
				t.Fatalf("starter printed nothing: %v", cmd.Wait())
			}
			sleeper, err := strconv.Atoi(sc.Text())
			if err != nil {
				_ = cmd.Process.Kill()
				t.Fatalf("starter printed %q", sc.Text())
			}
			t.Cleanup(func() { _ = syscall.Kill(sleeper, syscall.SIGKILL) })
			// The shell may print before the starter appended the group: wait for it.
			var rec Record
			deadline := time.Now().Add(10 * time.Second)
			for rec.PGID == 0 {
				if time.Now().After(deadline) {
					t.Fatal("starter never recorded the group")
				}
				rec, _ = Read(path)
				time.Sleep(10 * time.Millisecond)
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			waitGone(t, rec.PGID) // Pdeathsig
			if !alive(sleeper) {
				t.Fatal("the grandchild died with the starter: nothing left to prove")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var n int
			if how == "record" {
				n, err = Kill(ctx, rec)
			} else {
				n, err = KillOrphans(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			if n < 1 || alive(sleeper) {
				t.Fatalf("killed %d; grandchild %d alive: %v", n, sleeper, alive(sleeper))
			}
		})
	}
}

// KillOrphans leaves the trees of a live starter alone.
func TestKillOrphansSparesLiveStarter(t *testing.T) {
	_, _, pids := startTree(t, "sleep 300 & echo $!; wait", 1)
	if _, err := KillOrphans(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !alive(pids[0]) {
		t.Fatal("KillOrphans killed a tree of this live process")
	}
}

func TestReadTakesLastCompleteLine(t *testing.T) {
	dir := t.TempDir()
	rec := Record{Host: "h", BootID: "b", Marker: "1.2.0011223344556677", PGID: 42, StartTicks: 7}
	path := filepath.Join(dir, "x")
	f, err := Create(path, rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	want := rec
	want.PGID, want.StartTicks = 0, 0
	if err != nil || got != want {
		t.Fatalf("after Create: %+v, %v; want %+v", got, err, want)
	}
	// A starter killed in the middle of the second write leaves half a line: the first counts.
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(path, append(b, `{"host":"h","boot_id":"b","mar`...), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(path); err != nil || got != want {
		t.Fatalf("after a torn write: %+v, %v; want %+v", got, err, want)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("empty file: %v, want ErrNoRecord", err)
	}
}
