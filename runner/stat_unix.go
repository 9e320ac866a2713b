package runner

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// mtimeAt returns the modification time of name in the open directory dir, without following a
// link.
func mtimeAt(dir *os.File, name string) (time.Time, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return time.Time{}, err
	}
	return time.Unix(int64(st.Mtim.Sec), int64(st.Mtim.Nsec)), nil
}
