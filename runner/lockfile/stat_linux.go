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
	return fileStat{
		dev:     uint64(st.Dev),
		ino:     st.Ino,
		nlink:   uint64(st.Nlink),
		size:    st.Size,
		regular: st.Mode&unix.S_IFMT == unix.S_IFREG,
		mtime:   time.Unix(st.Mtim.Unix()),
		ctime:   time.Unix(st.Ctim.Unix()),
	}, nil
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
