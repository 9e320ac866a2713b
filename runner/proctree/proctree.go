package proctree

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EnvMarker is the environment variable that marks every process of a tree: its value is the
// Record's Marker, "<owner pid>.<owner start ticks>.<16 hex digits>" (the owner is the process
// that started the tree).
const EnvMarker = "QSLICE_HANDLING"

// Record identifies one process tree: enough to find its survivors after its starter died, and
// never to mistake a stranger for one of them.
type Record struct {
	Host   string `json:"host"`    // os.Hostname of the starter
	BootID string `json:"boot_id"` // /proc/sys/kernel/random/boot_id of the starter's boot
	Marker string `json:"marker"`  // EnvMarker's value in every process of the tree
	// PGID is the tree's process group (the leader's PID), 0 until Started.
	PGID int `json:"pgid,omitempty"`
	// StartTicks is the leader's start time, field 22 of /proc/<pid>/stat: clock ticks since
	// boot. With PGID it tells the leader from a later process that reused its PID.
	StartTicks uint64 `json:"start_ticks,omitempty"`
}

// New returns the Record of a tree about to start from this process.
func New() (Record, error) {
	host, boot, err := here()
	if err != nil {
		return Record{}, err
	}
	self, err := selfStart()
	if err != nil {
		return Record{}, err
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return Record{}, fmt.Errorf("process tree marker: %w", err)
	}
	return Record{Host: host, BootID: boot,
		Marker: strconv.Itoa(os.Getpid()) + "." + strconv.FormatUint(self, 10) + "." + hex.EncodeToString(nonce[:])}, nil
}

// Local reports whether r was made on this host during this boot: only then can its processes
// be seen and killed from here.
func (r Record) Local() bool {
	host, boot, err := here()
	return err == nil && boot != "" && r.Host == host && r.BootID == boot
}

// String names the tree in log lines.
func (r Record) String() string {
	return fmt.Sprintf("process group %d on %s (marker %s)", r.PGID, r.Host, r.Marker)
}

// Prepare sets cmd up as a tree of r: its own process group, SIGKILL for the leader when the
// thread that started it dies (Linux), EnvMarker in its environment (cmd.Env is set from
// os.Environ when nil), and, for a command made by exec.CommandContext, a Cancel that kills the
// whole group. Call it before cmd.Start.
func (r Record) Prepare(cmd *exec.Cmd) {
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	// One marker only: a qslice started by another's handler passes its own on, not its parent's.
	cmd.Env = make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvMarker+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, EnvMarker+"="+r.Marker)
	cmd.SysProcAttr = sysProcAttr()
	if cmd.Cancel != nil { // exec.CommandContext's
		cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	}
}

// Start starts cmd (prepared with r.Prepare) and records its group and the leader's start time
// in r.
func Start(cmd *exec.Cmd, r *Record) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	st, err := readStat(cmd.Process.Pid)
	if err != nil {
		// It cannot have been reaped (we did not wait): it is gone only in a broken /proc.
		_ = killGroup(cmd.Process.Pid)
		_ = cmd.Wait()
		return fmt.Errorf("identify started process %d: %w", cmd.Process.Pid, err)
	}
	r.PGID, r.StartTicks = cmd.Process.Pid, st.start
	return nil
}

// Wait waits for cmd's leader to exit, then kills whatever is left of its process group while
// the leader, not yet reaped, still holds the group's number (so it cannot name another group
// yet), reaps it with cmd.Wait, and waits until no process of the group runs. When the leader
// failed (a non-zero exit or a signal: the work may run again) and r is not nil, it also kills
// every process marked as r's (Kill: those that left the group) before reaping, which also
// closes the pipes they held. exitErr is cmd.Wait's error. survivors is non-nil when some
// survived SIGKILL for GroupWait (stuck in the kernel, e.g. on a hung NFS server): then the work
// must not run again yet.
func Wait(cmd *exec.Cmd, r *Record) (exitErr, survivors error) {
	pgid := cmd.Process.Pid
	ok := waitExited(pgid)
	_ = killGroup(pgid)
	if !ok && r != nil && r.Local() {
		ctx, cancel := context.WithTimeout(context.Background(), GroupWait)
		_, survivors = Kill(ctx, *r)
		cancel()
	}
	exitErr = cmd.Wait()
	if survivors != nil {
		return exitErr, survivors
	}
	// Killed members may take a moment to die; until they all have, they keep the group's
	// number from being reused, so polling it stays safe.
	deadline := time.Now().Add(GroupWait)
	for !groupGone(pgid) {
		if time.Now().After(deadline) {
			return exitErr, fmt.Errorf("process group %d: %w after %s", pgid, ErrSurvivors, GroupWait)
		}
		time.Sleep(pollEvery)
	}
	return exitErr, nil
}

// GroupWait bounds how long Wait waits for the killed members of a group to die.
const GroupWait = 10 * time.Second

// ErrSurvivors says processes survived SIGKILL for longer than qslice waits.
var ErrSurvivors = errors.New("processes survive SIGKILL")

// File is a Record being written next to the file of what the tree works on.
type File struct {
	f *os.File
}

// Create writes r (without its group: the tree has not started yet) to path, truncating an
// older record. Written before the tree starts, the marker is on disk before any process that
// carries it exists. No fsync: a record only matters while its host is up, and a host that
// crashed takes the tree with it.
func Create(path string, r Record) (*File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("write process record: %w", err)
	}
	r.PGID, r.StartTicks = 0, 0
	if err := writeLine(f, r); err != nil {
		f.Close()
		return nil, fmt.Errorf("write process record %s: %w", path, err)
	}
	return &File{f: f}, nil
}

// Started appends r with its group and start time, then closes the file. The file then holds
// two JSON lines; Read takes the last complete one.
func (f *File) Started(r Record) error {
	err := writeLine(f.f, r)
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write process record %s: %w", f.f.Name(), err)
	}
	return nil
}

// Close closes the file without adding the group (the tree did not start).
func (f *File) Close() error { return f.f.Close() }

func writeLine(f *os.File, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	return err
}

// ErrNoRecord is returned by Read for an empty file or one without a complete record.
var ErrNoRecord = errors.New("no complete process record")

// Read reads the record at path: the last complete line, so a starter that died between the
// two writes of a File still leaves the marker. Only the first 64 KiB are read.
func Read(path string) (Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return Record{}, err
	}
	defer f.Close()
	var rec Record
	found := false
	sc := bufio.NewScanner(&limitReader{f, 64 << 10})
	for sc.Scan() {
		var r Record
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Marker != "" {
			rec, found = r, true
		}
	}
	if !found {
		return Record{}, fmt.Errorf("read %s: %w", path, ErrNoRecord)
	}
	return rec, nil
}

type limitReader struct {
	f *os.File
	n int
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("process record too large")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	k, err := l.f.Read(p)
	l.n -= k
	return k, err
}

// ErrForeign is returned by Kill for a Record of another host or an earlier boot.
var ErrForeign = errors.New("process record of another host or boot: its processes are that host's to kill")

// pollEvery is how often Kill looks again for survivors that have not died yet.
const pollEvery = 10 * time.Millisecond

// Kill kills every survivor of the records with SIGKILL and waits until none is left. It returns
// how many processes it killed; when ctx ends first it fails, naming the processes still alive
// (a process in uninterruptible sleep, e.g. on a hung NFS server, dies only when its I/O ends),
// and the caller must not run the work again yet. A Record that is not Local fails with
// ErrForeign without killing anything.
func Kill(ctx context.Context, recs ...Record) (int, error) {
	for _, r := range recs {
		if !r.Local() {
			return 0, fmt.Errorf("kill %s: %w", r, ErrForeign)
		}
	}
	return killAll(ctx, "kill", func(p proc) bool { return survivorOf(p, recs) })
}

// killAll SIGKILLs every process that match selects and waits until all of them are gone. A
// process that was killed is followed by its PID and start time until it is a zombie or gone,
// not found again through match: while it dies its environment already reads as empty.
func killAll(ctx context.Context, what string, match func(p proc) bool) (int, error) {
	killed := map[int]uint64{} // pid -> start ticks
	for {
		procs, err := scan(func(p proc) bool {
			if start, ok := killed[p.pid]; ok && start == p.st.start {
				return true
			}
			return match(p)
		})
		if err != nil {
			return len(killed), err
		}
		if len(procs) == 0 {
			return len(killed), nil
		}
		for _, p := range procs {
			if syscall.Kill(p.pid, syscall.SIGKILL) == nil {
				killed[p.pid] = p.st.start
			}
		}
		select {
		case <-ctx.Done():
			return len(killed), fmt.Errorf("%s %v: %w: %w", what, pidsOf(procs), ErrSurvivors, context.Cause(ctx))
		case <-time.After(pollEvery):
		}
	}
}

// KillOrphans kills every process on this host that carries EnvMarker of a starter that is no
// longer alive (its PID is gone or now names a process with another start time): trees whose
// handling ended with their starter, e.g. when qslice was killed with SIGKILL. A node calls it
// when it starts, before it runs anything. Like Kill it waits until they are gone.
func KillOrphans(ctx context.Context) (int, error) {
	self := os.Getpid()
	alive := map[string]bool{}
	isOrphan := func(p proc) bool {
		m := p.marker()
		if m == "" || p.pid == self {
			return false
		}
		owner := ownerOf(m)
		a, ok := alive[owner]
		if !ok {
			a = ownerAlive(owner)
			alive[owner] = a
		}
		return !a
	}
	return killAll(ctx, "kill orphaned handler processes", isOrphan)
}

// Survivors lists the PIDs of r's processes that are still alive.
func Survivors(r Record) ([]int, error) {
	if !r.Local() {
		return nil, fmt.Errorf("survivors of %s: %w", r, ErrForeign)
	}
	procs, err := scan(func(p proc) bool { return survivorOf(p, []Record{r}) })
	return pidsOf(procs), err
}

// groupGone reports whether no live process is left in group pgid: kill(2) finds none, or all
// it finds are zombies (they run nothing; an init that does not reap keeps them).
func groupGone(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return true
	}
	procs, err := scan(func(p proc) bool { return p.st.pgrp == pgid })
	return err != nil || len(procs) == 0 // without /proc (not Linux) kill(2) is all there is
}

func survivorOf(p proc, recs []Record) bool {
	if p.pid == os.Getpid() {
		return false
	}
	for _, r := range recs {
		if r.PGID > 0 && p.st.pgrp == r.PGID && leaderIs(r) {
			return true
		}
	}
	m := p.marker()
	if m == "" {
		return false
	}
	for _, r := range recs {
		if m == r.Marker {
			return true
		}
	}
	return false
}

// leaderIs reports whether r's group leader still is the recorded process (a zombie counts:
// it still holds the group's number).
func leaderIs(r Record) bool {
	st, err := readStat(r.PGID)
	return err == nil && st.start == r.StartTicks
}

func ownerOf(marker string) string {
	if i := strings.LastIndexByte(marker, '.'); i > 0 {
		return marker[:i]
	}
	return marker
}

// ownerAlive reports whether "<pid>.<start ticks>" names a live process.
func ownerAlive(owner string) bool {
	pidS, startS, ok := strings.Cut(owner, ".")
	pid, err1 := strconv.Atoi(pidS)
	start, err2 := strconv.ParseUint(startS, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return false // not a marker we wrote; whoever wrote it is not a live qslice
	}
	st, err := readStat(pid)
	return err == nil && st.start == start && st.state != 'Z' && st.state != 'X'
}

func pidsOf(ps []proc) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.pid
	}
	return out
}

var hereOnce struct {
	sync.Once
	host, boot string
	err        error
}

// here returns this host's name and boot ID.
func here() (host, boot string, err error) {
	hereOnce.Do(func() {
		hereOnce.host, hereOnce.err = os.Hostname()
		if hereOnce.err != nil {
			return
		}
		hereOnce.boot, hereOnce.err = bootID()
	})
	if hereOnce.err != nil {
		return "", "", fmt.Errorf("identify this host: %w", hereOnce.err)
	}
	return hereOnce.host, hereOnce.boot, nil
}
