package queue

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// File name suffixes, as Mailman 3 uses them.
const (
	SuffixReady    = ".pck"     // a message waiting to be processed
	SuffixInFlight = ".bak"     // claimed by a runner (Mailman's backup file)
	SuffixTemp     = ".pck.tmp" // being written; never read
	SuffixBad      = ".psv"     // preserved in the bad queue
)

// SuffixProcs is the suffix of "<base>.procs.json", the record (runner/proctree) of the process
// tree of an exec handler working on the in-flight "<base>.bak", next to it. Not Mailman's; Mailman
// ignores it as it ignores every suffix it does not know.
const SuffixProcs = ".procs.json"

// DigestLen is the number of hex digits of a SHA-1 digest in a queue file name.
const DigestLen = 40

// Digest is the 160-bit SHA-1 digest of a queue file name, big-endian.
type Digest [20]byte

// String returns the digest as 40 lowercase hex digits.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Name is a parsed queue file name: "<when>+<digest><suffix>".
type Name struct {
	Base   string  // "<when>+<digest>", the part shared by every state of one message
	When   float64 // Unix time, seconds, from the name
	Digest Digest
	Suffix string // SuffixReady, SuffixInFlight, SuffixBad
}

// Time returns the name's timestamp as a time.Time.
func (n Name) Time() time.Time {
	sec, frac := math.Modf(n.When)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// Age returns how long ago the message was enqueued, according to its name.
func (n Name) Age(now time.Time) time.Duration { return now.Sub(n.Time()) }

// FileName returns the name with the given suffix.
func (n Name) FileName(suffix string) string { return n.Base + suffix }

// ErrForeign is returned by ParseName for a name that is not a queue file at all (wrong suffix):
// callers ignore such files silently apart from counting them.
var ErrForeign = errors.New("not a queue file")

// ParseName parses a queue file name. It returns ErrForeign (wrapped) when the suffix is not one
// qslice handles, and a descriptive error when the suffix is right but the rest is malformed.
func ParseName(file string) (Name, error) {
	var suffix string
	switch {
	case strings.HasSuffix(file, SuffixReady):
		suffix = SuffixReady
	case strings.HasSuffix(file, SuffixInFlight):
		suffix = SuffixInFlight
	case strings.HasSuffix(file, SuffixBad):
		suffix = SuffixBad
	default:
		return Name{}, fmt.Errorf("%q: %w", file, ErrForeign)
	}
	base := file[:len(file)-len(suffix)]
	// Mailman splits at the first '+' (filebase.split('+', 1)); so do we, so that both agree on
	// which names are well formed.
	plus := strings.IndexByte(base, '+')
	if plus < 0 {
		return Name{}, fmt.Errorf("%q: malformed queue file name: want <time>+<40 hex digits>%s", file, suffix)
	}
	whenStr, hexStr := base[:plus], base[plus+1:]
	when, err := strconv.ParseFloat(whenStr, 64)
	if err != nil || !isDecimal(whenStr) || math.IsNaN(when) || math.IsInf(when, 0) || when < 0 {
		return Name{}, fmt.Errorf("%q: malformed time %q: want a Unix time such as 1700000000.123", file, whenStr)
	}
	var d Digest
	if len(hexStr) != DigestLen || !isLowerHex(hexStr) {
		return Name{}, fmt.Errorf("%q: malformed digest %q: want 40 lowercase hex digits", file, hexStr)
	}
	if _, err := hex.Decode(d[:], []byte(hexStr)); err != nil {
		return Name{}, fmt.Errorf("%q: malformed digest: %w", file, err)
	}
	return Name{Base: base, When: when, Digest: d, Suffix: suffix}, nil
}

// isDecimal reports whether s uses only the characters of a decimal float as Python's repr writes it
// (strconv.ParseFloat alone would also accept hexadecimal floats and underscores, which Mailman's
// float() rejects).
func isDecimal(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+') {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// FormatWhen writes a Unix time the way Python's repr(float) does for Mailman's names: the shortest
// decimal that parses back to the same float64, with a decimal point (".0" if need be) between 1e-4
// and 1e16, in exponent notation outside (only within 100µs of the Unix epoch, for a time.Time).
func FormatWhen(t time.Time) string {
	// Python's time.time() divides the same way: (double)nanoseconds / 1e9.
	f := float64(t.UnixNano()) / 1e9
	if a := math.Abs(f); a != 0 && (a < 1e-4 || a >= 1e16) {
		// repr switches to exponent notation outside [1e-4, 1e16): "1e-05", "1.5e+16".
		return strconv.FormatFloat(f, 'e', -1, 64)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsRune(s, '.') {
		s += ".0"
	}
	return s
}
