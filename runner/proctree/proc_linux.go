package proctree

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// stat is what Kill needs of /proc/<pid>/stat.
type stat struct {
	state byte
	pgrp  int
	start uint64 // field 22: start time in clock ticks since boot
}

// readStat parses /proc/<pid>/stat: "pid (comm) state ppid pgrp session ... starttime ...",
// where comm may hold spaces and parentheses (so parsing starts after the last ')').
func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	pgrp, err1 := strconv.Atoi(string(f[5-3]))
	start, err2 := strconv.ParseUint(string(f[22-3]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return stat{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return stat{state: f[0][0], pgrp: pgrp, start: start}, nil
}

func bootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return string(bytes.TrimSpace(b)), err
}

func selfStart() (uint64, error) {
	st, err := readStat(os.Getpid())
	if err != nil {
		return 0, fmt.Errorf("read own start time: %w", err)
	}
	return st.start, nil
}

// proc is one live process seen by scan; its marker is read on demand.
type proc struct {
	pid    int
	st     stat
	read   bool
	marked string
}

// maxEnviron bounds what is read of one process's environment.
const maxEnviron = 1 << 20

var markerKey = []byte(EnvMarker + "=")

// marker returns the process's EnvMarker value, "" when it has none or cannot be read (another
// user's process: then it cannot be killed from here either).
func (p *proc) marker() string {
	if p.read {
		return p.marked
	}
	p.read = true
	f, err := os.Open("/proc/" + strconv.Itoa(p.pid) + "/environ")
	if err != nil {
		return ""
	}
	defer f.Close()
	b := make([]byte, 0, 4096)
	for len(b) < maxEnviron {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		k, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+k]
		if err != nil || k == 0 {
			break
		}
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, markerKey); ok {
			p.marked = string(v) // Prepare sets exactly one
			break
		}
	}
	return p.marked
}

// scan lists the live processes (zombies excluded: they run no code) for which keep is true.
func scan(keep func(p proc) bool) ([]proc, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []proc
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' {
			continue // exited meanwhile, or a zombie
		}
		p := proc{pid: pid, st: st}
		if keep(p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killGroup(pgid int) error {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// waitExited blocks until process pid has exited, without reaping it, and reports whether it
// exited with status 0.
func waitExited(pid int) (ok bool) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		// For SIGCHLD the union after si_signo, si_errno, si_code holds si_pid, si_uid,
		// si_status; it is aligned to a pointer.
		union := uintptr(4 * 3)
		if unsafe.Sizeof(uintptr(0)) == 8 {
			union = 4 * 4
		}
		status := *(*int32)(unsafe.Add(unsafe.Pointer(&info), union+8))
		const cldExited = 1 // CLD_EXITED: si_status is the exit status, not a signal
		return info.Code == cldExited && status == 0
	}
}
