package probes

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// MaxErrors bounds the non-fatal errors one scan keeps: a directory where every stat fails (an NFS
// server gone stale) must not make a snapshot as large as the directory. The rest are only counted.
const MaxErrors = 16

// ErrVanished is wrapped by the error a scan records when files it listed were gone by the time it
// looked at them: claimed, finished or removed meanwhile. On a busy queue this is normal; it is
// reported, never fatal.
var ErrVanished = errors.New("files vanished during the scan")

// ErrBudget is wrapped by the error of a scan that ran out of its time budget before it finished.
var ErrBudget = errors.New("scan exceeded its time budget")

// errList collects non-fatal errors up to MaxErrors.
type errList struct {
	errs    []error
	dropped int
}

func (l *errList) add(err error) {
	if len(l.errs) < MaxErrors {
		l.errs = append(l.errs, err)
		return
	}
	l.dropped++
}

// Hint returns advice for an operator about err, naming what to do; "" when there is none.
func Hint(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "check the path: a Mailman 3 queue is <var_dir>/queue/<name>, its locks are in <var_dir>/locks"
	case errors.Is(err, fs.ErrPermission):
		return "run as the user that owns the directory (e.g. sudo -u mailman) or grant it read and search permission"
	case errors.Is(err, syscall.ESTALE):
		return "the NFS file handle is stale: the directory was replaced on the server; the next scan reopens it, remount if it persists"
	case errors.Is(err, syscall.ENOTDIR):
		return "the path is a file, not a directory"
	case errors.Is(err, ErrBudget):
		return "raise the probe timeout or lower the scan frequency; a slow file server makes listings slow"
	}
	return ""
}

// withHint appends Hint(err) to the message of err, keeping it unwrappable.
func withHint(err error) error {
	if h := Hint(err); h != "" {
		return fmt.Errorf("%w (%s)", err, h)
	}
	return err
}
