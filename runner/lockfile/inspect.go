package lockfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// DefaultOrphanAfter: a claim whose mtime lies this far in the past counts as a leftover
// whatever its host. A claim's mtime is stamped with start + lifetime when its owner starts
// waiting; a waiting Lock of this package re-stamps it every Lifetime/2, flufl.lock and
// Mailman 2.1 never do, so one of theirs waiting on another host for over an hour is
// (wrongly) counted as a leftover. An hour is far beyond any sane wait for a lock.
const DefaultOrphanAfter = time.Hour

// HeldSince sources.
const (
	SinceBirth  = "btime" // the holder's claim file's birth time: when it began trying (includes its wait)
	SinceChange = "ctime" // the inode's last change: the acquisition or the last refresh, whichever is later
)

// InspectOptions configure Inspect and ScanDir. The zero value works.
type InspectOptions struct {
	// LocalHosts are the names this host goes by in claim names. Default: os.Hostname().
	// LocalHostNames adds the one flufl.lock writes (socket.getfqdn()). A name also matches
	// its own first label when either side is unqualified ("web1" matches "web1.example.com").
	LocalHosts []string
	// Slop as in Options: zero means DefaultSlop, negative means none.
	Slop time.Duration
	// OrphanAfter: see DefaultOrphanAfter (the default).
	OrphanAfter time.Duration
	// PIDAlive reports whether a pid exists on this host. Default: signal 0.
	PIDAlive func(pid int) bool

	beforeFile func(path string) error // tests: runs before each file is examined
}

// Info is what a look at the disk tells about one lock. Inspection never modifies anything.
type Info struct {
	Path string // the lock file
	// Held: the lock file exists, so an acquirer must wait for it or break it.
	Held bool
	// The holder, from the lock file's content (its holder's claim path); empty/zero when the
	// lock is free or its content is not a claim of it (see Anomaly).
	HolderHost string
	HolderPID  int
	ClaimPath  string // the holder's claim, rebuilt in the lock's directory from the content's base name
	Naming     Naming // of the holder's claim
	// HeldSince estimates the acquisition: the claim's birth time where the file system reports
	// it (statx; ext4, xfs, tmpfs, recent NFS), which is when the holder started trying and so
	// includes its own wait; otherwise the inode's last change time (see SinceChange), which a
	// refresh moves forward. HeldSinceSource says which.
	HeldSince       time.Time
	HeldSinceSource string
	// LastTouched is the inode's change time: the acquisition or the holder's last refresh
	// (or a breaker's touch). Zero where unknown.
	LastTouched time.Time
	Expires     time.Time // the lock file's mtime
	Expired     bool      // now is past Expires
	Breakable   bool      // now is past Expires + slop: a waiter would break it now
	LinkCount   int       // 2 for a sound lock
	// Waiters counts claims of this lock, other than the holder's, with one link, that are not orphaned.
	Waiters int
	// OrphanedClaims counts claims (and qslice's temporary names) of this lock whose host is
	// this host and whose pid is dead, or whose mtime is more than OrphanAfter in the past.
	OrphanedClaims int
	// HolderOnThisHost: the holder's host is one of LocalHosts.
	HolderOnThisHost bool
	// HolderDeadOnThisHost: the holder's host is this host and its pid does not exist. The lock
	// is stale, but it is still only broken once it is Breakable.
	HolderDeadOnThisHost bool
	// Anomaly is non-empty when the lock file is not a sound flufl.lock / Mailman 2.1 lock:
	// unrecognised content, a link count other than 2, the holder's claim file missing.
	Anomaly string
}

// Inspect looks at one lock and the claims waiting for it. It reads the lock's directory,
// but only the entries whose names start with the lock's name. A lock that does not exist gives
// an Info with Held false (and its waiters or leftovers, if any). A non-nil error with a filled
// Info means some claim files could not be examined.
func Inspect(path string, now time.Time, opts InspectOptions) (Info, error) {
	path = filepath.Clean(path)
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	names, err := readDirNames(dir)
	if err != nil {
		return Info{Path: path}, fmt.Errorf("inspect %s: %w", path, err)
	}
	kept := names[:0]
	for _, n := range names {
		if strings.HasPrefix(n, base) {
			kept = append(kept, n)
		}
	}
	infos, errs := scan(context.Background(), filepath.Dir(path), kept, now, opts.withDefaults())
	for _, in := range infos {
		if in.Path == path {
			return in, errors.Join(errs...)
		}
	}
	return Info{Path: path}, errors.Join(errs...)
}

// ScanDir inspects every lock of a directory: lock files, and locks that exist only as claims
// (waiters, or leftovers of crashed claimants). Files that are neither are ignored. A file
// that vanishes while being examined is skipped; other per-file failures come back as errors
// naming the file, and the scan goes on. Infos are sorted by Path. When ctx ends first, ScanDir
// returns no infos and one error wrapping ctx.Err(): a partial view could miss a held lock.
func ScanDir(ctx context.Context, dir string, now time.Time, opts InspectOptions) ([]Info, []error) {
	names, err := readDirNames(dir)
	if err != nil {
		return nil, []error{fmt.Errorf("scan %s: %w", dir, err)}
	}
	return scan(ctx, filepath.Clean(dir), names, now, opts.withDefaults())
}

// LocalHostNames returns the names this host may carry in claim names, for
// InspectOptions.LocalHosts: os.Hostname() (Mailman 2.1's socket.gethostname(), and this
// package's default Host) and the name Python's socket.getfqdn() gives (flufl.lock's), found
// the same way: the first name containing a dot among the reverse-resolved names of the host
// name's first address, else the first of them. ctx bounds the resolver; on any failure the
// plain host name alone is returned.
func LocalHostNames(ctx context.Context) []string {
	h, err := os.Hostname()
	if err != nil {
		return nil
	}
	names := []string{h}
	addrs, err := net.DefaultResolver.LookupHost(ctx, h)
	if err != nil || len(addrs) == 0 {
		return names
	}
	ptr, err := net.DefaultResolver.LookupAddr(ctx, addrs[0])
	if err != nil || len(ptr) == 0 {
		return names
	}
	for i := range ptr {
		ptr[i] = strings.TrimSuffix(ptr[i], ".")
	}
	fqdn := ptr[0]
	for _, n := range ptr {
		if strings.Contains(n, ".") {
			fqdn = n
			break
		}
	}
	if fqdn != "" && !slices.Contains(names, fqdn) {
		names = append(names, fqdn)
	}
	return names
}

func (o InspectOptions) withDefaults() InspectOptions {
	if len(o.LocalHosts) == 0 {
		if h, err := os.Hostname(); err == nil {
			o.LocalHosts = []string{h}
		}
	}
	o.Slop = effectiveSlop(o.Slop)
	if o.OrphanAfter <= 0 {
		o.OrphanAfter = DefaultOrphanAfter
	}
	if o.PIDAlive == nil {
		o.PIDAlive = pidAlive
	}
	return o
}

// isLocal reports whether a claim's host is this host.
func (o InspectOptions) isLocal(h string) bool {
	for _, l := range o.LocalHosts {
		if strings.EqualFold(h, l) {
			return true
		}
		hs, _, hq := strings.Cut(h, ".")
		ls, _, lq := strings.Cut(l, ".")
		if (!hq || !lq) && strings.EqualFold(hs, ls) {
			return true
		}
	}
	return false
}

type kind int

const (
	kOther kind = iota // not recognised (yet)
	kLock              // content names a claim of this file
	kClaim             // a claim (or qslice temporary) by name or by self-referring content
)

type entry struct {
	name    string
	st      fileStat
	kind    kind
	claim   claimName // kClaim: this claim; kLock: the holder's claim
	holder  string    // kLock: base name of the holder's claim
	mailman bool      // kClaim: Mailman 2.1 name, still to be parsed against the known locks
}

func scan(ctx context.Context, dir string, names []string, now time.Time, o InspectOptions) ([]Info, []error) {
	var errs []error
	var entries []*entry
	for i, name := range names {
		if i%256 == 0 && ctx.Err() != nil {
			// A partial view could miss a held lock: report none rather than a wrong one.
			return nil, []error{fmt.Errorf("scan %s: stopped after %d of %d entries: %w", dir, i, len(names), ctx.Err())}
		}
		e, err := examine(dir, name, o)
		if err != nil {
			errs = append(errs, fmt.Errorf("inspect %s: %w", filepath.Join(dir, name), err))
			continue
		}
		if e != nil {
			entries = append(entries, e)
		}
	}
	// Mailman 2.1 claim names are ambiguous when host names have dots: parse them against the
	// names of the files that may be their locks.
	known := map[string]bool{}
	for _, e := range entries {
		if e.kind != kClaim {
			known[e.name] = true
		}
	}
	groups := map[string]*group{}
	get := func(base string) *group {
		g := groups[base]
		if g == nil {
			g = &group{}
			groups[base] = g
		}
		return g
	}
	var others []*entry
	for _, e := range entries {
		switch e.kind {
		case kLock:
			get(e.name).lock = e
		case kClaim:
			if e.mailman {
				c, ok := parseMailmanGuess(e.name, known)
				if !ok {
					continue
				}
				e.claim = c
			}
			g := get(e.claim.Lock)
			g.claims = append(g.claims, e)
		default:
			others = append(others, e)
		}
	}
	for _, e := range others {
		if g := groups[e.name]; g != nil && g.lock == nil {
			g.lock = e // claims point at it but its content is not a claim of it
		}
	}
	infos := make([]Info, 0, len(groups))
	for base, g := range groups {
		infos = append(infos, g.info(filepath.Join(dir, base), dir, now, o))
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
	return infos, errs
}

// examine classifies one directory entry. It returns nil, nil for entries to ignore (vanished,
// not regular files, unrecognised).
func examine(dir, name string, o InspectOptions) (*entry, error) {
	p := filepath.Join(dir, name)
	if o.beforeFile != nil {
		if err := o.beforeFile(p); err != nil {
			return nil, err
		}
	}
	if c, ok := parseFlufl(name); ok {
		st, err := statxPath(p)
		if err != nil {
			if isGone(err) {
				return nil, nil
			}
			return nil, err
		}
		if !st.regular {
			return nil, nil
		}
		return &entry{name: name, st: st, kind: kClaim, claim: c}, nil
	}
	// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if isGone(err) || errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.ENXIO) {
			return nil, nil // vanished, a symlink, or a socket
		}
		return nil, err
	}
	defer f.Close()
	st, err := statxFile(f)
	if err != nil {
		return nil, err
	}
	if !st.regular {
		return nil, nil
	}
	e := &entry{name: name, st: st}
	if st.size > maxContent || st.size == 0 {
		return e, nil
	}
	buf := make([]byte, st.size)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		if isGone(err) {
			return nil, nil
		}
		return nil, err
	}
	content := strings.TrimSpace(string(buf[:n]))
	cb := filepath.Base(content)
	switch {
	case content == "":
	case cb == name:
		// A claim holds its own path. Flufl names were handled above; this is Mailman 2.1's.
		e.kind, e.mailman = kClaim, true
	default:
		if c, ok := parseFlufl(cb); ok && c.Lock == name && c.Op == "" {
			e.kind, e.claim, e.holder = kLock, c, cb
		} else if c, ok := parseMailman(cb, name); ok {
			e.kind, e.claim, e.holder = kLock, c, cb
		}
	}
	return e, nil
}

type group struct {
	lock   *entry
	claims []*entry
}

func (g *group) info(path, dir string, now time.Time, o InspectOptions) Info {
	in := Info{Path: path}
	var problems []string
	holderFound := false
	if l := g.lock; l != nil {
		in.Held = true
		in.LinkCount = int(l.st.nlink)
		in.Expires = l.st.mtime
		in.Expired = now.After(l.st.mtime)
		in.Breakable = now.After(l.st.mtime.Add(o.Slop))
		in.LastTouched = l.st.ctime
		switch {
		case !l.st.btime.IsZero():
			in.HeldSince, in.HeldSinceSource = l.st.btime, SinceBirth
		case !l.st.ctime.IsZero():
			in.HeldSince, in.HeldSinceSource = l.st.ctime, SinceChange
		}
		if l.kind == kLock {
			in.HolderHost, in.HolderPID, in.Naming = l.claim.Host, l.claim.PID, l.claim.Naming
			in.ClaimPath = filepath.Join(dir, l.holder)
			in.HolderOnThisHost = o.isLocal(l.claim.Host)
			in.HolderDeadOnThisHost = in.HolderOnThisHost && !o.PIDAlive(l.claim.PID)
		} else {
			problems = append(problems, "content is not a claim of this lock")
		}
		if l.st.nlink != 2 {
			problems = append(problems, fmt.Sprintf("link count %d, want 2", l.st.nlink))
		}
	}
	for _, c := range g.claims {
		if g.lock != nil && sameFile(c.st, g.lock.st) {
			holderFound = true
			continue
		}
		orphan := now.After(c.st.mtime.Add(o.OrphanAfter)) ||
			(o.isLocal(c.claim.Host) && !o.PIDAlive(c.claim.PID))
		switch {
		case orphan:
			in.OrphanedClaims++
		case c.claim.Op != "":
			// a break or release in flight
		case c.st.nlink == 1:
			in.Waiters++
		}
	}
	if in.Held && g.lock.kind == kLock && !holderFound {
		problems = append(problems, "the holder's claim file is missing")
	}
	in.Anomaly = strings.Join(problems, "; ")
	return in
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
