//go:build !linux

package lockfile

import (
	"os"
	"syscall"
)

// Outside Linux there is no statx here: birth and change times are not reported, so
// Info.HeldSince and Info.LastTouched stay zero.

func lstat(path string) (fileStat, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return fileStat{}, err
	}
	return fromFileInfo(fi), nil
}

func statxPath(path string) (fileStat, error) { return lstat(path) }

// freshStat: see the Linux version.
func freshStat(path string) (fileStat, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return lstat(path)
	}
	defer f.Close()
	return statxFile(f)
}

func statxFile(f *os.File) (fileStat, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileStat{}, err
	}
	return fromFileInfo(fi), nil
}

func fromFileInfo(fi os.FileInfo) fileStat {
	st := fileStat{size: fi.Size(), regular: fi.Mode().IsRegular(), mtime: fi.ModTime()}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino, st.nlink = uint64(s.Dev), uint64(s.Ino), uint64(s.Nlink)
	}
	return st
}
