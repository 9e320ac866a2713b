package sim

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/consultest"
)

var update = flag.Bool("update", false, "rewrite testdata/crosscheck/*.golden from the model's transcripts")

// The cross-check: each scenario is a short script of the Consul operations qslice relies on
// (TTL checks, sessions bound to them, lock transactions, releases, blocking queries, a restart
// that loses the state). It runs once on the simulator's model of Consul (virtual time) and
// once on a real Consul 1.13.9 agent (real time), and each run writes a transcript of the
// outcomes: granted or refused and why, who holds a key, how LockIndex and ModifyIndex moved,
// whether a blocking query woke. Both transcripts must equal the golden file of the scenario
// (testdata/crosscheck/<name>.golden), so the model cannot drift from what Consul does. The
// golden files come from the model (-update) and are checked against Consul; timings are
// checked as bounds (a lock freed by a TTL no sooner than the TTL after the last pass, granted
// again no sooner than TTL + lock-delay), not written.
var crossScenarios = []struct {
	name string
	run  func(x *xrun)
}{
	{"ttl-expiry-lock-delay", scenarioTTLExpiry},
	{"check-index", scenarioCheckIndex},
	{"indexes", scenarioIndexes},
	{"session-destroy", scenarioSessionDestroy},
	{"blocking-query", scenarioBlockingQuery},
	{"restart", scenarioRestart},
	{"state-loss", scenarioStateLoss}, // last: it wipes the real Consul
}

// A node's check outlives every scenario unless the scenario lets it lapse.
const longTTL = 10 * time.Minute

// scenarioTTLExpiry: a session bound to a TTL check ends when the check is not passed for the
// TTL; its lock is released (the value stays) and the key refuses a new holder for the
// lock-delay; a session cannot be created on a critical check.
func scenarioTTLExpiry(x *xrun) {
	ttl, ld := 3*time.Second, 3*time.Second
	x.node("b", longTTL)
	x.node("a", ttl)
	x.session("sa", "a", ld)
	x.session("sb", "b", ld)
	x.acquire("sb", 0, checkNotExists) // b holds k0 all along: a's end must not touch it
	x.pass("a")                        // from here a's check lapses after ttl
	x.acquire("sa", 1, checkNotExists)
	x.acquire("sb", 1, checkLastRead)
	x.waitReleased(1, "a", ttl)
	x.sessionState("sa")
	x.read(0)
	x.session("sa2", "a", ld) // a's check is critical now
	x.acquire("sb", 1, checkLastRead)
	x.acquireEventually("sb", 1, x.passed["a"], ttl+ld)
}

// scenarioCheckIndex: the check of an acquisition makes the snapshot it was planned on exact:
// check-not-exists on an existing key and check-index on an old ModifyIndex fail as stale, not
// as held; an explicit release has no lock-delay; a release by a non-holder finds the lock gone.
func scenarioCheckIndex(x *xrun) {
	x.node("a", longTTL)
	x.node("b", longTTL)
	x.session("sa", "a", 5*time.Second)
	x.session("sb", "b", 5*time.Second)
	x.acquire("sa", 0, checkNotExists)
	x.acquire("sb", 0, checkNotExists)
	x.acquire("sb", 0, checkOlder)
	x.acquire("sb", 0, checkLastRead)
	x.release("sa", 0)
	x.acquire("sb", 0, checkOlder)
	x.acquire("sb", 0, checkLastRead)
	x.release("sa", 0)
	x.read(0)
}

// scenarioIndexes: ModifyIndex grows with every write of a key and only then (the fencing token
// of a later acquisition is larger); LockIndex grows when a different session takes the lock,
// not when its holder takes it again or releases it.
func scenarioIndexes(x *xrun) {
	x.node("a", longTTL)
	x.node("b", longTTL)
	x.session("sa", "a", time.Second)
	x.session("sb", "b", time.Second)
	x.acquire("sa", 0, checkNotExists)
	x.acquire("sa", 1, checkNotExists)
	x.acquire("sa", 0, checkLastRead)
	x.release("sa", 0)
	x.acquire("sb", 0, checkLastRead)
	x.release("sb", 0)
	x.acquire("sa", 0, checkLastRead)
	x.read(0)
	x.read(1)
}

// scenarioSessionDestroy: destroying a session releases its locks like its end does, with the
// lock-delay; the destroyed session can lock nothing.
func scenarioSessionDestroy(x *xrun) {
	ld := 2 * time.Second
	x.node("a", longTTL)
	x.node("b", longTTL)
	x.session("sa", "a", ld)
	x.session("sb", "b", ld)
	x.acquire("sa", 0, checkNotExists)
	x.acquire("sa", 1, checkNotExists)
	x.release("sa", 1)
	destroyed := x.b.now()
	x.destroy("sa")
	x.sessionState("sa")
	x.read(0)
	x.read(1)
	x.acquire("sa", 1, checkLastRead)
	x.acquire("sb", 1, checkLastRead) // released explicitly before: no lock-delay
	x.acquire("sb", 0, checkLastRead) // freed by the destroy: lock-delay
	x.acquireEventually("sb", 0, destroyed, ld)
}

// scenarioBlockingQuery: a blocking query on the prefix wakes when a key under it changes and
// not for a refused lock, a stale check or a new session.
func scenarioBlockingQuery(x *xrun) {
	x.node("a", longTTL)
	x.node("b", longTTL)
	x.session("sa", "a", time.Second)
	x.acquire("sa", 0, checkNotExists)
	x.blockingQuery() // nothing changed since the last read
	x.session("sb", "b", time.Second)
	x.acquire("sb", 0, checkLastRead)
	x.acquire("sb", 0, checkNotExists)
	x.blockingQuery()
	x.release("sa", 0)
	x.blockingQuery()
	x.acquire("sb", 0, checkLastRead)
	x.blockingQuery()
}

// scenarioRestart: a Consul that restarts with its state keeps keys, sessions, locks and
// indexes; a check passed within its TTL is still passing (the agent restores its status), so
// the sessions bound to it live on. The model's Consul restart is only a time without answers.
func scenarioRestart(x *xrun) {
	x.node("a", longTTL)
	x.node("b", longTTL)
	x.session("sa", "a", time.Second)
	x.session("sb", "b", time.Second)
	x.acquire("sa", 0, checkNotExists)
	x.pass("a") // as the keeper does every renew interval: the agent persists the status
	x.pass("b")
	x.list()
	x.restart()
	x.blockingQuery()
	x.read(0)
	x.sessionState("sa")
	x.acquire("sb", 0, checkLastRead)
	x.release("sa", 0)
	x.acquire("sb", 0, checkLastRead)
}

// scenarioStateLoss: a Consul that restarts without its state (dev mode) has no keys and no
// sessions; its index starts again lower, so a blocking query with the old index answers at
// once with a lower one, and the fencing token of a new lock is below the old ones.
func scenarioStateLoss(x *xrun) {
	x.node("a", longTTL)
	x.session("sa", "a", time.Second)
	x.acquire("sa", 0, checkNotExists)
	for i := 0; i < 15; i++ { // raise the index well above a fresh Consul's
		x.quiet(func() { x.release("sa", 0); x.acquire("sa", 0, checkLastRead) })
	}
	x.read(0)
	x.list()
	old := x.watch
	x.loseState()
	x.blockingQuery() // from the index before the loss: waits its full time
	x.read(0)
	x.sessionState("sa")
	x.node("a", longTTL) // the agent registers its checks again
	x.session("sa2", "a", time.Second)
	x.acquire("sa2", 0, checkNotExists)
	x.watch = old
	x.blockingQuery() // a write below the old index does not end the wait
	x.list()          // a read without an index answers at once
}

// TestModelMatchesConsul runs every scenario on the model and on a real Consul; both must
// give the golden transcript. Without a Consul binary the real half skips (CI has one).
func TestModelMatchesConsul(t *testing.T) {
	for _, sc := range crossScenarios {
		t.Run("model/"+sc.name, func(t *testing.T) {
			got := runScenario(t, newModelBackend(), sc.run)
			path := filepath.Join("testdata", "crosscheck", sc.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			compareGolden(t, path, got, "the model")
		})
	}
	t.Run("consul", func(t *testing.T) {
		srv := consultest.Start(t, consultest.WithLogLevel("warn"))
		start := time.Now()
		for _, sc := range crossScenarios {
			t.Run(sc.name, func(t *testing.T) {
				b := newRealBackend(t, srv, "qslice-xcheck/"+sc.name+"/")
				got := runScenario(t, b, sc.run)
				compareGolden(t, filepath.Join("testdata", "crosscheck", sc.name+".golden"), got, "Consul "+b.version)
			})
		}
		t.Logf("%d scenarios on Consul in %s", len(crossScenarios), time.Since(start).Round(time.Millisecond))
	})
}

// TestCrossCheckCatchesADriftedModel: a model whose lock-delay does not hold (as if Consul let
// a new holder in at once after a session ends) gives another transcript: the comparison can fail.
func TestCrossCheckCatchesADriftedModel(t *testing.T) {
	b := newModelBackend()
	b.noLockDelay = true
	got := runScenario(t, b, scenarioTTLExpiry)
	want, err := os.ReadFile(filepath.Join("testdata", "crosscheck", "ttl-expiry-lock-delay.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if got == string(want) {
		t.Fatal("a model without lock-delay gives the golden transcript: the cross-check cannot see drift")
	}
}

func compareGolden(t *testing.T, path, got, who string) {
	t.Helper()
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./failover/sim -run TestModelMatchesConsul/model -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n%s", who, path, lineDiff(string(want), got))
	}
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		mark := "  "
		if wl != gl {
			mark = "! "
		}
		fmt.Fprintf(&b, "%sgolden: %s\n%s   got: %s\n", mark, wl, mark, gl)
	}
	return b.String()
}

// backend is what a scenario drives: the model or a real Consul. Keys are slice indexes of one
// queue; nodes and sessions are the scenario's names.
type backend interface {
	registerNode(node string, ttl time.Duration) error
	pass(node string) error
	createSession(node string, lockDelay time.Duration) (string, error)
	destroySession(id string) error
	sessionExists(id string) (bool, error)
	// acquire runs check + lock + get; why is "" when granted, else a refused* constant.
	acquire(key int, session string, exists bool, checkIndex uint64, value failover.LockValue) (res failover.EvAcquireResult, why string, err error)
	// release runs unlock + get; gone when the session did not hold the key.
	release(key int, session string, value failover.LockValue) (gone bool, err error)
	read(key int) (e failover.KVEntry, ok bool, err error)
	// list reads the prefix: its index, as a watch's first answer.
	list() (index uint64, err error)
	// block is a blocking query on the prefix from index: it returns the new index, and whether
	// it answered before its wait ended (woke).
	block(index uint64) (newIndex uint64, woke bool, err error)
	loseState()
	restart()
	// now is the backend's time; pause lets time pass (the model advances, Consul is polled).
	now() time.Time
	pause(d time.Duration)
}

type checkMode int

const (
	checkNotExists checkMode = iota // check-not-exists
	checkLastRead                   // check-index with the ModifyIndex last seen
	checkOlder                      // check-index with an older ModifyIndex
)

func (m checkMode) String() string {
	return [...]string{"check-not-exists", "check-index = last read", "check-index < last read"}[m]
}

// xrun runs one scenario on one backend and writes its transcript.
type xrun struct {
	t        *testing.T
	b        backend
	lines    []string
	silent   bool
	sessions map[string]string    // scenario name -> id
	nodeOf   map[string]string    // session name -> node
	seen     map[int]uint64       // key -> ModifyIndex last read
	older    map[int]uint64       // key -> a ModifyIndex before that
	lockIdx  map[int]uint64       // key -> LockIndex last read
	passed   map[string]time.Time // node -> last pass (registration)
	watch    uint64               // index of the last list or blocking answer
	high     uint64               // highest index seen
}

func runScenario(t *testing.T, b backend, f func(*xrun)) string {
	x := &xrun{t: t, b: b, sessions: map[string]string{}, nodeOf: map[string]string{}, seen: map[int]uint64{}, older: map[int]uint64{},
		lockIdx: map[int]uint64{}, passed: map[string]time.Time{}}
	f(x)
	return strings.Join(x.lines, "\n") + "\n"
}

func (x *xrun) logf(format string, args ...any) {
	if !x.silent {
		x.lines = append(x.lines, fmt.Sprintf(format, args...))
	}
}

func (x *xrun) quiet(f func()) {
	x.silent = true
	defer func() { x.silent = false }()
	f()
}

func (x *xrun) must(err error, what string) {
	if err != nil {
		x.t.Fatalf("%s: %v", what, err)
	}
}

func (x *xrun) saw(idx uint64) { x.high = max(x.high, idx) }

// node registers n with a TTL check, passing. Times of passes are taken before the call: the
// check's TTL runs from a later instant, so a lower bound measured from it holds.
func (x *xrun) node(n string, ttl time.Duration) {
	at := x.b.now()
	x.must(x.b.registerNode(n, ttl), "register "+n)
	x.passed[n] = at
	x.logf("node %s: check passing", n)
}

func (x *xrun) pass(n string) {
	at := x.b.now()
	x.must(x.b.pass(n), "pass "+n)
	x.passed[n] = at
	x.logf("node %s: check passed", n)
}

// list reads the prefix without an index (it answers at once).
func (x *xrun) list() {
	idx, err := x.b.list()
	x.must(err, "list")
	rel := "first read"
	switch {
	case x.watch == 0:
	case idx > x.watch:
		rel = "index grew"
	case idx < x.watch:
		rel = "index went backwards"
	default:
		rel = "index unchanged"
	}
	x.watch = idx
	x.saw(idx)
	x.logf("list the prefix: %s", rel)
}

func (x *xrun) session(name, node string, lockDelay time.Duration) {
	id, err := x.b.createSession(node, lockDelay)
	if err != nil {
		x.logf("session %s on %s: refused", name, node)
		x.t.Logf("session %s on %s: %v", name, node, err)
		return
	}
	x.sessions[name], x.nodeOf[name] = id, node
	x.logf("session %s on %s: created", name, node)
}

func (x *xrun) sessionState(name string) {
	ok, err := x.b.sessionExists(x.sessions[name])
	x.must(err, "read session")
	x.logf("session %s: %s", name, map[bool]string{true: "exists", false: "gone"}[ok])
}

func (x *xrun) destroy(name string) {
	x.must(x.b.destroySession(x.sessions[name]), "destroy "+name)
	x.logf("session %s: destroyed", name)
}

func (x *xrun) acquire(name string, key int, mode checkMode) bool {
	idx := uint64(0)
	switch mode {
	case checkLastRead:
		idx = x.seen[key]
	case checkOlder:
		idx = x.older[key]
	}
	res, why, err := x.b.acquire(key, x.sessions[name], mode != checkNotExists, idx, failover.LockValue{Node: x.nodeOf[name]})
	x.must(err, "acquire")
	if !res.Granted {
		x.logf("acquire k%d by %s (%s): refused, %s", key, name, mode, why)
		return false
	}
	x.logf("acquire k%d by %s (%s): granted, lock index %s, token %s", key, name, mode, x.lockRel(key, res.LockIndex), x.tokenRel(key, res.Token))
	x.note(key, res.Token, res.LockIndex)
	return true
}

// acquireEventually retries every 100 ms until granted; it must not be granted before bound has
// passed since since (the end of the previous holder's session is at or after it).
func (x *xrun) acquireEventually(name string, key int, since time.Time, bound time.Duration) {
	start := x.b.now()
	for {
		if x.b.now().Sub(start) > bound+20*time.Second {
			x.t.Fatalf("k%d not granted to %s within %s", key, name, bound+20*time.Second)
		}
		var granted bool
		x.quiet(func() { x.readQuiet(key); granted = x.acquire(name, key, checkLastRead) })
		if granted {
			break
		}
		x.b.pause(100 * time.Millisecond)
	}
	verdict := "granted once the lock-delay passed"
	if el := x.b.now().Sub(since); el < bound {
		verdict = "granted BEFORE the lock-delay passed"
		x.t.Logf("k%d granted %s after the reference, before the bound %s", key, el, bound)
	}
	x.logf("acquire k%d by %s, retried until granted: %s, lock index %d", key, name, verdict, x.lockIdx[key])
}

func (x *xrun) release(name string, key int) {
	gone, err := x.b.release(key, x.sessions[name], failover.LockValue{Node: x.nodeOf[name], Reason: failover.ReasonFailback})
	x.must(err, "release")
	if gone {
		x.logf("release k%d by %s: not the holder", key, name)
		return
	}
	x.logf("release k%d by %s: released", key, name)
	x.readQuiet(key)
}

// waitReleased polls the key until no session holds it: node's check was not passed for its
// TTL. Not sooner than ttl after node's last pass.
func (x *xrun) waitReleased(key int, node string, ttl time.Duration) {
	for {
		e, ok, err := x.b.read(key)
		x.must(err, "read")
		el := x.b.now().Sub(x.passed[node])
		if ok && e.Session == "" {
			verdict := "its check not passed for its TTL"
			if el < ttl {
				verdict = "BEFORE its check's TTL ran out"
				x.t.Logf("k%d released %s after %s's last pass, before its TTL %s", key, el, node, ttl)
			}
			x.logf("k%d: released by the end of %s's session, %s; value kept (node %s), lock index %s, modify index %s",
				key, node, verdict, e.Value.Node, x.lockRel(key, e.LockIndex), x.modRel(key, e.ModifyIndex))
			x.note(key, e.ModifyIndex, e.LockIndex)
			return
		}
		if el > ttl+20*time.Second {
			x.t.Fatalf("k%d still held %s after %s's last pass (TTL %s)", key, el, node, ttl)
		}
		x.b.pause(50 * time.Millisecond)
	}
}

func (x *xrun) read(key int) {
	e, ok, err := x.b.read(key)
	x.must(err, "read")
	if !ok {
		x.logf("k%d: no such key", key)
		return
	}
	holder := "free"
	for name, id := range x.sessions {
		if id == e.Session && id != "" {
			holder = "held by " + name
		}
	}
	if e.Session != "" && holder == "free" {
		holder = "held by an unknown session"
	}
	x.logf("k%d: %s, value node %s reason %q, lock index %s, modify index %s", key, holder, e.Value.Node, e.Value.Reason,
		x.lockRel(key, e.LockIndex), x.modRel(key, e.ModifyIndex))
	x.note(key, e.ModifyIndex, e.LockIndex)
}

func (x *xrun) readQuiet(key int) {
	e, ok, err := x.b.read(key)
	x.must(err, "read")
	if ok {
		x.note(key, e.ModifyIndex, e.LockIndex)
	}
}

func (x *xrun) note(key int, modify, lock uint64) {
	if modify != x.seen[key] {
		x.older[key] = x.seen[key]
	}
	x.seen[key], x.lockIdx[key] = modify, lock
	x.saw(modify)
}

// lockRel says how a LockIndex compares with the last one read for the key.
func (x *xrun) lockRel(key int, v uint64) string {
	last, ok := x.lockIdx[key]
	switch {
	case !ok:
		return fmt.Sprintf("%d", v)
	case v == last:
		return fmt.Sprintf("%d (unchanged)", v)
	case v == last+1:
		return fmt.Sprintf("%d (+1)", v)
	default:
		return fmt.Sprintf("%d (was %d)", v, last)
	}
}

func (x *xrun) modRel(key int, v uint64) string {
	last := x.seen[key]
	switch {
	case v == last:
		return "unchanged"
	case v > last:
		return "grew"
	default:
		return "went backwards"
	}
}

// tokenRel: a new lock's ModifyIndex against every index seen so far.
func (x *xrun) tokenRel(key int, v uint64) string {
	switch {
	case v == x.seen[key]:
		return "unchanged (nothing written)"
	case v > x.high:
		return "above every index seen"
	default:
		return "NOT above every index seen"
	}
}

func (x *xrun) blockingQuery() {
	if x.watch == 0 {
		x.list()
	}
	idx, woke, err := x.b.block(x.watch)
	x.must(err, "blocking query")
	how := "waited its full time"
	if woke {
		how = "woke at once"
	}
	rel := "index unchanged"
	switch {
	case idx > x.watch:
		rel = "index grew"
	case idx < x.watch:
		rel = "index went backwards"
	}
	x.logf("blocking query on the prefix: %s, %s", how, rel)
	x.watch = idx
	// The next query starts from this answer, as a watch does.
}

func (x *xrun) restart() {
	x.b.restart()
	x.logf("Consul restarted with its state")
}

func (x *xrun) loseState() {
	x.b.loseState()
	x.logf("Consul restarted without its state")
}

// modelBackend drives the simulator's Consul model on virtual time.
type modelBackend struct {
	c           *consul
	noLockDelay bool // a deliberately wrong model (TestCrossCheckCatchesADriftedModel)
}

func newModelBackend() *modelBackend {
	return &modelBackend{c: newConsul(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), func(bool) {})}
}

func (b *modelBackend) registerNode(node string, ttl time.Duration) error {
	b.c.pass(node, ttl, memberMeta{})
	return nil
}

func (b *modelBackend) pass(node string) error {
	ch := b.c.checks[node]
	b.c.pass(node, ch.ttl, ch.meta)
	return nil
}

func (b *modelBackend) createSession(node string, lockDelay time.Duration) (string, error) {
	if b.noLockDelay {
		lockDelay = 0
	}
	return b.c.createSession(node, lockDelay)
}

func (b *modelBackend) destroySession(id string) error { b.c.invalidate(id); return nil }

func (b *modelBackend) sessionExists(id string) (bool, error) { return b.c.sessions[id] != nil, nil }

func (b *modelBackend) acquire(key int, session string, exists bool, checkIndex uint64, value failover.LockValue) (failover.EvAcquireResult, string, error) {
	res, why := b.c.acquireWhy(failover.AcquireReq{Move: failover.Move{Slice: xslice(key)}, Session: session, Exists: exists, CheckIndex: checkIndex, Value: value})
	return res, why, nil
}

func (b *modelBackend) release(key int, session string, value failover.LockValue) (bool, error) {
	return b.c.release(failover.ReleaseReq{Slice: xslice(key), Session: session, Value: value}).Gone, nil
}

func (b *modelBackend) read(key int) (failover.KVEntry, bool, error) {
	e, ok := b.c.snapshot().Entries[xslice(key)]
	return e, ok, nil
}

func (b *modelBackend) list() (uint64, error) { return b.c.snapshot().Index, nil }

func (b *modelBackend) block(index uint64) (uint64, bool, error) {
	if b.c.blockingAnswers(index) {
		return b.c.snapshot().Index, true, nil
	}
	b.pause(time.Second) // its wait: nothing changes meanwhile in a scenario
	return b.c.snapshot().Index, false, nil
}

func (b *modelBackend) loseState() { b.c.loseState() }

// restart is the model's Consul restart: a few seconds without answers, nothing lost.
func (b *modelBackend) restart() {
	b.c.downUntil = b.c.now.Add(3 * time.Second)
	b.pause(3 * time.Second)
}

func (b *modelBackend) now() time.Time { return b.c.now }

func (b *modelBackend) pause(d time.Duration) {
	b.c.now = b.c.now.Add(d)
	b.c.expire()
}

func xslice(key int) failover.SliceID { return failover.SliceID{Queue: "q", Index: key} }

// realBackend drives a real Consul agent, the way the Consul driver does (service TTL check,
// session bound to serfHealth and it with behavior release, the same transactions).
type realBackend struct {
	t       *testing.T
	srv     *consultest.Server
	c       *api.Client
	prefix  string
	version string
	wait    time.Duration // of a blocking query
}

func newRealBackend(t *testing.T, srv *consultest.Server, prefix string) *realBackend {
	b := &realBackend{t: t, srv: srv, c: srv.Client(srv.ManagementToken), prefix: prefix, wait: time.Second}
	if self, err := b.c.Agent().Self(); err == nil {
		b.version, _ = self["Config"]["Version"].(string)
	}
	return b
}

func (b *realBackend) key(k int) string { return fmt.Sprintf("%sslices/q/%d", b.prefix, k) }

func (b *realBackend) checkID(node string) string {
	return "xcheck-" + strings.ReplaceAll(strings.TrimSuffix(b.prefix, "/"), "/", "-") + "-" + node + ":alive"
}

func (b *realBackend) registerNode(node string, ttl time.Duration) error {
	id := b.checkID(node)
	err := b.c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: strings.TrimSuffix(id, ":alive"), Name: "qslice-xcheck",
		Checks: api.AgentServiceChecks{{CheckID: id, Name: "alive", TTL: ttl.String(), Status: api.HealthPassing}}})
	if err != nil {
		return err
	}
	// Sessions need the check in the catalog: the agent syncs it at once, but not synchronously.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		checks, _, err := b.c.Health().Checks("qslice-xcheck", (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.CheckID == id && c.Status == api.HealthPassing {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("check %s not passing in the catalog: %w", id, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (b *realBackend) pass(node string) error {
	return b.c.Agent().UpdateTTL(b.checkID(node), "ok", api.HealthPassing)
}

func (b *realBackend) createSession(node string, lockDelay time.Duration) (string, error) {
	id, _, err := b.c.Session().Create(&api.SessionEntry{Name: "xcheck-" + node, LockDelay: lockDelay, Behavior: api.SessionBehaviorRelease,
		NodeChecks: []string{"serfHealth"}, ServiceChecks: []api.ServiceCheck{{ID: b.checkID(node)}}}, nil)
	return id, err
}

func (b *realBackend) destroySession(id string) error {
	_, err := b.c.Session().Destroy(id, nil)
	return err
}

func (b *realBackend) sessionExists(id string) (bool, error) {
	se, _, err := b.c.Session().Info(id, &api.QueryOptions{RequireConsistent: true})
	return se != nil, err
}

func (b *realBackend) acquire(key int, session string, exists bool, checkIndex uint64, value failover.LockValue) (failover.EvAcquireResult, string, error) {
	var res failover.EvAcquireResult
	check := &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: b.key(key)}
	if exists {
		check = &api.KVTxnOp{Verb: api.KVCheckIndex, Key: b.key(key), Index: checkIndex}
	}
	body, _ := json.Marshal(value)
	ok, resp, _, err := b.c.KV().Txn(api.KVTxnOps{check, {Verb: api.KVLock, Key: b.key(key), Value: body, Session: session}, {Verb: api.KVGet, Key: b.key(key)}}, nil)
	if err != nil {
		return res, "", err
	}
	if !ok {
		var whats []string
		why := ""
		for _, e := range resp.Errors { // Consul reports every op that failed; a failed check makes it stale, as for the driver
			whats = append(whats, fmt.Sprintf("op %d: %s", e.OpIndex, e.What))
			switch {
			case why == refusedStale:
			case e.OpIndex == 0:
				why = refusedStale
			case strings.Contains(e.What, "lock delay"):
				why = refusedDelay
			case strings.Contains(e.What, "invalid session"):
				why = refusedSession
			case strings.Contains(e.What, "already held"):
				why = refusedHeld
			}
		}
		if why == "" {
			why = "unclassified: " + strings.Join(whats, "; ")
		}
		b.t.Logf("k%d: Consul refused the lock: %s", key, strings.Join(whats, "; "))
		return res, why, nil
	}
	// The get's result is the last: a check-not-exists yields none (there is no entry), a
	// check-index and the lock yield one each.
	n := len(resp.Results)
	if n == 0 || resp.Results[n-1] == nil || resp.Results[n-1].Session != session {
		return res, "", fmt.Errorf("lock granted without the get's result: %+v", resp.Results)
	}
	res.Granted, res.Token, res.LockIndex = true, resp.Results[n-1].ModifyIndex, resp.Results[n-1].LockIndex
	return res, "", nil
}

func (b *realBackend) release(key int, session string, value failover.LockValue) (bool, error) {
	body, _ := json.Marshal(value)
	ok, resp, _, err := b.c.KV().Txn(api.KVTxnOps{{Verb: api.KVUnlock, Key: b.key(key), Value: body, Session: session}, {Verb: api.KVGet, Key: b.key(key)}}, nil)
	if err != nil {
		return false, err
	}
	if !ok {
		b.t.Logf("k%d: Consul refused the unlock: %+v", key, resp.Errors)
	}
	return !ok, nil
}

func (b *realBackend) read(key int) (failover.KVEntry, bool, error) {
	p, _, err := b.c.KV().Get(b.key(key), &api.QueryOptions{RequireConsistent: true})
	if err != nil || p == nil {
		return failover.KVEntry{}, false, err
	}
	e := failover.KVEntry{Session: p.Session, ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}
	if err := json.Unmarshal(p.Value, &e.Value); err != nil {
		return e, true, fmt.Errorf("value of %s: %w", p.Key, err)
	}
	return e, true, nil
}

func (b *realBackend) list() (uint64, error) {
	_, meta, err := b.c.KV().List(b.prefix, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		return 0, err
	}
	return meta.LastIndex, nil
}

func (b *realBackend) block(index uint64) (uint64, bool, error) {
	start := time.Now()
	_, meta, err := b.c.KV().List(b.prefix, &api.QueryOptions{WaitIndex: index, WaitTime: b.wait})
	if err != nil {
		return 0, false, err
	}
	// Consul answers a query that waits out its wait after the wait plus a jitter, never
	// before: any earlier answer woke. (Half the wait, as it was, took an immediate answer that
	// a loaded machine delivered late for a wait-out.)
	return meta.LastIndex, time.Since(start) < b.wait, nil
}

func (b *realBackend) loseState() { b.srv.RestartLosingState() }

func (b *realBackend) restart() { b.srv.Restart() }

func (b *realBackend) now() time.Time { return time.Now() }

func (b *realBackend) pause(d time.Duration) { time.Sleep(d) } // a polling interval, bounded by the callers' deadlines
