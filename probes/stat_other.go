//go:build !linux

package probes

import (
	"os"
	"path/filepath"
	"time"
)

// dirStatter stats entries of one directory by path (portable fallback; Linux uses fstatat).
type dirStatter struct{ dir string }

func newDirStatter(_ *os.File, dir string) dirStatter { return dirStatter{dir: dir} }

// stat returns the size of name and, lacking a portable ctime, its modification time.
func (s *dirStatter) stat(name string) (size int64, ctime time.Time, err error) {
	fi, err := os.Lstat(filepath.Join(s.dir, name))
	if err != nil {
		return 0, time.Time{}, err
	}
	return fi.Size(), fi.ModTime(), nil
}
