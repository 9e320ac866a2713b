//go:build unix

package supervise

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// proc is one started worker: the leader of its own process group.
//
// Where the platform can tell "the leader exited" without reaping it
// (waitid with WNOWAIT on Linux), the leader stays a zombie until its whole
// group is gone, so the process group ID cannot be reused by another process
// while qslice may still signal it. Elsewhere the leader is reaped at once
// (early) and a later kill(-pgid) has the usual small PID-reuse race.
type proc struct {
	cmd    *exec.Cmd
	pid    int // also the process group ID
	early  bool
	exited chan struct{} // closed when the leader has exited

	// Written by watch before exited is closed, or afterwards by reap in
	// the goroutine that owns the proc.
	reaped  bool
	waitErr error

	outputs []*os.File // read ends of stdout and stderr
	pumps   sync.WaitGroup
}

// startProc starts spec in a new process group. The caller owns the
// returned proc: it must eventually call reap and closeOutput.
func startProc(spec workerSpec, early bool, pump func(r *os.File, stream string, pid int)) (*proc, error) {
	if len(spec.argv) == 0 {
		return nil, errors.New("start worker: empty command")
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start worker: stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start worker: stderr pipe: %w", err)
	}
	cmd := exec.Command(spec.argv[0], spec.argv[1:]...)
	cmd.Env = spec.env
	cmd.Dir = spec.dir
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Credential = spec.cred
	err = cmd.Start()
	// The child holds its own copies of the write ends; ours must go so
	// that the pumps see EOF once the whole group is gone.
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start worker %s: %w", spec.argv[0], err)
	}
	p := &proc{
		cmd:     cmd,
		pid:     cmd.Process.Pid,
		early:   early,
		exited:  make(chan struct{}),
		outputs: []*os.File{outR, errR},
	}
	go p.watch()
	for i, r := range p.outputs {
		stream := [...]string{"stdout", "stderr"}[i]
		p.pumps.Add(1)
		go func() {
			defer p.pumps.Done()
			pump(r, stream, p.pid)
		}()
	}
	return p, nil
}

// watch closes exited when the leader exits. It ends with the leader, which
// the stop sequence guarantees (SIGKILL cannot be ignored).
func (p *proc) watch() {
	defer close(p.exited)
	if !p.early && waitNoReap(p.pid) == nil {
		return
	}
	p.waitErr = p.cmd.Wait()
	p.reaped = true
}

func (p *proc) leaderExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// gone reports whether every process of the group has exited (zombies
// count as exited: they hold no resources and run no code).
func (p *proc) gone() bool {
	if !p.leaderExited() {
		return false
	}
	if !p.reaped {
		// The leader is a zombie that we hold: the group ID is still ours.
		if alive, err := liveMember(p.pid); err == nil {
			return !alive
		}
	}
	return errors.Is(unix.Kill(-p.pid, 0), unix.ESRCH)
}

// signal sends sig to the whole process group.
func (p *proc) signal(sig syscall.Signal) error {
	if p.leaderExited() && p.reaped && p.gone() {
		return nil // do not risk signalling a reused group ID
	}
	err := unix.Kill(-p.pid, sig)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal process group %d: %w", p.pid, err)
	}
	return nil
}

// reap collects the leader's exit status; call it only once the group is
// gone (or the leader has exited, if the group is to be abandoned).
func (p *proc) reap() *os.ProcessState {
	<-p.exited
	if !p.reaped {
		p.waitErr = p.cmd.Wait()
		p.reaped = true
	}
	return p.cmd.ProcessState
}

// exitInfo describes how a worker ended.
type exitInfo struct {
	code   int    // exit status, 128+N when killed by signal N, -1 unknown
	signal string // name of the killing signal, if any
	desc   string
}

func describeExit(ps *os.ProcessState, waitErr error) exitInfo {
	if ps == nil {
		return exitInfo{code: -1, desc: fmt.Sprintf("wait failed: %v", waitErr)}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		name := unix.SignalName(ws.Signal())
		if name == "" {
			name = fmt.Sprintf("signal %d", int(ws.Signal()))
		}
		return exitInfo{code: 128 + int(ws.Signal()), signal: name, desc: "killed by " + name}
	}
	return exitInfo{code: ps.ExitCode(), desc: fmt.Sprintf("exit status %d", ps.ExitCode())}
}
