// Package qsworker is the Go reference library for qslice persistent workers, protocol version 1
// (docs/worker-protocol.md). One file, standard library only: copy it into your program or import
// it.
//
//	func main() {
//		err := qsworker.Run(func(m *qsworker.Message) error {
//			return deliver(m.Body) // nil: done; qsworker.Retry(...): later; other errors: shunted
//		})
//		if err != nil {
//			log.Fatal(err)
//		}
//	}
//
// Messages are handled one at a time in the order they arrive; answers are flushed when no further
// message is waiting to be read, so qslice can keep several in flight without a write per message.
// Write logs to stderr: stdout carries the protocol.
package qsworker

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProtocolVersion is the protocol version this library speaks.
const ProtocolVersion = 1

// Message is one message: the metadata an exec handler gets in its environment, and the body.
type Message struct {
	ID            uint64            `json:"id"`
	Queue         string            `json:"queue"`          // QSLICE_QUEUE
	Slice         int               `json:"slice"`          // QSLICE_SLICE
	Slices        int               `json:"slices"`         // QSLICE_SLICES
	MessageID     string            `json:"message_id"`     // QSLICE_MESSAGE_ID: the file's base name
	Enqueued      string            `json:"enqueued"`       // QSLICE_ENQUEUED, RFC 3339
	Attempts      int               `json:"attempts"`       // QSLICE_ATTEMPTS: crash recoveries so far
	Retry         int               `json:"retry"`          // QSLICE_RETRY: retries asked so far
	Lock          string            `json:"lock"`           // QSLICE_LOCK
	LeaseDeadline string            `json:"lease_deadline"` // QSLICE_LEASE_DEADLINE: commit only before it
	FencingToken  uint64            `json:"fencing_token"`  // QSLICE_FENCING_TOKEN (Consul mode)
	Traceparent   string            `json:"traceparent"`    // TRACEPARENT of this handling's span
	Meta          map[string]string `json:"meta"`           // QSLICE_META_<KEY>, keys as stored
	Type          string            `json:"type"`
	Body          []byte            `json:"-"` // valid until the handler returns
}

// RetryError asks qslice to try the message again later.
type RetryError struct {
	Reason string
	Delay  time.Duration // 0: qslice's own backoff
}

func (e *RetryError) Error() string { return "retry later: " + e.Reason }

// Retry returns an error that makes qslice retry the message after delay (0: its backoff).
func Retry(delay time.Duration, reason string) error {
	return &RetryError{Reason: reason, Delay: delay}
}

// Run serves messages on stdin and stdout until qslice closes stdin.
func Run(handle func(*Message) error) error { return Serve(os.Stdin, os.Stdout, handle) }

// Serve serves messages read from r, answering on w, until r ends. It returns nil at the end of
// input and an error on garbage or a failed write.
func Serve(r io.Reader, w io.Writer, handle func(*Message) error) error {
	br := bufio.NewReaderSize(r, 256<<10)
	bw := bufio.NewWriterSize(w, 64<<10)
	var hdr []byte
	ready := false
	for {
		if br.Buffered() == 0 {
			// Nothing left to handle: answer before waiting for more.
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("write answers: %w", err)
			}
		}
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				return bw.Flush()
			}
			return fmt.Errorf("read frame header line: %w", err)
		}
		hl, bl, err := parseLine(line)
		if err != nil {
			return err
		}
		if cap(hdr) < hl {
			hdr = make([]byte, hl)
		}
		hdr = hdr[:hl]
		body := make([]byte, bl)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return fmt.Errorf("read frame header: %w", err)
		}
		if _, err := io.ReadFull(br, body); err != nil {
			return fmt.Errorf("read frame body: %w", err)
		}
		if !ready {
			var h struct {
				Type     string `json:"type"`
				Versions []int  `json:"versions"`
			}
			if err := json.Unmarshal(hdr, &h); err != nil || h.Type != "hello" || !contains(h.Versions, ProtocolVersion) {
				return fmt.Errorf("expected a hello offering version %d, got %q", ProtocolVersion, hdr)
			}
			writeFrame(bw, fmt.Appendf(nil, `{"type":"ready","version":%d}`, ProtocolVersion))
			ready = true
			continue
		}
		m := &Message{}
		if err := json.Unmarshal(hdr, m); err != nil {
			return fmt.Errorf("message header %q: %w", hdr, err)
		}
		if m.Type != "message" {
			return fmt.Errorf("unexpected frame type %q", m.Type)
		}
		m.Body = body
		writeFrame(bw, answer(m.ID, call(handle, m)))
	}
}

// call runs the handler; a panic fails the message instead of killing the worker.
func call(handle func(*Message) error, m *Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(os.Stderr, "qsworker: handler panicked on %s: %v\n", m.MessageID, p)
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return handle(m)
}

func answer(id uint64, err error) []byte {
	if err == nil {
		return append(strconv.AppendUint([]byte(`{"type":"done","id":`), id, 10), '}')
	}
	var re *RetryError
	a := map[string]any{"id": id}
	if errors.As(err, &re) {
		a["type"], a["reason"] = "retry", re.Reason
		if re.Delay > 0 {
			a["delay"] = re.Delay.Seconds()
		}
	} else {
		a["type"], a["reason"] = "fail", err.Error()
	}
	b, _ := json.Marshal(a)
	return b
}

func writeFrame(w *bufio.Writer, hdr []byte) {
	w.WriteString(strconv.Itoa(len(hdr)))
	w.WriteString(" 0\n")
	w.Write(hdr)
}

func parseLine(line []byte) (int, int, error) {
	f := strings.Fields(string(line))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("bad frame header line %q", line)
	}
	h, err1 := strconv.Atoi(f[0])
	b, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || h < 0 || b < 0 {
		return 0, 0, fmt.Errorf("bad frame header line %q", line)
	}
	return h, b, nil
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
