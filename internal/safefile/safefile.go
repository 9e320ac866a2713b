// Package safefile opens files in directories that other programs and people also write to (a
// shared NFS mail spool): it never follows a symbolic link, never blocks on a FIFO, never reads
// anything but a regular file, and never reads more than a caller's limit.
//
// Invariants:
//   - Read opens with O_NOFOLLOW|O_NONBLOCK, checks the open descriptor with fstat(2), and only
//     then reads: a name swapped between a listing and the open is judged by what was opened.
//   - Create makes a new file with O_CREAT|O_EXCL|O_NOFOLLOW: it never writes through a link or
//     into a file that someone else placed under the name (a leftover of ours is removed first).
//   - Errors wrap ErrNotRegular or ErrTooLarge when the file itself is the problem, so callers can
//     tell "move this aside" from an I/O fault of the disk (EACCES, EIO, ...), which they retry.
package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is wrapped by errors about names that are not regular files.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is wrapped by errors about files over the caller's size limit.
var ErrTooLarge = errors.New("file too large")

// NotRegularError says what a name is instead of a regular file.
type NotRegularError struct {
	Path string
	Kind string // "symbolic link", "FIFO", "socket", "directory", "device", ...
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is a %s, not a regular file (not followed, not read)", e.Path, e.Kind)
}

// Is makes errors.Is(err, ErrNotRegular) true.
func (e *NotRegularError) Is(target error) bool { return target == ErrNotRegular }

// TooLargeError is a file over the size limit.
type TooLargeError struct {
	Path  string
	Size  int64
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s is %d bytes, over the limit of %d (max_message_bytes)", e.Path, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// KindOf names a file type for messages.
func KindOf(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDir != 0:
		return "directory"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m.IsRegular():
		return "regular file"
	}
	return "special file"
}

func kindOfStat(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFLNK:
		return "symbolic link"
	case syscall.S_IFIFO:
		return "FIFO"
	case syscall.S_IFSOCK:
		return "socket"
	case syscall.S_IFDIR:
		return "directory"
	case syscall.S_IFCHR:
		return "character device"
	case syscall.S_IFBLK:
		return "block device"
	case syscall.S_IFREG:
		return "regular file"
	}
	return "special file"
}

// Read reads the regular file at path, at most limit bytes (limit <= 0: no limit), into buf's
// spare capacity (buf may be nil; it is reused when large enough). Cost: open, fstat, reads until
// EOF, close. Plain system calls: os.Open would register the descriptor with the network poller,
// which costs more than the read itself for a small file.
func Read(path string, limit int64, buf []byte) ([]byte, error) {
	fd, err := open(path)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, &NotRegularError{Path: path, Kind: kindOfStat(uint32(st.Mode))}
	}
	if limit > 0 && st.Size > limit {
		return nil, &TooLargeError{Path: path, Size: st.Size, Limit: limit}
	}
	// One byte more than the size, so that the read that returns EOF needs no new allocation.
	want := int(st.Size) + 1
	buf = buf[:0]
	if cap(buf) < want {
		buf = make([]byte, 0, max(want, 512))
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // the file grew since fstat
		}
		k, err := syscall.Read(fd, buf[len(buf):cap(buf)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if k == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+k]
		if limit > 0 && int64(len(buf)) > limit {
			return nil, &TooLargeError{Path: path, Size: int64(len(buf)), Limit: limit}
		}
	}
}

func open(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		switch err {
		case nil:
			return fd, nil
		case syscall.EINTR:
			continue
		case syscall.ELOOP:
			// O_NOFOLLOW on a symbolic link (a loop included) fails with ELOOP.
			return -1, &NotRegularError{Path: path, Kind: "symbolic link"}
		case syscall.ENXIO:
			// A Unix socket (or a device without a driver) cannot be opened.
			return -1, &NotRegularError{Path: path, Kind: "socket or device"}
		}
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
}

func fstat(fd int, st *syscall.Stat_t) error {
	for {
		err := syscall.Fstat(fd, st)
		if err != syscall.EINTR {
			return err
		}
	}
}

// Lstat returns what path is without following it: nil error and "regular file" for a regular
// file, else the kind.
func Lstat(path string) (fs.FileInfo, string, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, "", err
	}
	return st, KindOf(st.Mode()), nil
}

// Create creates a new regular file at path for writing, never through a symbolic link and never
// into an existing file: a leftover at path (of an earlier crash, or anything else anyone put
// there) is unlinked first (the name only; a link's target is untouched).
func Create(path string, perm os.FileMode) (*os.File, error) {
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
	f, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, fs.ErrExist) {
		if err := syscall.Unlink(path); err != nil && err != syscall.ENOENT {
			// A directory under the name (EISDIR/EPERM) cannot be unlinked: say so.
			return nil, &os.PathError{Op: "remove leftover", Path: path, Err: err}
		}
		f, err = os.OpenFile(path, flags, perm)
	}
	return f, err
}

// WriteSync creates path with Create, writes data and fsyncs it.
func WriteSync(path string, data []byte, perm os.FileMode) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
