// Package nodestate keeps what a qslice process leaves for the next process of the same node on
// the same host: the node's local lock and a small state file naming its Consul session. With
// them a restarted process (a crash, `systemctl restart`, an upgrade, a configuration change)
// can resume its own slices instead of moving them ("restart in place", docs/failover.md).
//
// # Invariants
//
//   - At most one process of a node runs on a host: Acquire takes an exclusive flock(2) on
//     <dir>/<node>.lock, held until Release or the process's death (the kernel drops it then,
//     whatever killed the process, and never earlier: the descriptor is close-on-exec, so no
//     handler process inherits it). A second process gets ErrRunning with the holder's PID.
//   - So when Acquire succeeds, no earlier process of the node is alive. Its handler process
//     trees may be (they outlive their starter until proctree.KillOrphans kills them): the
//     caller must kill them before it adopts anything the earlier process held.
//   - The state file <dir>/<node>.session.json is written only by the lock's holder, atomically
//     (a temporary file, fsync, rename, fsync of the directory): a reader finds the old or the
//     new content, never a mix, also after a power cut.
//   - The state file is a claim, not a proof: whoever adopts the session it names must check it
//     against Consul (it exists, it is this node's, it is still valid). Check says why a state
//     is not for this node at all.
package nodestate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrRunning: another process holds the node's lock.
var ErrRunning = errors.New("another qslice process runs for this node")

// stateVersion is the state file's format; a file of another version is ignored (start fresh).
const stateVersion = 1

// State is what a process leaves for the next one.
type State struct {
	Version int    `json:"version"`
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Session is the Consul session the process held its slice locks with ("" when none).
	Session string `json:"session"`
	// LiveSince is when the node's current live stretch began (the live_since the process
	// published): a restart that adopts the session keeps it, so its peers still see it settled.
	LiveSince time.Time `json:"live_since"`
	// Releasing lists the slices ("queue/index") it was handing off: a release of theirs may
	// still be applied, so the next process releases them again instead of processing them.
	Releasing []string `json:"releasing,omitempty"`
	// PID and Written say which process wrote it, when (for the logs).
	PID     int       `json:"pid"`
	Written time.Time `json:"written"`
}

// Check reports why st is not a state this node can resume from, or nil.
func (st State) Check(cluster, node string) error {
	switch {
	case st.Version != stateVersion:
		return fmt.Errorf("state file format %d, this build reads %d", st.Version, stateVersion)
	case st.Node != node:
		return fmt.Errorf("state file of node %q, this is node %q", st.Node, node)
	case st.Cluster != cluster:
		return fmt.Errorf("state file of cluster %q, this node is in cluster %q", st.Cluster, cluster)
	case st.Session == "":
		return errors.New("the previous process left no session (it handed its slices off, or never had a session)")
	}
	return nil
}

// Lock is the node's local lock, held for the life of the process.
type Lock struct {
	dir, node string
	f         *os.File
}

// Acquire creates dir if needed and takes the node's lock without waiting. When another process
// holds it, the error wraps ErrRunning and names that process and the lock file.
func Acquire(dir, node string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("state_dir %s: %w (check the path and its permissions)", dir, err)
	}
	path := filepath.Join(dir, node+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640) // Go opens with O_CLOEXEC
	if err != nil {
		return nil, fmt.Errorf("node lock %s: %w (check the path and its permissions)", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = "process " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("node %s: %w: %s holds %s; stop it first (systemctl stop qslice), or give this one another node name", node, ErrRunning, holder, path)
		}
		return nil, fmt.Errorf("node lock %s: %w", path, err)
	}
	// The holder's PID, for the message above; the lock itself is the flock, not the content.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{dir: dir, node: node, f: f}, nil
}

// Release drops the lock. Idempotent.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the only descriptor drops the flock
	l.f = nil
	return err
}

// Path is the state file's path.
func (l *Lock) Path() string { return filepath.Join(l.dir, l.node+".session.json") }

// Load reads the state file. A missing file is an error wrapping os.ErrNotExist.
func (l *Lock) Load() (State, error) {
	var st State
	b, err := os.ReadFile(l.Path())
	if err != nil {
		return st, fmt.Errorf("read state file: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file %s: %w", l.Path(), err)
	}
	return st, nil
}

// Save writes st atomically (see the package invariants), filling in Version, PID and Written.
func (l *Lock) Save(st State) error {
	if l == nil || l.f == nil {
		return errors.New("save state: the node lock is not held")
	}
	st.Version, st.PID, st.Written = stateVersion, os.Getpid(), time.Now().UTC().Round(time.Millisecond)
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	tmp, err := os.CreateTemp(l.dir, "."+l.node+".session.*.tmp")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := os.Rename(tmp.Name(), l.Path()); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return syncDir(l.dir)
}

// Forget removes the state file: the next process starts fresh.
func (l *Lock) Forget() error {
	if err := os.Remove(l.Path()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state file: %w", err)
	}
	return syncDir(l.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
