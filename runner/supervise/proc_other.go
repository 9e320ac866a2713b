//go:build unix && !linux

package supervise

import (
	"errors"
	"syscall"
)

var errUnsupported = errors.New("not supported on this platform")

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func procfsUsable() bool { return false }

func waitNoReap(pid int) error { return errUnsupported }

func liveMember(pgid int) (bool, error) { return false, errUnsupported }
