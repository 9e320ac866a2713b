package worker

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/qslice/qslice/runner/proctree"
)

// proc is one running worker process: its pipes, the messages in flight on it, and how it ended.
//
// Writing: each Handle call appends its whole frame (header and a copy of the body) to out under
// wmu; one goroutine (writeLoop) writes out to stdin in one write(2). Frames are written
// at once while the worker has no message unanswered (it waits for input); while it is busy they
// are held and written together as soon as the reader has taken in the worker's answers, or after
// holdMax in any case. So a busy worker reads many frames per read(2) and answers them with one
// write(2), and a Handle call never blocks on a full pipe. Only whole frames reach the pipe.
// Reading: one goroutine reads answers and hands each to the call waiting for it.
// Ending: end() kills the process group once, closes both pipes (unblocking the writer), and
// answers every call still in flight with the reason; the exit reason is the first one given.
type proc struct {
	index int
	cmd   *exec.Cmd
	pgid  int
	log   *slog.Logger

	stdin      *os.File
	wmu        sync.Mutex
	out        []byte        // whole frames not yet written, under wmu
	nout       int           // frames in out
	spare      []byte        // the buffer the writer wrote last, for reuse
	js         []byte        // a message header being encoded, under wmu
	unanswered int           // frames written whose answers the reader has not taken in yet
	holding    bool          // the hold timer is armed
	hold       *time.Timer   // writes held frames after holdMax
	wake       chan struct{} // buffered 1: the writer should write out now
	quit       chan struct{} // closed by end: the writer stops
	wdone      chan struct{} // closed when the writer stopped

	stdout *os.File
	r      *bufio.Reader

	mu          sync.Mutex
	nextID      uint64
	pending     map[uint64]*call
	inFlight    int
	maxInFlight int
	answered    bool   // at least one valid answer: the worker works
	reason      string // why it ended (an exit reason label), set once
	endErr      error
	ended       bool

	done      chan struct{} // closed when the process was reaped and the reader and writer stopped
	exited    chan struct{} // closed when the process was reaped and its tree is gone
	state     *os.ProcessState
	survivors error // set before exited closes: processes of the tree outlived SIGKILL
}

// holdMax bounds how long frames are held back while the worker has messages unanswered: the
// libraries answer before they wait for input, so the reader releases held frames long before;
// holdMax only matters for a worker that waits for more input before it answers.
const holdMax = 2 * time.Millisecond

// maxSpare: a write buffer larger than this (a big message went through it) is not kept.
const maxSpare = 1 << 20

// call is one message in flight on a proc.
type call struct {
	id  uint64
	res chan result // buffered 1: exactly one result is ever sent
}

type result struct {
	answer Answer
	err    error // the worker ended before answering (then answer is empty)
	final  bool  // err must not be retried: processes of the worker survived SIGKILL
}

// Exit reasons (the values of the reason label of qslice_worker_pool_exits_total).
const (
	ExitStopped     = "stopped"          // asked to stop (shutdown, pool closing) and did
	ExitTimeout     = "timeout"          // killed: a message outlived handler.timeout
	ExitLeaseLapsed = "lease_lapsed"     // killed: the node's lease lapsed
	ExitCancelled   = "cancelled"        // killed: a message's handling was cancelled (shutdown past the grace)
	ExitDied        = "died"             // exited or was killed by a signal on its own
	ExitProtocol    = "protocol_error"   // wrote something that breaks the protocol
	ExitHandshake   = "handshake_failed" // never became ready
)

// crash reports whether an exit reason counts towards a crash loop: the worker ended without
// being asked to.
func crash(reason string) bool {
	return reason == ExitDied || reason == ExitProtocol || reason == ExitHandshake
}

var errEnded = errors.New("worker ended")

// startProc starts the command in its own process group with protocol pipes on stdin and stdout;
// stderr lines go to the log.
func startProc(cfg *Config, index int, log *slog.Logger) (*proc, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
	cmd.Dir = cfg.Dir
	cmd.Env = append(append(os.Environ(), cfg.Env...), "QSLICE_QUEUE="+cfg.Queue, fmt.Sprintf("QSLICE_WORKER=%d", index))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	// Its own process group, SIGKILL when qslice dies, and a marker in its environment: after a
	// kill -9 of qslice the restarted qslice kills what is left (proctree.KillOrphans).
	rec, err := proctree.New()
	if err == nil {
		rec.Prepare(cmd)
		err = proctree.Start(cmd, &rec)
	}
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", cfg.Command[0], err)
	}
	p := &proc{
		index: index, cmd: cmd, pgid: cmd.Process.Pid, log: log.With("worker", index, "pid", cmd.Process.Pid),
		stdin: inW, stdout: outR, r: bufio.NewReaderSize(outR, 64<<10),
		wake: make(chan struct{}, 1), quit: make(chan struct{}), wdone: make(chan struct{}),
		pending: map[uint64]*call{}, maxInFlight: cfg.InFlight,
		done: make(chan struct{}), exited: make(chan struct{}),
	}
	go p.logStderr(errR)
	go func() {
		// Returns once the leader exited and no process of the worker's group (nor one marked
		// as the worker's, after a failure) is left: only then are its messages retried.
		_, survivors := proctree.Wait(cmd, &rec)
		p.state, p.survivors = cmd.ProcessState, survivors
		close(p.exited)
	}()
	return p, nil
}

// logStderr logs the worker's stderr line by line (long lines cut), until it is closed.
func (p *proc) logStderr(f *os.File) {
	defer f.Close()
	br := bufio.NewReaderSize(f, 4096)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			cut := errors.Is(err, bufio.ErrBufferFull)
			if !cut && line[len(line)-1] == '\n' {
				line = line[:len(line)-1]
			}
			p.log.Info("worker stderr", "line", string(line), "cut", cut)
			if cut {
				// Skip the rest of an over-long line.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = br.ReadSlice('\n')
				}
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// handshake sends hello and waits for ready, within timeout. On failure the process is ended.
func (p *proc) handshake(cfg *Config, timeout time.Duration) error {
	hello, _ := json.Marshal(Hello{Type: TypeHello, Client: ClientName, Versions: []int{ProtocolVersion},
		Queue: cfg.Queue, Worker: p.index, MaxInFlight: cfg.InFlight})
	_, err := p.stdin.Write(append(appendFrameHeader(nil, len(hello), 0), hello...))
	if err != nil {
		err = protoErr(ErrKindHandshake, "writing hello: %v (did the worker exit at once?)", err)
		p.end(ExitHandshake, err)
		return err
	}
	type got struct {
		b   []byte
		err error
	}
	ch := make(chan got, 1)
	go func() {
		b, err := readFrame(p.r, nil)
		ch <- got{b, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var g got
	select {
	case g = <-ch:
	case <-t.C:
		err := protoErr(ErrKindHandshake, "no ready frame within %s of hello", timeout)
		p.end(ExitHandshake, err)
		<-ch
		return err
	}
	if g.err != nil {
		err := g.err
		if errors.Is(err, io.EOF) {
			err = protoErr(ErrKindHandshake, "stdout closed before the ready frame (the worker exited: %s)", p.waitExit(time.Second))
		}
		var pe *ProtocolError
		if errors.As(err, &pe) {
			pe.Kind = ErrKindHandshake
		}
		p.end(ExitHandshake, err)
		return err
	}
	var rd Ready
	if err := json.Unmarshal(g.b, &rd); err != nil || rd.Type != TypeReady {
		err := protoErr(ErrKindHandshake, "first frame %q is not {\"type\":\"ready\",\"version\":%d}", clip(g.b), ProtocolVersion)
		p.end(ExitHandshake, err)
		return err
	}
	if rd.Version != ProtocolVersion {
		err := protoErr(ErrKindHandshake, "worker speaks version %d; qslice speaks %d", rd.Version, ProtocolVersion)
		p.end(ExitHandshake, err)
		return err
	}
	if rd.MaxInFlight > 0 && rd.MaxInFlight < p.maxInFlight {
		p.maxInFlight = rd.MaxInFlight
	}
	go p.writeLoop()
	go p.readLoop()
	return nil
}

// waitExit describes how the process exited, waiting at most d for it.
func (p *proc) waitExit(d time.Duration) string {
	select {
	case <-p.exited:
		return p.state.String()
	default:
	}
	select {
	case <-p.exited:
		return p.state.String()
	case <-time.After(d):
		return "still running"
	}
}

// readLoop hands each answer to its call; any protocol error ends the worker.
func (p *proc) readLoop() {
	defer func() {
		<-p.exited
		<-p.wdone
		close(p.done)
	}()
	var scratch []byte
	taken := 0 // answers taken in since the writer was last told
	for {
		if taken > 0 && p.r.Buffered() == 0 {
			// Every answer at hand is in: the worker is about to wait for input.
			p.answersIn(taken)
			taken = 0
		}
		b, err := readFrame(p.r, scratch)
		if err != nil {
			p.mu.Lock()
			ended := p.ended
			p.mu.Unlock()
			switch {
			case ended:
			case errors.Is(err, io.EOF):
				p.end(ExitDied, fmt.Errorf("worker closed stdout: %s", p.waitExit(2*time.Second)))
			case isProto(err):
				p.end(ExitProtocol, err)
			default:
				p.end(ExitDied, fmt.Errorf("reading the worker's stdout: %w", err))
			}
			return
		}
		scratch = b
		a, err := parseAnswer(b)
		if err != nil {
			p.end(ExitProtocol, err)
			return
		}
		p.mu.Lock()
		c := p.pending[*a.ID]
		if c != nil {
			delete(p.pending, *a.ID)
			p.inFlight--
			p.answered = true
		}
		p.mu.Unlock()
		if c == nil {
			p.end(ExitProtocol, protoErr(ErrKindID, "%s answer for id %d, which is not in flight on this worker", a.Type, *a.ID))
			return
		}
		taken++
		c.res <- result{answer: a}
	}
}

// answersIn notes n answers taken in and releases the frames held meanwhile.
func (p *proc) answersIn(n int) {
	p.wmu.Lock()
	p.unanswered = max(p.unanswered-n, 0) // answers come only for written frames: never below 0
	release := p.nout > 0
	p.wmu.Unlock()
	if release {
		p.kick()
	}
}

// kick tells the writer to write what is held.
func (p *proc) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes held frames to the worker's stdin whenever kicked, until the worker ends. A
// write error ends the worker.
func (p *proc) writeLoop() {
	defer close(p.wdone)
	for {
		select {
		case <-p.wake:
		case <-p.quit:
			return
		}
		p.wmu.Lock()
		buf, n := p.out, p.nout
		p.out, p.nout, p.spare = p.spare[:0], 0, nil
		p.unanswered += n
		p.wmu.Unlock()
		if n == 0 {
			continue
		}
		if _, err := p.stdin.Write(buf); err != nil {
			p.end(ExitDied, fmt.Errorf("writing to the worker's stdin: %w", err))
			return
		}
		if cap(buf) <= maxSpare {
			p.wmu.Lock()
			p.spare = buf[:0]
			p.wmu.Unlock()
		}
	}
}

func isProto(err error) bool {
	var pe *ProtocolError
	return errors.As(err, &pe)
}

// reserve takes one in-flight place on p, or reports false when p is full or ended.
func (p *proc) reserve() (*call, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended || p.inFlight >= p.maxInFlight {
		return nil, false
	}
	p.nextID++
	c := &call{id: p.nextID, res: make(chan result, 1)}
	p.pending[c.id] = c
	p.inFlight++
	return c, true
}

// send queues one message frame for the writer (see proc). If the worker ends first, the call
// gets its result from end.
func (p *proc) send(c *call, hdr *Header, body []byte) {
	hdr.ID = c.id
	p.wmu.Lock()
	p.js = appendHeader(p.js[:0], hdr)
	p.out = appendFrameHeader(p.out, len(p.js), len(body))
	p.out = append(p.out, p.js...)
	p.out = append(p.out, body...)
	p.nout++
	now := p.unanswered == 0
	if !now && !p.holding {
		p.holding = true
		if p.hold == nil {
			p.hold = time.AfterFunc(holdMax, p.holdOver)
		} else {
			p.hold.Reset(holdMax)
		}
	}
	p.wmu.Unlock()
	if now {
		p.kick()
	}
}

// holdOver writes held frames once holdMax passed.
func (p *proc) holdOver() {
	p.wmu.Lock()
	p.holding = false
	p.wmu.Unlock()
	p.kick()
}

// end ends the worker once: kills its process group (unless it was asked to stop), closes the
// pipes and answers every call in flight with the reason.
func (p *proc) end(reason string, err error) {
	p.mu.Lock()
	if p.ended {
		p.mu.Unlock()
		return
	}
	p.ended = true
	p.reason, p.endErr = reason, err
	pending := p.pending
	p.pending = map[uint64]*call{}
	p.inFlight = 0
	p.mu.Unlock()

	if reason != ExitStopped {
		_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	}
	close(p.quit)
	p.wmu.Lock()
	if p.hold != nil {
		p.hold.Stop()
	}
	p.out, p.spare = nil, nil
	p.wmu.Unlock()
	// Closing the pipes unblocks a writer stuck on a full pipe and the reader.
	p.stdin.Close()
	if reason != ExitStopped {
		p.stdout.Close()
	}
	// The messages in flight are answered once no process of the worker is left, so a retry
	// never overlaps what the worker was doing.
	go func() {
		<-p.exited
		werr := fmt.Errorf("%w (%s): %w", errEnded, reason, err)
		final := false
		if p.survivors != nil {
			werr = fmt.Errorf("%w; not retried: %w", werr, p.survivors)
			final = true
		}
		for _, c := range pending {
			c.res <- result{err: werr, final: final}
		}
	}()
}

// stop closes stdin so the worker finishes and exits, and kills its process group if it has not
// exited within grace.
func (p *proc) stop(grace time.Duration) {
	p.end(ExitStopped, errors.New("stopped"))
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		p.log.Warn("worker did not exit within its grace after stdin was closed; killing its process group", "grace", grace)
	}
	// Whatever the leader did, nothing of the group may outlive the pool.
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	p.stdout.Close()
}

// inflight reports how many messages are in flight and the limit.
func (p *proc) load() (n, limit int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight, p.maxInFlight, !p.ended
}

// outcome returns the exit reason and error once ended.
func (p *proc) outcome() (reason string, err error, answered bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reason, p.endErr, p.answered
}

// kill ends the worker for reason unless it ended already.
func (p *proc) kill(reason string, cause error) { p.end(reason, cause) }
