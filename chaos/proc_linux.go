package chaos

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Every node runs in its own session (Setsid), and qslice starts each handler in its own process
// group of that session; signalling the session's members is how the harness reaches every
// process of a node, as a crash or a pause of its machine would.

// sessionMembers lists the processes of session sid (from /proc), zombies excluded.
func sessionMembers(sid int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 4 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if sess, err := strconv.Atoi(f[3]); err == nil && sess == sid {
			out = append(out, pid)
		}
	}
	return out, nil
}

// signalSession sends sig to the process group sid (the session leader's, stopping it from
// starting new children first) and then to every member of the session, rescanning until no new
// member shows up (at most 10 rounds): a child forked between scans is caught by the next.
func signalSession(sid int, sig syscall.Signal) error {
	if err := syscall.Kill(-sid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to process group %d: %w", sig, sid, err)
	}
	done := map[int]bool{}
	for round := 0; round < 10; round++ {
		pids, err := sessionMembers(sid)
		if err != nil {
			return err
		}
		fresh := 0
		for _, p := range pids {
			if done[p] {
				continue
			}
			done[p] = true
			fresh++
			if err := syscall.Kill(p, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("signal %v to %d: %w", sig, p, err)
			}
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil
}

// waitSessionStopped polls until every member of session sid is stopped (state T), or timeout.
func waitSessionStopped(sid int, timeout time.Duration) error {
	return pollUntil(timeout, func() error {
		pids, err := sessionMembers(sid)
		if err != nil {
			return err
		}
		for _, p := range pids {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
			if err != nil {
				continue
			}
			s := string(b)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if len(f) > 0 && f[0] != "T" && f[0] != "t" {
				return fmt.Errorf("process %d of session %d is in state %s", p, sid, f[0])
			}
		}
		return nil
	})
}

// waitSessionGone polls until session sid has no live member, or timeout.
func waitSessionGone(sid int, timeout time.Duration) error {
	return pollUntil(timeout, func() error {
		pids, err := sessionMembers(sid)
		if err != nil {
			return err
		}
		if len(pids) > 0 {
			return fmt.Errorf("session %d still has processes %v", sid, pids)
		}
		return nil
	})
}

// pollUntil calls cond every 20 ms until it returns nil or timeout passes (then its last error).
func pollUntil(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not true after %s: %w", timeout, err)
		}
		<-t.C
	}
}

// hasChildren reports whether process pid has a live child (any thread's), cheaply: the
// /proc/<pid>/task/*/children files of its threads.
func hasChildren(pid int) bool {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/children")
		if err == nil && len(strings.TrimSpace(string(b))) > 0 {
			return true
		}
	}
	return false
}
