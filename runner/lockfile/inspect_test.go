package lockfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t testing.TB) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true(1) to get a dead pid: %v", err)
	}
	pid := cmd.ProcessState.Pid()
	if pidAlive(pid) {
		t.Skipf("pid %d of an exited process is already reused", pid)
	}
	return pid
}

// plant writes a claim file named name (in dir) holding its own path, with the given mtime,
// and links it to lock when lock is not empty: a lock as another program would leave it.
func plant(t testing.TB, dir, name, lock string, mtime time.Time) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if lock != "" {
		if err := os.Link(p, filepath.Join(dir, lock)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestInspectHeldLock(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "L")
	a := newTestLock(t, path, clk, nil)
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	opts := InspectOptions{LocalHosts: []string{"node-a.example.com"}}
	in, err := Inspect(path, now, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{
		Path: path, Held: true, HolderHost: "node-a", HolderPID: os.Getpid(), ClaimPath: a.ClaimPath(),
		Naming: Flufl, Expires: now.Add(DefaultLifetime), LinkCount: 2,
		HolderOnThisHost: true, // "node-a" is the unqualified "node-a.example.com"
	}
	got := in
	got.HeldSince, got.HeldSinceSource, got.LastTouched = time.Time{}, "", time.Time{}
	got.Expires = got.Expires.UTC()
	if got != want {
		t.Errorf("Inspect =\n %+v\nwant\n %+v", got, want)
	}
	if in.HeldSince.IsZero() || (in.HeldSinceSource != SinceBirth && in.HeldSinceSource != SinceChange) {
		t.Errorf("HeldSince %v from %q", in.HeldSince, in.HeldSinceSource)
	}
	// The real clock stamped birth/change times; they must be recent.
	if d := time.Since(in.HeldSince); d < -time.Minute || d > time.Minute {
		t.Errorf("HeldSince %v is not about now", in.HeldSince)
	}

	// Expiry as seen at later times.
	for _, tc := range []struct {
		at                 time.Duration
		expired, breakable bool
	}{
		{DefaultLifetime, false, false},
		{DefaultLifetime + time.Second, true, false},
		{DefaultLifetime + DefaultSlop, true, false},
		{DefaultLifetime + DefaultSlop + time.Second, true, true},
	} {
		in, err := Inspect(path, now.Add(tc.at), opts)
		if err != nil || in.Expired != tc.expired || in.Breakable != tc.breakable {
			t.Errorf("at +%s: Expired %v Breakable %v (%v), want %v %v", tc.at, in.Expired, in.Breakable, err, tc.expired, tc.breakable)
		}
	}
	// A lock that does not exist.
	in, err = Inspect(filepath.Join(dir, "nope"), now, opts)
	if err != nil || in.Held || in.Path != filepath.Join(dir, "nope") {
		t.Errorf("Inspect of a missing lock = %+v, %v", in, err)
	}
	if _, err := Inspect(filepath.Join(dir, "no-such-dir", "L"), now, opts); err == nil {
		t.Error("Inspect in a missing directory: no error")
	}
}

func TestInspectWaitersAndOrphans(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Truncate(time.Second)
	dead := deadPID(t)
	self := os.Getpid()
	plant(t, dir, "L|here|"+strconv.Itoa(self)+"|1", "L", now.Add(15*time.Second))          // holder: us
	plant(t, dir, "L|here|"+strconv.Itoa(self)+"|2", "", now.Add(15*time.Second))           // waiter, local, alive
	plant(t, dir, "L|there.example.com|42|3", "", now.Add(5*time.Second))                   // waiter, remote, recent
	plant(t, dir, "L|here|"+strconv.Itoa(dead)+"|4", "", now.Add(15*time.Second))           // orphan: local, dead
	plant(t, dir, "L|there.example.com|43|5", "", now.Add(-DefaultOrphanAfter-time.Second)) // orphan: remote, very old
	plant(t, dir, "L|here|"+strconv.Itoa(dead)+"|6|break", "", now)                         // orphaned temporary
	plant(t, dir, "L|here|"+strconv.Itoa(self)+"|7|release", "", now)                       // temporary in flight: neither
	plant(t, dir, "Lother|here|"+strconv.Itoa(dead)+"|8", "", now)                          // another lock's claim
	in, err := Inspect(filepath.Join(dir, "L"), now, InspectOptions{LocalHosts: []string{"here"}})
	if err != nil {
		t.Fatal(err)
	}
	if !in.Held || in.HolderHost != "here" || in.HolderPID != self || in.Waiters != 2 || in.OrphanedClaims != 3 ||
		!in.HolderOnThisHost || in.HolderDeadOnThisHost || in.Anomaly != "" {
		t.Errorf("Inspect = %+v\nwant held by here/%d, 2 waiters, 3 orphaned claims, no anomaly", in, self)
	}
}

func TestInspectHolderDeadOnThisHost(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	dead := deadPID(t)
	plant(t, dir, "L|here|"+strconv.Itoa(dead)+"|1", "L", now.Add(time.Minute))
	in, err := Inspect(filepath.Join(dir, "L"), now, InspectOptions{LocalHosts: []string{"here"}})
	if err != nil {
		t.Fatal(err)
	}
	if !in.HolderDeadOnThisHost || in.Expired || in.Breakable {
		t.Errorf("Inspect = %+v, want HolderDeadOnThisHost, not expired", in)
	}
	// The same lock seen from another host: its pid means nothing here.
	in, _ = Inspect(filepath.Join(dir, "L"), now, InspectOptions{LocalHosts: []string{"elsewhere"}})
	if in.HolderDeadOnThisHost || in.HolderOnThisHost {
		t.Errorf("from another host: %+v", in)
	}
}

func TestInspectMailman21(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Truncate(time.Second)
	// A list lock held by a host with a dotted name, one waiter, and mailmanctl's master lock
	// after its fork hand-over ("<lock>.<host>.<pid>", no counter).
	holder := plant(t, dir, "mylist.lock.web1.example.com.4242.0", "mylist.lock", now.Add(5*time.Minute))
	plant(t, dir, "mylist.lock.web2.example.com.777.3", "", now.Add(5*time.Minute))
	plant(t, dir, "master-qrunner.web1.4243", "master-qrunner", now.Add(30*time.Hour))
	opts := InspectOptions{LocalHosts: []string{"web9"}, PIDAlive: func(int) bool { return true }}

	in, err := Inspect(filepath.Join(dir, "mylist.lock"), now, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !in.Held || in.Naming != Mailman21 || in.HolderHost != "web1.example.com" || in.HolderPID != 4242 ||
		in.ClaimPath != holder || in.Waiters != 1 || in.OrphanedClaims != 0 || in.Anomaly != "" ||
		!in.Expires.Equal(now.Add(5*time.Minute)) {
		t.Errorf("mylist.lock: %+v", in)
	}
	in, err = Inspect(filepath.Join(dir, "master-qrunner"), now, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !in.Held || in.Naming != Mailman21 || in.HolderHost != "web1" || in.HolderPID != 4243 || in.Anomaly != "" {
		t.Errorf("master-qrunner: %+v", in)
	}
}

// A Lock can take Mailman 2.1 names itself (optional), and inspection reads them back.
func TestMailman21NamingLockInspected(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "biglist.lock")
	a := newTestLock(t, path, clk, func(o *Options) { o.Naming = Mailman21; o.Host = "mail.example.org" })
	b := newTestLock(t, path, clk, func(o *Options) { o.Naming = Mailman21; o.Host = "mx2.example.org" })
	if _, err := a.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(); ok || err != nil {
		t.Fatalf("b.TryLock = %v, %v", ok, err)
	}
	in, err := Inspect(path, clk.Now(), InspectOptions{LocalHosts: []string{"mx2"}})
	if err != nil {
		t.Fatal(err)
	}
	if in.Naming != Mailman21 || in.HolderHost != "mail.example.org" || in.HolderPID != os.Getpid() || in.ClaimPath != a.ClaimPath() {
		t.Errorf("Inspect = %+v", in)
	}
}

func TestScanDir(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Truncate(time.Second)
	dead := deadPID(t)
	opts := InspectOptions{LocalHosts: []string{"here"}}
	j := func(n string) string { return filepath.Join(dir, n) }
	// Locks of both namings.
	plant(t, dir, "a|here|"+strconv.Itoa(os.Getpid())+"|1", "a", now.Add(time.Minute))
	plant(t, dir, "b.lock.there.9.0", "b.lock", now.Add(-time.Minute))
	// A claim-only leftover: its lock is gone.
	plant(t, dir, "gone|here|"+strconv.Itoa(dead)+"|2", "", now)
	// A lock whose holder's claim was removed (link count 1).
	claim := plant(t, dir, "c|there|5|3", "c", now.Add(time.Minute))
	if err := os.Remove(claim); err != nil {
		t.Fatal(err)
	}
	// A lock with garbage content that a waiter's claim points at.
	if err := os.WriteFile(j("d"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	plant(t, dir, "d|there|6|4", "", now)
	// Junk: text, empty, big, a directory, a symlink to a lock, a FIFO, a self-named non-claim.
	for name, content := range map[string]string{
		"README": "not a lock", "empty": "", "big": strings.Repeat("x", 10000), "self": j("self"),
	} {
		if err := os.WriteFile(j(name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(j("subdir|x|1|2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(j("a"), j("link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(j("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)

	infos, errs := ScanDir(context.Background(), dir, now, opts)
	if len(errs) != 0 {
		t.Fatalf("ScanDir errors: %v", errs)
	}
	got := map[string]Info{}
	var paths []string
	for _, in := range infos {
		got[in.Path] = in
		paths = append(paths, filepath.Base(in.Path))
	}
	if want := []string{"a", "b.lock", "c", "d", "gone"}; !slices.Equal(paths, want) {
		t.Fatalf("ScanDir found %q, want %q", paths, want)
	}
	if in := got[j("a")]; !in.Held || in.HolderHost != "here" || in.Naming != Flufl || in.Anomaly != "" || in.Expired {
		t.Errorf("a: %+v", in)
	}
	if in := got[j("b.lock")]; !in.Held || in.HolderHost != "there" || in.HolderPID != 9 || in.Naming != Mailman21 || !in.Expired || !in.Breakable {
		t.Errorf("b.lock: %+v", in)
	}
	if in := got[j("gone")]; in.Held || in.OrphanedClaims != 1 || in.Waiters != 0 {
		t.Errorf("gone: %+v", in)
	}
	if in := got[j("c")]; !in.Held || in.LinkCount != 1 || !strings.Contains(in.Anomaly, "link count 1") || !strings.Contains(in.Anomaly, "claim file is missing") {
		t.Errorf("c: %+v", in)
	}
	if in := got[j("d")]; !in.Held || in.Waiters != 1 || !strings.Contains(in.Anomaly, "not a claim") {
		t.Errorf("d: %+v", in)
	}
	if after := snapshot(t, dir); !slices.Equal(before, after) {
		t.Errorf("ScanDir modified the directory:\nbefore %q\nafter  %q", before, after)
	}
}

func TestScanDirVanishedAndFailingFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	for _, n := range []string{"a", "b", "c"} {
		plant(t, dir, n+"|h|1|1", n, now.Add(time.Minute))
	}
	boom := errors.New("injected I/O error")
	opts := InspectOptions{beforeFile: func(p string) error {
		switch filepath.Base(p) {
		case "a", "a|h|1|1": // a lock released between the listing and the look
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				return err
			}
		case "b":
			return boom
		}
		return nil
	}}
	infos, errs := ScanDir(context.Background(), dir, now, opts)
	if len(errs) != 1 || !errors.Is(errs[0], boom) || !strings.Contains(errs[0].Error(), filepath.Join(dir, "b")) {
		t.Errorf("errors = %v, want one naming %s", errs, filepath.Join(dir, "b"))
	}
	var names []string
	for _, in := range infos {
		names = append(names, filepath.Base(in.Path))
	}
	// a vanished entirely; b's lock file failed but its claim still shows the lock; c is intact.
	if !slices.Equal(names, []string{"b", "c"}) {
		t.Errorf("infos for %q, want b and c", names)
	}
	if _, errs := ScanDir(context.Background(), filepath.Join(dir, "missing"), now, InspectOptions{}); len(errs) != 1 {
		t.Errorf("ScanDir of a missing directory: %v", errs)
	}
}

// TestScanDirStopsWithItsContext: a scan past its budget returns no partial view, and says why.
func TestScanDirStopsWithItsContext(t *testing.T) {
	dir := t.TempDir()
	for i := range 600 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("lock%03d", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	infos, errs := ScanDir(ctx, dir, time.Now(), InspectOptions{})
	if len(infos) != 0 || len(errs) != 1 || !errors.Is(errs[0], context.Canceled) || !strings.Contains(errs[0].Error(), "stopped after 0 of 600 entries") {
		t.Fatalf("ScanDir with an ended context: %d infos, errors %v", len(infos), errs)
	}
}

func TestParseClaimNames(t *testing.T) {
	for _, tc := range []struct {
		base string
		want claimName
		ok   bool
	}{
		{"L|host.example.com|123|9223372036854775807", claimName{"L", "host.example.com", 123, "9223372036854775807", Flufl, ""}, true},
		{"L|h|123|5|break", claimName{"L", "h", 123, "5", Flufl, opBreak}, true},
		{"L|h|123|5|other", claimName{}, false},
		{"L|h|x|5", claimName{}, false},
		{"L|h|0|5", claimName{}, false},
		{"L||1|5", claimName{}, false},
		{"L|h|1", claimName{}, false},
		{"plain", claimName{}, false},
	} {
		got, ok := parseFlufl(tc.base)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseFlufl(%q) = %+v, %v; want %+v, %v", tc.base, got, ok, tc.want, tc.ok)
		}
	}
	for _, tc := range []struct {
		base, lock string
		want       claimName
		ok         bool
	}{
		{"x.lock.h.1.2", "x.lock", claimName{"x.lock", "h", 1, "2", Mailman21, ""}, true},
		{"x.lock.a.b.c.1.2", "x.lock", claimName{"x.lock", "a.b.c", 1, "2", Mailman21, ""}, true},
		{"m.web1.77", "m", claimName{"m", "web1", 77, "", Mailman21, ""}, true},
		{"m.77", "m", claimName{}, false},
		{"m.h.x", "m", claimName{}, false},
		{"other.h.1.2", "m", claimName{}, false},
	} {
		got, ok := parseMailman(tc.base, tc.lock)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseMailman(%q, %q) = %+v, %v; want %+v, %v", tc.base, tc.lock, got, ok, tc.want, tc.ok)
		}
	}
	for _, tc := range []struct {
		base  string
		known []string
		lock  string
	}{
		{"list.lock.web1.example.com.5.0", nil, "list.lock"},
		{"master-qrunner.web1.example.com.5.0", nil, "master-qrunner"},
		{"a.b.web1.5.0", []string{"a", "a.b"}, "a.b"},
		{"a.b.web1.5.0", []string{"a"}, "a"},
	} {
		known := map[string]bool{}
		for _, k := range tc.known {
			known[k] = true
		}
		got, ok := parseMailmanGuess(tc.base, known)
		if !ok || got.Lock != tc.lock {
			t.Errorf("parseMailmanGuess(%q, %v) = %+v, %v; want lock %q", tc.base, tc.known, got, ok, tc.lock)
		}
	}
	// Round trip of our own names.
	for _, c := range []claimName{
		{Lock: "L", Host: "h.example.com", PID: 12, Tag: "34", Naming: Flufl},
		{Lock: "L.lock", Host: "h.example.com", PID: 12, Tag: "34", Naming: Mailman21},
	} {
		var got claimName
		var ok bool
		if c.Naming == Flufl {
			got, ok = parseFlufl(c.format())
		} else {
			got, ok = parseMailman(c.format(), c.Lock)
		}
		if !ok || got != c {
			t.Errorf("round trip of %+v via %q = %+v, %v", c, c.format(), got, ok)
		}
	}
}

// snapshot lists every entry of dir with its size, times and link count, to prove that
// inspection changes nothing.
func snapshot(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	for _, n := range dirNames(t, dir) {
		st, err := statxPath(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n+" "+st.mtime.String()+" "+st.ctime.String()+" "+strconv.Itoa(int(st.nlink))+" "+strconv.Itoa(int(st.size)))
	}
	return out
}
