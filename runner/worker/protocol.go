package worker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The wire protocol, version 1 (docs/worker-protocol.md is the specification).
//
// Both directions carry frames: one ASCII line "<header length> <body length>\n" (decimal byte
// counts), then a JSON object of that many bytes, then that many body bytes. qslice opens with a
// hello, the worker answers ready; then qslice sends message frames and the worker answers each
// with done, retry or fail, naming the message's id.
const (
	ProtocolVersion = 1
	ClientName      = "qslice"

	maxHeaderLine = 64        // "<header length> <body length>\n": two decimals and a space
	MaxHeader     = 1 << 20   // a JSON header larger than this is a protocol error
	maxAnswerBody = 0         // version 1 answers carry no body
	maxFrameBody  = 1<<31 - 1 // what the header line may announce towards the worker
	maxReasonLen  = 4096      // a fail reason is cut to this for the shunt record
	maxDelay      = 24 * time.Hour
)

// Frame types.
const (
	TypeHello   = "hello"   // qslice -> worker, first frame
	TypeReady   = "ready"   // worker -> qslice, answer to hello
	TypeMessage = "message" // qslice -> worker
	TypeDone    = "done"    // worker -> qslice: handled, remove the file
	TypeRetry   = "retry"   // worker -> qslice: try again later (optional delay)
	TypeFail    = "fail"    // worker -> qslice: failed for good, shunt with the reason
)

// Hello is qslice's first frame.
type Hello struct {
	Type        string `json:"type"`
	Client      string `json:"client"`
	Versions    []int  `json:"versions"`
	Queue       string `json:"queue"`
	Worker      int    `json:"worker"`        // index of this process in the queue's pool, 0..concurrency-1
	MaxInFlight int    `json:"max_in_flight"` // messages qslice may send before the first answer
}

// Ready is the worker's answer to Hello.
type Ready struct {
	Type        string `json:"type"`
	Version     int    `json:"version"`
	MaxInFlight int    `json:"max_in_flight,omitempty"` // optional: lowers qslice's in-flight limit for this worker
}

// Header is the JSON header of a message frame: the metadata an exec handler gets in its
// environment (runner.Env), one field for each variable.
type Header struct {
	Type          string            `json:"type"`
	ID            uint64            `json:"id"`                       // unique per worker process; answers name it
	Queue         string            `json:"queue"`                    // QSLICE_QUEUE
	Slice         int               `json:"slice"`                    // QSLICE_SLICE
	Slices        int               `json:"slices"`                   // QSLICE_SLICES
	MessageID     string            `json:"message_id"`               // QSLICE_MESSAGE_ID
	Enqueued      string            `json:"enqueued"`                 // QSLICE_ENQUEUED, RFC 3339
	Attempts      int               `json:"attempts"`                 // QSLICE_ATTEMPTS
	Retry         int               `json:"retry"`                    // QSLICE_RETRY
	Lock          string            `json:"lock"`                     // QSLICE_LOCK
	LeaseDeadline string            `json:"lease_deadline,omitempty"` // QSLICE_LEASE_DEADLINE, RFC 3339
	FencingToken  uint64            `json:"fencing_token,omitempty"`  // QSLICE_FENCING_TOKEN
	Traceparent   string            `json:"traceparent,omitempty"`    // TRACEPARENT
	Meta          map[string]string `json:"meta,omitempty"`           // QSLICE_META_<KEY>, keys as stored
}

// Answer is the worker's answer to one message.
type Answer struct {
	Type   string   `json:"type"`
	ID     *uint64  `json:"id"`
	Delay  *float64 `json:"delay,omitempty"`  // retry: seconds to wait before the next try
	Reason string   `json:"reason,omitempty"` // fail (and optionally retry): why
}

// ProtocolError is a breach of the protocol by the worker; Kind is a short fixed name (a metric
// label), the message says what was wrong.
type ProtocolError struct {
	Kind string
	Msg  string
}

// Kinds of protocol errors (the values of the error label).
const (
	ErrKindFrame     = "bad_frame"     // not "<n> <n>\n", a header over MaxHeader, a body on an answer
	ErrKindJSON      = "bad_json"      // the header is not a JSON object of the expected shape
	ErrKindType      = "unknown_type"  // a type that is not expected here
	ErrKindID        = "unknown_id"    // an answer for no message in flight on this worker
	ErrKindHandshake = "handshake"     // no ready, wrong version, or too slow
	ErrKindEOF       = "closed_stdout" // stdout closed in the middle of a frame
)

func (e *ProtocolError) Error() string { return "protocol error (" + e.Kind + "): " + e.Msg }

func protoErr(kind, format string, args ...any) error {
	return &ProtocolError{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// appendFrame appends one frame with a JSON header and a body to dst.
func appendFrameHeader(dst []byte, headerLen, bodyLen int) []byte {
	dst = strconv.AppendInt(dst, int64(headerLen), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(bodyLen), 10)
	return append(dst, '\n')
}

// readFrame reads one frame's header line and JSON header; the body must be empty unless
// allowBody. It returns the JSON bytes (valid until the next read) or a *ProtocolError, or io.EOF
// when the stream ended cleanly between frames.
func readFrame(r *bufio.Reader, scratch []byte) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if err == io.EOF && len(line) == 0 {
			return nil, io.EOF
		}
		if err == io.EOF {
			return nil, protoErr(ErrKindEOF, "stdout ended in the middle of a frame header line %q", clip(line))
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, protoErr(ErrKindFrame, "line of %d+ bytes where a frame header line (\"<header length> <body length>\\n\") was expected: %q (does the worker print to stdout?)", len(line), clip(line))
		}
		return nil, err
	}
	hl, bl, ok := parseFrameLine(line[:len(line)-1])
	if !ok {
		return nil, protoErr(ErrKindFrame, "%q is not a frame header line \"<header length> <body length>\" (does the worker print to stdout?)", clip(line))
	}
	if hl > MaxHeader {
		return nil, protoErr(ErrKindFrame, "header of %d bytes announced, the limit is %d", hl, MaxHeader)
	}
	if bl > maxAnswerBody {
		return nil, protoErr(ErrKindFrame, "answer with a body of %d bytes; version %d answers have none", bl, ProtocolVersion)
	}
	if cap(scratch) < hl {
		scratch = make([]byte, hl)
	}
	scratch = scratch[:hl]
	if _, err := io.ReadFull(r, scratch); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, protoErr(ErrKindEOF, "stdout ended after %d of a %d-byte header", len(scratch), hl)
		}
		return nil, err
	}
	return scratch, nil
}

// parseFrameLine parses "<n> <m>" (no sign, no leading spaces, at most 10 digits each).
func parseFrameLine(b []byte) (h, body int, ok bool) {
	if len(b) > maxHeaderLine {
		return 0, 0, false
	}
	sp := bytes.IndexByte(b, ' ')
	if sp <= 0 || sp == len(b)-1 {
		return 0, 0, false
	}
	h, ok1 := atoi(b[:sp])
	body, ok2 := atoi(b[sp+1:])
	return h, body, ok1 && ok2
}

func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// doneAnswer is how the reference libraries write a done answer; parseAnswer takes it without
// encoding/json.
const doneAnswer = `{"type":"done","id":`

// parseAnswer decodes one answer header.
func parseAnswer(b []byte) (Answer, error) {
	if id, ok := parseDone(b); ok {
		return Answer{Type: TypeDone, ID: &id}, nil
	}
	var a Answer
	if err := json.Unmarshal(b, &a); err != nil {
		return a, protoErr(ErrKindJSON, "answer header %q: %v", clip(b), err)
	}
	switch a.Type {
	case TypeDone, TypeRetry, TypeFail:
	case "":
		return a, protoErr(ErrKindJSON, "answer header %q has no \"type\"", clip(b))
	default:
		return a, protoErr(ErrKindType, "answer of type %q; want done, retry or fail", a.Type)
	}
	if a.ID == nil {
		return a, protoErr(ErrKindJSON, "%s answer %q has no \"id\"", a.Type, clip(b))
	}
	if a.Delay != nil && (*a.Delay < 0 || *a.Delay > maxDelay.Seconds() || *a.Delay != *a.Delay) {
		return a, protoErr(ErrKindJSON, "retry delay %v: must be between 0 and %v seconds", *a.Delay, maxDelay.Seconds())
	}
	if len(a.Reason) > maxReasonLen {
		a.Reason = a.Reason[:maxReasonLen] + "..."
	}
	return a, nil
}

// parseDone recognises exactly `{"type":"done","id":N}` (N a JSON number without sign, fraction,
// exponent or leading zero, below 10^19): the same answer encoding/json would decode, faster. Any
// other form goes through encoding/json.
func parseDone(b []byte) (uint64, bool) {
	if len(b) < len(doneAnswer)+2 || string(b[:len(doneAnswer)]) != doneAnswer || b[len(b)-1] != '}' {
		return 0, false
	}
	digits := b[len(doneAnswer) : len(b)-1]
	if len(digits) == 0 || len(digits) > 19 || (digits[0] == '0' && len(digits) > 1) {
		return 0, false
	}
	var id uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		id = id*10 + uint64(c-'0')
	}
	return id, true
}

// appendHeader appends h as a JSON object: byte for byte what encoding/json.Marshal makes of it
// (TestAppendHeaderIsJSONMarshal), without reflection.
func appendHeader(b []byte, h *Header) []byte {
	b = append(b, `{"type":`...)
	b = appendJSONString(b, h.Type)
	b = append(b, `,"id":`...)
	b = strconv.AppendUint(b, h.ID, 10)
	b = append(b, `,"queue":`...)
	b = appendJSONString(b, h.Queue)
	b = append(b, `,"slice":`...)
	b = strconv.AppendInt(b, int64(h.Slice), 10)
	b = append(b, `,"slices":`...)
	b = strconv.AppendInt(b, int64(h.Slices), 10)
	b = append(b, `,"message_id":`...)
	b = appendJSONString(b, h.MessageID)
	b = append(b, `,"enqueued":`...)
	b = appendJSONString(b, h.Enqueued)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(h.Attempts), 10)
	b = append(b, `,"retry":`...)
	b = strconv.AppendInt(b, int64(h.Retry), 10)
	b = append(b, `,"lock":`...)
	b = appendJSONString(b, h.Lock)
	if h.LeaseDeadline != "" {
		b = append(b, `,"lease_deadline":`...)
		b = appendJSONString(b, h.LeaseDeadline)
	}
	if h.FencingToken != 0 {
		b = append(b, `,"fencing_token":`...)
		b = strconv.AppendUint(b, h.FencingToken, 10)
	}
	if h.Traceparent != "" {
		b = append(b, `,"traceparent":`...)
		b = appendJSONString(b, h.Traceparent)
	}
	if len(h.Meta) > 0 {
		b = append(b, `,"meta":{`...)
		for i, k := range slices.Sorted(maps.Keys(h.Meta)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, h.Meta[k])
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string as encoding/json does (HTML-safe: <, > and &
// escaped; invalid UTF-8 replaced by U+FFFD; U+2028 and U+2029 escaped).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// clip shortens b for an error message.
func clip(b []byte) string {
	const n = 80
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
