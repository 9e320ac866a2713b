package queue

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"time"
)

// Magic opens every native qslice payload. Its trailing digit is the format version.
const Magic = "QSLICE1\n"

// MaxHeader bounds the JSON header of a payload so that a corrupt file cannot make a reader allocate
// without limit.
const MaxHeader = 1 << 20

// Meta is the metadata carried in front of a native payload. Fields are stable: new ones may be
// added, none renamed (the format version in Magic changes if that is ever needed).
type Meta struct {
	// Lock names a lock file (relative to the runner's lock directory) to hold while handling.
	Lock string `json:"lock,omitempty"`
	// Attempts counts handler attempts that did not end in success or a recorded failure:
	// crashes, lost leases and retries. After MaxAttempts the message goes to bad/.
	Attempts int `json:"attempts"`
	// Enqueued is when the message was first enqueued (also in its name, as the Mailman timestamp).
	Enqueued time.Time `json:"enqueued"`
	// Traceparent is the W3C trace context of the enqueuer, so a handler span can link to it.
	Traceparent string `json:"traceparent,omitempty"`
	// Extra holds user metadata (key=value) passed to handlers.
	Extra map[string]string `json:"extra,omitempty"`

	// The fields below are set when a message is moved aside, for requeueing it later.

	// Origin is the queue directory the message was taken from.
	Origin string `json:"origin,omitempty"`
	// Error says why the message was moved aside.
	Error string `json:"error,omitempty"`
	// FailedAt is when it was moved aside.
	FailedAt time.Time `json:"failed_at,omitempty"`

	// Size and CRC32 (Castagnoli) of the body, so that truncated or corrupt files are detected.
	Size  int64  `json:"size"`
	CRC32 uint32 `json:"crc32c"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hdrSumLen is the length of the metadata checksum at the end of the metadata line: a tab and 8 hex
// digits. A tab cannot occur in json.Marshal output, so the split is unambiguous.
const hdrSumLen = 1 + 8

// ErrCorrupt is wrapped by Decode for any payload that is not a complete, intact native message.
var ErrCorrupt = errors.New("corrupt payload")

// Encode writes a native payload: Magic, one line holding the JSON metadata, a tab and the CRC-32C of
// that JSON as 8 lowercase hex digits, then the body. It fills in Size and CRC32 from body, so every
// byte of the file after Magic is covered by a checksum.
func Encode(w io.Writer, m Meta, body []byte) error {
	m.Size = int64(len(body))
	m.CRC32 = crc32.Checksum(body, castagnoli)
	hdr, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	buf := make([]byte, 0, len(Magic)+len(hdr)+hdrSumLen+1+len(body))
	buf = append(buf, Magic...)
	buf = append(buf, hdr...)
	buf = fmt.Appendf(buf, "\t%08x\n", crc32.Checksum(hdr, castagnoli))
	buf = append(buf, body...)
	_, err = w.Write(buf)
	return err
}

// Decode parses a native payload held in data. The body aliases data.
func Decode(data []byte) (Meta, []byte, error) {
	var m Meta
	if !bytes.HasPrefix(data, []byte(Magic)) {
		if bytes.HasPrefix(data, []byte("QSLICE")) {
			return m, nil, fmt.Errorf("%w: unsupported format version %q (this qslice reads %q)", ErrCorrupt, firstLine(data), Magic[:len(Magic)-1])
		}
		return m, nil, fmt.Errorf("%w: not a qslice payload (no %q header; a Mailman pickle cannot be handled by qslice's own runner)", ErrCorrupt, Magic[:len(Magic)-1])
	}
	rest := data[len(Magic):]
	nl := bytes.IndexByte(rest, '\n')
	if nl < 0 || nl > MaxHeader {
		return m, nil, fmt.Errorf("%w: metadata line unterminated or longer than %d bytes (truncated file?)", ErrCorrupt, MaxHeader)
	}
	hdr := rest[:nl]
	if len(hdr) < hdrSumLen || hdr[len(hdr)-hdrSumLen] != '\t' {
		return m, nil, fmt.Errorf("%w: metadata line has no checksum", ErrCorrupt)
	}
	hdr, sum := hdr[:len(hdr)-hdrSumLen], hdr[len(hdr)-hdrSumLen+1:]
	if c := fmt.Sprintf("%08x", crc32.Checksum(hdr, castagnoli)); c != string(sum) {
		return m, nil, fmt.Errorf("%w: metadata checksum %s, file says %q", ErrCorrupt, c, sum)
	}
	if err := json.Unmarshal(hdr, &m); err != nil {
		return m, nil, fmt.Errorf("%w: metadata: %v", ErrCorrupt, err)
	}
	body := rest[nl+1:]
	if int64(len(body)) != m.Size {
		return m, nil, fmt.Errorf("%w: body is %d bytes, metadata says %d (truncated file?)", ErrCorrupt, len(body), m.Size)
	}
	if c := crc32.Checksum(body, castagnoli); c != m.CRC32 {
		return m, nil, fmt.Errorf("%w: body checksum %08x, metadata says %08x", ErrCorrupt, c, m.CRC32)
	}
	return m, body, nil
}

// firstLine returns b's first line without its newline, at most 40 bytes; the caller quotes it.
func firstLine(b []byte) string {
	s, _ := bufio.NewReader(bytes.NewReader(b)).ReadString('\n')
	s = strings.TrimSuffix(s, "\n")
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}
