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
	"math"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
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

// Buffers the loop keeps between messages: the body buffer grows to the largest body so far (at
// least minBody, at most maxKeptBody) and is reused; a larger body gets a buffer of its own,
// dropped after its handler returned.
const (
	minBody     = 4 << 10
	maxKeptBody = 1 << 20
)

// Serve serves messages read from r, answering on w, until r ends. It returns nil at the end of
// input and an error on garbage or a failed write.
//
// In the steady state a message costs two allocations, both the handler's to keep: its *Message
// and one string holding the header's new string values (values seen before, such as the queue,
// the lock and meta entries, are shared). Frame, header and body buffers and the answer are
// reused (BenchmarkServe, TestServeAllocations).
func Serve(r io.Reader, w io.Writer, handle func(*Message) error) error {
	br := bufio.NewReaderSize(r, 256<<10)
	bw := bufio.NewWriterSize(w, 64<<10)
	var hdr, kept, ans []byte
	dec := newDecoder()
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
		body := kept
		if body == nil || cap(body) < bl {
			body = make([]byte, bl, max(bl, min(2*cap(kept), maxKeptBody), minBody))
			if cap(body) <= maxKeptBody {
				kept = body
			}
		}
		body = body[:bl:bl]
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
		if !dec.decode(hdr, m) {
			// What the decoder does not know, encoding/json decides.
			*m = Message{}
			if err := json.Unmarshal(hdr, m); err != nil {
				return fmt.Errorf("message header %q: %w", hdr, err)
			}
		}
		if m.Type != "message" {
			return fmt.Errorf("unexpected frame type %q", m.Type)
		}
		m.Body = body
		ans = appendAnswer(ans[:0], m.ID, call(handle, m))
		writeFrame(bw, ans)
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

// appendAnswer appends the answer to message id: byte for byte what encoding/json.Marshal makes
// of a map with the answer's fields (keys sorted), which earlier versions of this library sent
// (TestAnswerIsJSONMarshal).
func appendAnswer(b []byte, id uint64, err error) []byte {
	if err == nil {
		b = append(b, `{"type":"done","id":`...)
		b = strconv.AppendUint(b, id, 10)
		return append(b, '}')
	}
	re, retry := asRetry(err)
	b = append(b, '{')
	if retry && re.Delay > 0 {
		b = append(b, `"delay":`...)
		b = appendJSONFloat(b, re.Delay.Seconds())
		b = append(b, ',')
	}
	b = append(b, `"id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"reason":`...)
	if retry {
		b = appendJSONString(b, re.Reason)
		return append(b, `,"type":"retry"}`...)
	}
	b = appendJSONString(b, err.Error())
	return append(b, `,"type":"fail"}`...)
}

// asRetry finds a *RetryError in err's chain; a function of its own so that errors.As's target
// is allocated only for errors that are not a *RetryError themselves.
func asRetry(err error) (*RetryError, bool) {
	if re, ok := err.(*RetryError); ok {
		return re, true
	}
	var re *RetryError
	ok := errors.As(err, &re)
	return re, ok
}

// appendJSONFloat appends f as encoding/json writes a float64.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if n := len(b); format == 'e' && n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
		b[n-2] = b[n-1] // e-09 is written e-9
		b = b[:n-1]
	}
	return b
}

// appendJSONString appends s as encoding/json writes a string (HTML-safe: <, > and & escaped;
// invalid UTF-8 replaced by U+FFFD; U+2028 and U+2029 escaped).
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

// writeFrame writes a frame with header hdr and no body.
func writeFrame(w *bufio.Writer, hdr []byte) {
	var digits [20]byte
	for _, c := range strconv.AppendInt(digits[:0], int64(len(hdr)), 10) {
		w.WriteByte(c)
	}
	w.WriteString(" 0\n")
	w.Write(hdr)
}

// parseLine parses a frame header line: "<header length> <body length>\n" as qslice writes it
// without allocating, any other form as earlier versions of this library did.
func parseLine(line []byte) (int, int, error) {
	if h, i, ok := parseDigits(line, 0); ok && i < len(line) && line[i] == ' ' {
		if b, j, ok := parseDigits(line, i+1); ok && j == len(line)-1 && line[j] == '\n' {
			return h, b, nil
		}
	}
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

// parseDigits parses 1 to 18 decimal digits (no overflow possible) at b[i:] and returns the
// number and the index after it.
func parseDigits(b []byte, i int) (n, end int, ok bool) {
	for end = i; end < len(b) && end-i < 19 && '0' <= b[end] && b[end] <= '9'; end++ {
		n = n*10 + int(b[end]-'0')
	}
	return n, end, end > i && end-i <= 18
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// decoder decodes message headers without reflection into exactly what encoding/json.Unmarshal
// makes of them (TestDecoderAgreesWithJSON, FuzzDecoder). It takes the JSON qslice writes and
// more: any whitespace, field order, duplicate fields, escapes, unknown fields with any value.
// What it does not take (keys that match a field only case-insensitively, numbers with a sign,
// fraction or exponent, values of the wrong type, deep nesting, invalid JSON) it leaves to
// encoding/json by returning false.
//
// Decoded strings go to one buffer; at the end the values are made into strings: those of the
// fields that repeat (type, queue, lock, meta keys and values) from a small table of values seen
// before when there, all others together as one string.
type decoder struct {
	b      []byte
	i      int
	buf    []byte     // the decoded string values of this header
	str    [nStr]span // the string fields, in buf
	meta   []span     // key, value, key, value... in buf
	metaOn bool       // meta was an object (and no later null): the map is made, maybe empty
	all    string     // buf as a string, when a value needed it
	seen   map[string]string
}

// span is a decoded string value: buf[from:to].
type span struct{ from, to int }

// The string fields (indexes of decoder.str).
const (
	strType = iota
	strQueue
	strLock
	strMessageID
	strEnqueued
	strLeaseDeadline
	strTraceparent
	nStr
)

// maxSeen bounds the table of repeating values (the first ones seen stay); maxSeenLen the length
// of one.
const (
	maxSeen    = 256
	maxSeenLen = 256
	maxDepth   = 32 // of unknown values skipped; deeper ones go to encoding/json
)

func newDecoder() *decoder { return &decoder{seen: map[string]string{}} }

// decode fills the zero Message m from the header b and reports whether it could.
func (d *decoder) decode(b []byte, m *Message) bool {
	d.b, d.i, d.buf, d.str, d.meta, d.metaOn, d.all = b, 0, d.buf[:0], [nStr]span{}, d.meta[:0], false, ""
	if !d.object(m) {
		return false
	}
	m.Type = d.string(d.str[strType], true)
	m.Queue = d.string(d.str[strQueue], true)
	m.Lock = d.string(d.str[strLock], true)
	m.MessageID = d.string(d.str[strMessageID], false)
	m.Enqueued = d.string(d.str[strEnqueued], false)
	m.LeaseDeadline = d.string(d.str[strLeaseDeadline], false)
	m.Traceparent = d.string(d.str[strTraceparent], false)
	if d.metaOn {
		m.Meta = make(map[string]string, len(d.meta)/2)
		for i := 0; i < len(d.meta); i += 2 {
			m.Meta[d.string(d.meta[i], true)] = d.string(d.meta[i+1], true)
		}
	}
	d.all = ""
	return true
}

// string returns the value at sp: a repeating one from the table when it was seen before (and
// added to it while there is room), else a part of one string made of buf for all values.
func (d *decoder) string(sp span, repeating bool) string {
	v := d.buf[sp.from:sp.to]
	if len(v) == 0 {
		return ""
	}
	if repeating {
		if s, ok := d.seen[string(v)]; ok {
			return s
		}
		if len(d.seen) < maxSeen && len(v) <= maxSeenLen {
			s := string(v)
			d.seen[s] = s
			return s
		}
	}
	if d.all == "" {
		d.all = string(d.buf)
	}
	return d.all[sp.from:sp.to]
}

// object decodes the header's object, with whitespace around it.
func (d *decoder) object(m *Message) bool {
	d.space()
	if !d.byte('{') {
		return false
	}
	d.space()
	if d.byte('}') {
		d.space()
		return d.i == len(d.b)
	}
	for {
		d.space()
		key, ok := d.key()
		if !ok {
			return false
		}
		d.space()
		if !d.byte(':') {
			return false
		}
		d.space()
		switch key {
		case strType, strQueue, strLock, strMessageID, strEnqueued, strLeaseDeadline, strTraceparent:
			ok = d.stringField(key)
		case keyID:
			ok = d.uintField(&m.ID)
		case keyFencingToken:
			ok = d.uintField(&m.FencingToken)
		case keySlice:
			ok = d.intField(&m.Slice)
		case keySlices:
			ok = d.intField(&m.Slices)
		case keyAttempts:
			ok = d.intField(&m.Attempts)
		case keyRetry:
			ok = d.intField(&m.Retry)
		case keyMeta:
			ok = d.metaField()
		default:
			ok = d.skip(0)
		}
		if !ok {
			return false
		}
		d.space()
		if d.byte('}') {
			d.space()
			return d.i == len(d.b)
		}
		if !d.byte(',') {
			return false
		}
	}
}

// Keys of the fields that are not strings, and of unknown fields.
const (
	keyUnknown = nStr + iota
	keyID
	keyFencingToken
	keySlice
	keySlices
	keyAttempts
	keyRetry
	keyMeta
)

// keys maps the header's keys to the string fields and the key* constants.
var keys = map[string]int{"type": strType, "queue": strQueue, "lock": strLock, "message_id": strMessageID,
	"enqueued": strEnqueued, "lease_deadline": strLeaseDeadline, "traceparent": strTraceparent, "id": keyID,
	"fencing_token": keyFencingToken, "slice": keySlice, "slices": keySlices, "attempts": keyAttempts,
	"retry": keyRetry, "meta": keyMeta}

// key reads an object key and returns the field it names exactly, or keyUnknown for a key that
// matches no field's name even case-insensitively (lower-case ASCII without escapes, as encoding/json
// folds case). It returns false for other keys.
func (d *decoder) key() (int, bool) {
	if !d.byte('"') {
		return 0, false
	}
	from := d.i
	for ; d.i < len(d.b); d.i++ {
		switch c := d.b[d.i]; {
		case c == '"':
			k, known := keys[string(d.b[from:d.i])] // does not allocate
			d.i++
			if !known {
				k = keyUnknown
			}
			return k, true
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf || 'A' <= c && c <= 'Z':
			return 0, false
		}
	}
	return 0, false
}

// stringField decodes a string value or null (which leaves the field as it is).
func (d *decoder) stringField(f int) bool {
	if d.null() {
		return true
	}
	sp, ok := d.quoted()
	d.str[f] = sp
	return ok
}

// uintField decodes an unsigned integer or null.
func (d *decoder) uintField(v *uint64) bool {
	if d.null() {
		return true
	}
	n, ok := d.digits()
	*v = n
	return ok
}

// intField decodes a non-negative integer or null.
func (d *decoder) intField(v *int) bool {
	if d.null() {
		return true
	}
	n, ok := d.digits()
	*v = int(n)
	return ok && n <= math.MaxInt
}

// digits reads a JSON number that is a non-negative integer below 2^64.
func (d *decoder) digits() (uint64, bool) {
	from := d.i
	var n uint64
	for ; d.i < len(d.b) && '0' <= d.b[d.i] && d.b[d.i] <= '9'; d.i++ {
		c := uint64(d.b[d.i] - '0')
		if n > (math.MaxUint64-c)/10 {
			return 0, false
		}
		n = n*10 + c
	}
	if d.i == from || d.b[from] == '0' && d.i-from > 1 {
		return 0, false
	}
	if d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return 0, false
	}
	return n, true
}

// metaField decodes an object of strings (added to the map, as encoding/json adds to a map it
// already made) or null (no map).
func (d *decoder) metaField() bool {
	if d.null() {
		d.metaOn, d.meta = false, d.meta[:0]
		return true
	}
	if !d.byte('{') {
		return false
	}
	d.metaOn = true
	d.space()
	if d.byte('}') {
		return true
	}
	for {
		d.space()
		k, ok := d.quoted()
		if !ok {
			return false
		}
		d.space()
		if !d.byte(':') {
			return false
		}
		d.space()
		v, ok := d.quoted()
		if !ok {
			return false
		}
		d.meta = append(d.meta, k, v)
		d.space()
		if d.byte('}') {
			return true
		}
		if !d.byte(',') {
			return false
		}
	}
}

// skip reads any JSON value.
func (d *decoder) skip(depth int) bool {
	if d.i >= len(d.b) || depth > maxDepth {
		return false
	}
	switch c := d.b[d.i]; {
	case c == '"':
		sp, ok := d.quoted()
		d.buf = d.buf[:sp.from]
		return ok
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		d.i++
		d.space()
		if d.byte(end) {
			return true
		}
		for {
			d.space()
			if c == '{' {
				sp, ok := d.quoted()
				d.buf = d.buf[:sp.from]
				if !ok {
					return false
				}
				d.space()
				if !d.byte(':') {
					return false
				}
				d.space()
			}
			if !d.skip(depth + 1) {
				return false
			}
			d.space()
			if d.byte(end) {
				return true
			}
			if !d.byte(',') {
				return false
			}
		}
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return d.number()
	}
	return false
}

// number reads a JSON number.
func (d *decoder) number() bool {
	d.byte('-')
	if !d.byte('0') && !d.run() {
		return false
	}
	if d.byte('.') && !d.run() {
		return false
	}
	if d.byte('e') || d.byte('E') {
		if !d.byte('+') {
			d.byte('-')
		}
		return d.run()
	}
	return true
}

// run reads one or more decimal digits.
func (d *decoder) run() bool {
	from := d.i
	for d.i < len(d.b) && '0' <= d.b[d.i] && d.b[d.i] <= '9' {
		d.i++
	}
	return d.i > from
}

// quoted decodes a JSON string into buf as encoding/json unquotes it: escapes resolved, a lone
// or broken surrogate and invalid UTF-8 each replaced by U+FFFD.
func (d *decoder) quoted() (span, bool) {
	sp := span{from: len(d.buf)}
	if !d.byte('"') {
		return sp, false
	}
	for d.i < len(d.b) {
		from := d.i
		for d.i < len(d.b) && d.b[d.i] >= 0x20 && d.b[d.i] < utf8.RuneSelf && d.b[d.i] != '"' && d.b[d.i] != '\\' {
			d.i++
		}
		d.buf = append(d.buf, d.b[from:d.i]...)
		if d.i == len(d.b) {
			break
		}
		switch c := d.b[d.i]; {
		case c == '"':
			d.i++
			sp.to = len(d.buf)
			return sp, true
		case c < 0x20:
			return sp, false
		case c == '\\':
			if d.i+1 == len(d.b) {
				return sp, false
			}
			switch e := d.b[d.i+1]; e {
			case '"', '\\', '/':
				d.buf = append(d.buf, e)
			case 'b':
				d.buf = append(d.buf, '\b')
			case 'f':
				d.buf = append(d.buf, '\f')
			case 'n':
				d.buf = append(d.buf, '\n')
			case 'r':
				d.buf = append(d.buf, '\r')
			case 't':
				d.buf = append(d.buf, '\t')
			case 'u':
				r := hex4(d.b[d.i:])
				if r < 0 {
					return sp, false
				}
				d.i += 6
				if utf16.IsSurrogate(r) {
					if pair := utf16.DecodeRune(r, hex4(d.b[d.i:])); pair != utf8.RuneError {
						d.i += 6
						r = pair
					} else {
						r = utf8.RuneError
					}
				}
				d.buf = utf8.AppendRune(d.buf, r)
				continue
			default:
				return sp, false
			}
			d.i += 2
		default:
			r, size := utf8.DecodeRune(d.b[d.i:])
			if r == utf8.RuneError && size == 1 {
				d.buf = utf8.AppendRune(d.buf, r)
			} else {
				d.buf = append(d.buf, d.b[d.i:d.i+size]...)
			}
			d.i += size
		}
	}
	return sp, false
}

// hex4 returns the rune of `\uXXXX` at the start of b, or -1.
func hex4(b []byte) rune {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range b[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// null reads null if it comes next.
func (d *decoder) null() bool {
	if d.i < len(d.b) && d.b[d.i] == 'n' {
		return d.literal("null")
	}
	return false
}

func (d *decoder) literal(s string) bool {
	if len(d.b)-d.i < len(s) || string(d.b[d.i:d.i+len(s)]) != s {
		return false
	}
	d.i += len(s)
	return true
}

// byte reads c if it comes next.
func (d *decoder) byte(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// space skips JSON whitespace.
func (d *decoder) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}
