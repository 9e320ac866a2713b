package lockfile

import (
	"fmt"
	"strconv"
	"strings"
)

// Naming says how claim files are named. Both namings put the claim's own path in the claim
// file and hard-link it to the lock; they differ only in the claim's name, which nothing but
// inspection and breaking ever parses.
type Naming int

const (
	// Flufl names a claim "<lock>|<host>|<pid>|<random>", as Python's flufl.lock does (with its
	// default separator). This is the default and the one to use with flufl.lock and Mailman 3.
	Flufl Naming = iota
	// Mailman21 names a claim "<lock>.<host>.<pid>.<counter>", as Mailman 2.1's LockFile.py does
	// (after a fork hand-over Mailman 2.1 also uses "<lock>.<host>.<pid>"). A qslice Lock using
	// this naming takes a random number for the counter: Mailman never parses it, and a per-process
	// counter would need global state.
	Mailman21
)

func (n Naming) String() string {
	switch n {
	case Flufl:
		return "flufl"
	case Mailman21:
		return "mailman2.1"
	default:
		return "Naming(" + strconv.Itoa(int(n)) + ")"
	}
}

// fluflSep is flufl.lock's separator on POSIX systems. Lock names must not contain it.
const fluflSep = "|"

// Suffixes of qslice's own short-lived names: a lock being broken or released is first renamed
// to "<lock>|<host>|<pid>|<random>|<op>" so that it can be examined (and, if it was not the one
// we meant, put back) without ever unlinking a name that may already belong to a new holder.
const (
	opBreak   = "break"
	opRelease = "release"
)

// claimName is a parsed claim (or qslice temporary) file name.
type claimName struct {
	Lock   string // base name of the lock file the claim is for
	Host   string
	PID    int
	Tag    string // the random number (flufl) or counter (Mailman 2.1); empty after a Mailman fork hand-over
	Naming Naming
	Op     string // "" for a claim; opBreak or opRelease for qslice's temporary names
}

// format returns the base name of the claim.
func (c claimName) format() string {
	var s string
	switch c.Naming {
	case Mailman21:
		s = c.Lock + "." + c.Host + "." + strconv.Itoa(c.PID)
		if c.Tag != "" {
			s += "." + c.Tag
		}
	default:
		s = strings.Join([]string{c.Lock, c.Host, strconv.Itoa(c.PID), c.Tag}, fluflSep)
	}
	return s
}

// tempName is the base name qslice renames a lock to while breaking or releasing it.
func (c claimName) tempName(op string) string {
	return strings.Join([]string{c.Lock, c.Host, strconv.Itoa(c.PID), c.Tag, op}, fluflSep)
}

// parseFlufl parses "<lock>|<host>|<pid>|<random>" and qslice's "<...>|<op>" temporaries.
func parseFlufl(base string) (claimName, bool) {
	if !strings.Contains(base, fluflSep) {
		return claimName{}, false
	}
	f := strings.Split(base, fluflSep)
	op := ""
	switch {
	case len(f) == 5 && (f[4] == opBreak || f[4] == opRelease):
		op = f[4]
	case len(f) == 4:
	default:
		return claimName{}, false
	}
	pid, ok := parsePID(f[2])
	if !ok || f[0] == "" || f[1] == "" || f[3] == "" {
		return claimName{}, false
	}
	return claimName{Lock: f[0], Host: f[1], PID: pid, Tag: f[3], Naming: Flufl, Op: op}, true
}

// parseMailman parses base as a Mailman 2.1 claim of the lock named lock:
// "<lock>.<host>.<pid>.<counter>" or, after a fork hand-over, "<lock>.<host>.<pid>".
// When the last two fields are both numbers the first form wins.
func parseMailman(base, lock string) (claimName, bool) {
	if lock == "" || !strings.HasPrefix(base, lock+".") {
		return claimName{}, false
	}
	rest := base[len(lock)+1:]
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 || !isDigits(rest[i+1:]) {
		return claimName{}, false
	}
	last, head := rest[i+1:], rest[:i]
	if j := strings.LastIndexByte(head, '.'); j > 0 {
		if pid, ok := parsePID(head[j+1:]); ok {
			return claimName{Lock: lock, Host: head[:j], PID: pid, Tag: last, Naming: Mailman21}, true
		}
	}
	pid, ok := parsePID(last)
	if !ok || head == "" {
		return claimName{}, false
	}
	return claimName{Lock: lock, Host: head, PID: pid, Naming: Mailman21}, true
}

// parseMailmanGuess parses a Mailman 2.1 claim name without knowing its lock. It prefers the
// longest of known (names of lock files seen in the same directory) that fits; failing that,
// the part up to the last ".lock" (Mailman 2.1 list locks are "<list>.lock"), failing that the
// part before the first dot (Mailman 2.1's master lock is "master-qrunner"). Host names with
// dots make the name ambiguous; this is a best effort for claims whose lock is gone.
func parseMailmanGuess(base string, known map[string]bool) (claimName, bool) {
	best := claimName{}
	found := false
	for i := 0; i < len(base); i++ {
		if base[i] != '.' {
			continue
		}
		if l := base[:i]; known[l] {
			if c, ok := parseMailman(base, l); ok {
				best, found = c, true // later i means a longer lock name
			}
		}
	}
	if found {
		return best, true
	}
	for i := strings.LastIndex(base, ".lock."); i > 0; i = strings.LastIndex(base[:i], ".lock.") {
		if c, ok := parseMailman(base, base[:i+len(".lock")]); ok {
			return c, true
		}
	}
	if i := strings.IndexByte(base, '.'); i > 0 {
		return parseMailman(base, base[:i])
	}
	return claimName{}, false
}

func parsePID(s string) (int, bool) {
	if !isDigits(s) {
		return 0, false
	}
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// validateHost rejects host names that would make claim names unparsable or unsafe.
func validateHost(h string) error {
	if h == "" {
		return fmt.Errorf("host name is empty")
	}
	if strings.ContainsAny(h, fluflSep+"/\x00 \t\n") {
		return fmt.Errorf("host name %q contains one of '|', '/', NUL or white space", h)
	}
	return nil
}
