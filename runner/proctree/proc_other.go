//go:build !linux

package proctree

import (
	"errors"
	"syscall"
)

// Without /proc nothing can be identified after the starter died: there is no boot ID, so Local
// is always false and Kill never kills; the group is still killed at every end of a handling.

var errNoProc = errors.New("process trees are tracked on Linux only")

type stat struct {
	state byte
	pgrp  int
	start uint64
}

func readStat(int) (stat, error) { return stat{}, nil }
func bootID() (string, error)    { return "", nil }
func selfStart() (uint64, error) { return 0, nil }

type proc struct {
	pid int
	st  stat
}

func (p *proc) marker() string { return "" }

func scan(func(p proc) bool) ([]proc, error) { return nil, errNoProc }

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func killGroup(pgid int) error {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

func waitExited(int) bool { return false }
