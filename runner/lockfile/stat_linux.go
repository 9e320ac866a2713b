//go:build linux

package lockfile

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lstat is the one stat call of the lock's hot paths (no birth time needed there).
func lstat(path string) (fileStat, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileStat{}, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return fromStat(&st), nil
}

// freshStat stats path through a descriptor opened on it, for decisions that must not rest on
// a network file system client's cache: opening makes an NFS client revalidate the file's
// attributes (close-to-open consistency), and a FUSE client (GlusterFS) whose cached name still
// points at a file removed through another mount fails the open, or looks the name up again,
// instead of answering for the old file as lstat does until its entry timeout. It never
// follows a link, never waits on a FIFO and reads nothing.
func freshStat(path string) (fileStat, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENXIO {
			return lstat(path) // a symbolic link or a socket: the caller refuses it as not regular
		}
		return fileStat{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileStat{}, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	return fromStat(&st), nil
}

func fromStat(st *unix.Stat_t) fileStat {
	return fileStat{
		dev:     uint64(st.Dev),
		ino:     st.Ino,
		nlink:   uint64(st.Nlink),
		size:    st.Size,
		regular: st.Mode&unix.S_IFMT == unix.S_IFREG,
		mtime:   time.Unix(st.Mtim.Unix()),
		ctime:   time.Unix(st.Ctim.Unix()),
	}
}

const statxMask = unix.STATX_TYPE | unix.STATX_NLINK | unix.STATX_INO | unix.STATX_SIZE |
	unix.STATX_MTIME | unix.STATX_CTIME | unix.STATX_BTIME

// statxPath is lstat plus the birth time where the file system reports one.
func statxPath(path string) (fileStat, error) {
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, statxMask, &sx); err != nil {
		return fileStat{}, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	return fromStatx(&sx), nil
}

// statxFile stats an open file, so that what it reports and what is read from it belong to
// the same inode even if the name is replaced meanwhile.
func statxFile(f *os.File) (fileStat, error) {
	var sx unix.Statx_t
	raw, err := f.SyscallConn()
	if err != nil {
		return fileStat{}, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.Statx(int(fd), "", unix.AT_EMPTY_PATH, statxMask, &sx)
	}); err != nil {
		return fileStat{}, err
	}
	if serr != nil {
		return fileStat{}, &os.PathError{Op: "statx", Path: f.Name(), Err: serr}
	}
	return fromStatx(&sx), nil
}

func fromStatx(sx *unix.Statx_t) fileStat {
	ts := func(t unix.StatxTimestamp) time.Time { return time.Unix(t.Sec, int64(t.Nsec)) }
	st := fileStat{
		dev:     unix.Mkdev(sx.Dev_major, sx.Dev_minor),
		ino:     sx.Ino,
		nlink:   uint64(sx.Nlink),
		size:    int64(sx.Size),
		regular: uint32(sx.Mode)&unix.S_IFMT == unix.S_IFREG,
		mtime:   ts(sx.Mtime),
		ctime:   ts(sx.Ctime),
	}
	if sx.Mask&unix.STATX_BTIME != 0 && sx.Btime.Sec != 0 {
		st.btime = ts(sx.Btime)
	}
	return st
}
