package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/runner/lockfile"
)

// locksTestDir holds list1.lock (held by web2 for another hour, with one waiter from web3) and
// list2.lock (Mailman 2.1 naming, expired 40 s ago: beyond the 10 s slop), expiries pinned
// relative to the returned "now".
func locksTestDir(t *testing.T) (string, time.Time) {
	dir := t.TempDir()
	now := time.Now()
	for _, l := range []struct {
		name    string
		opts    lockfile.Options
		expires time.Time
	}{
		{"list1.lock", lockfile.Options{Host: "web2.example.com"}, now.Add(time.Hour)},
		{"list2.lock", lockfile.Options{Host: "mm21", Naming: lockfile.Mailman21}, now.Add(-40 * time.Second)},
	} {
		lk, err := lockfile.New(filepath.Join(dir, l.name), l.opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := lk.Lock(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(filepath.Join(dir, l.name), l.expires, l.expires); err != nil {
			t.Fatal(err)
		}
	}
	waiter := filepath.Join(dir, "list1.lock|web3.example.com|4242|1")
	os.WriteFile(waiter, []byte(waiter), 0o644)
	os.Chtimes(waiter, now.Add(15*time.Second), now.Add(15*time.Second))
	return dir, now
}

func TestLocksJSON(t *testing.T) {
	dir, now := locksTestDir(t)
	var out bytes.Buffer
	before := time.Now()
	if err := runLocks(context.Background(), &out, []string{dir}, locksOptions{json: true, slop: lockfile.DefaultSlop, clock: clock.NewFake(now)}); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(got) != 2 {
		t.Fatalf("%d locks:\n%s", len(got), out.String())
	}
	l1, l2 := got[0], got[1]
	if l1["path"] != filepath.Join(dir, "list1.lock") || l1["holder_host"] != "web2.example.com" ||
		l1["holder_pid"] != float64(os.Getpid()) || l1["expires_in_seconds"] != 3600.0 || l1["expired"] != false || l1["waiters"] != 1.0 {
		t.Errorf("list1.lock = %v", l1)
	}
	if l2["holder_host"] != "mm21" || l2["expires_in_seconds"] != -40.0 || l2["expired"] != true || l2["waiters"] != 0.0 || l2["naming"] != "mailman2.1" {
		t.Errorf("list2.lock = %v", l2)
	}
	// Held since the lock was taken in locksTestDir: between 0 and the time this test has run.
	for _, l := range got {
		if h := l["held_seconds"].(float64); h < 0 || h > time.Since(before).Seconds()+5 {
			t.Errorf("%s: held_seconds = %v", l["path"], h)
		}
	}
	// With no slop the Mailman lock is just as expired; with a 1 minute slop it is not yet.
	out.Reset()
	runLocks(context.Background(), &out, []string{dir}, locksOptions{json: true, slop: time.Minute, clock: clock.NewFake(now)})
	json.Unmarshal(out.Bytes(), &got)
	if got[1]["expired"] != false {
		t.Errorf("with --slop 1m: %v", got[1])
	}
}

func TestLocksTableAndErrors(t *testing.T) {
	dir, now := locksTestDir(t)
	cmd := newLocksCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	missing := filepath.Join(t.TempDir(), "locks")
	cmd.SetArgs([]string{dir, missing})
	err := cmd.ExecuteContext(context.Background())
	// The good directory is still reported; the missing one is an error naming it and the remedy.
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "check the path") {
		t.Errorf("error = %v", err)
	}
	for _, want := range []string{dir + ": 2 held, 1 expired, 1 waiting, 0 orphaned claims",
		"LOCK", "list1.lock", "web2.example.com:", "held", "list2.lock", "mm21:", "EXPIRED"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	empty := t.TempDir()
	out.Reset()
	if err := runLocks(context.Background(), &out, []string{empty}, locksOptions{clock: clock.NewFake(now)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "0 held") {
		t.Errorf("empty dir:\n%s", out.String())
	}
	out.Reset()
	if err := runLocks(context.Background(), &out, []string{empty}, locksOptions{json: true, clock: clock.NewFake(now)}); err != nil || strings.TrimSpace(out.String()) != "[]" {
		t.Errorf("empty dir JSON: %v %q", err, out.String())
	}
	cmd = newLocksCmd()
	cmd.SetArgs(nil)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	if err := cmd.Execute(); err == nil {
		t.Error("no directory accepted")
	}
}
