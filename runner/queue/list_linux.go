//go:build linux

package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// direntBuf is the size of the buffer handed to getdents64(2). 64 KiB holds ~900 Mailman queue
// names, so a million-file directory takes ~1,100 calls; os.File.Readdirnames uses 8 KiB. On NFS
// the client fills it from its own READDIR(PLUS) replies, so a larger buffer only saves syscalls.
const direntBuf = 64 << 10

// List calls fn with the entries of dir, one getdents64 batch at a time, checking ctx between
// batches. It reads the directory with getdents64 directly: the kernel's file type comes for free
// (no stat to tell a subdirectory) and no per-entry objects are built: names alias one buffer.
// Errors are *os.PathError naming dir, or ctx's error wrapped in "list <dir>: ".
func List(ctx context.Context, dir string, fn func(f *os.File, ents []Entry)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err // an *fs.PathError: "open <dir>: <reason>"
	}
	defer f.Close()
	fd := int(f.Fd())
	buf := make([]byte, direntBuf)
	ents := make([]Entry, 0, 1024)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "getdents", Path: dir, Err: err}
		}
		if n <= 0 {
			return nil
		}
		ents = parseDirents(buf[:n], ents[:0])
		if len(ents) > 0 {
			fn(f, ents)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
	}
}

// parseDirents appends the entries of a getdents64 buffer to ents, without "." and "..".
// Record layout (linux_dirent64): d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name (NUL-terminated).
func parseDirents(buf []byte, ents []Entry) []Entry {
	const nameOff = 19
	for len(buf) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < nameOff || reclen > len(buf) {
			break
		}
		rec := buf[:reclen]
		buf = buf[reclen:]
		if binary.NativeEndian.Uint64(rec[:8]) == 0 { // a deleted entry
			continue
		}
		name := rec[nameOff:]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if len(name) == 0 || (name[0] == '.' && (len(name) == 1 || len(name) == 2 && name[1] == '.')) {
			continue
		}
		typ := rec[18]
		ents = append(ents, Entry{Name: name, IsDir: typ == unix.DT_DIR, Special: typ != unix.DT_DIR && typ != unix.DT_REG && typ != unix.DT_UNKNOWN})
	}
	return ents
}
