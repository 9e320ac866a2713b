package lockfile

import (
	"errors"
	"syscall"
	"time"
)

// fileStat is what the protocol needs from stat(2).
type fileStat struct {
	dev, ino uint64
	nlink    uint64
	size     int64
	regular  bool
	mtime    time.Time // flufl.lock's expiry
	ctime    time.Time // last link, unlink or touch of the inode; zero where unknown
	btime    time.Time // birth; zero where the file system does not report it
}

// sameFile reports whether two stats are of one inode.
func sameFile(a, b fileStat) bool { return a.ino == b.ino && a.dev == b.dev }

// isGone reports the errors flufl.lock treats as "file does not exist": ENOENT, and ESTALE,
// which is what an NFS server should answer for a file removed by another client.
func isGone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESTALE)
}

// pidAlive reports whether a process with this pid exists on this host (signal 0, as
// psutil.pid_exists does for flufl.lock): EPERM means it exists but belongs to someone else.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false // kill(0 or negative) would address process groups
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
