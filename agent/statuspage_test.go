//go:build linux

package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/internal/clock"
	"github.com/qslice/qslice/internal/testenv"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/lockfile"
	"github.com/qslice/qslice/runner/queue"
)

// The status page is checked in a real browser: Debian's chromium, headless, driven through
// chromedriver with the W3C WebDriver protocol over loopback HTTP. The page is JavaScript that
// fetches /api/status every 2 seconds, so only a browser can tell whether what it renders is right.
//
// Timing budgets. The agent probes every 200ms (standaloneConfig) and the page refreshes every 2s,
// so a change on disk shows on the page within about 2.5s; the page waits allow 20s for a loaded
// machine. Chromium's first start (profile creation) takes a few seconds; session creation is given
// a minute. Every wait below is bounded.
const (
	pageTimeout          = 20 * time.Second // from a change on disk to the page showing it
	apiTimeout           = 15 * time.Second // from a change on disk to /api/status showing it
	driverStartTimeout   = 15 * time.Second // chromedriver answering /status
	sessionCreateTimeout = 60 * time.Second // chromium started and attached
	navigateTimeout      = 60 * time.Second // the first page load (chromium renders it on a loaded machine)
	driverCallTimeout    = 15 * time.Second // any other WebDriver call
	driverStopTimeout    = 5 * time.Second  // per stop signal
	pollEvery            = 50 * time.Millisecond
)

// pageStateJS collects what the page shows, as plain data. Column indexes come from the tables'
// headers, so the checks name columns, not positions.
const pageStateJS = `
const cells = tr => Array.from(tr.cells, td => ({text: td.textContent, cls: td.className}));
const table = id => ({
  headers: Array.from(document.querySelectorAll("#" + id + " thead th"), th => th.textContent),
  rows: Array.from(document.querySelectorAll("#" + id + " tbody tr"), cells),
});
return {
  marker: window.__qsliceNoReload || 0,
  heading: document.querySelector("h1").textContent,
  summary: document.getElementById("summary").textContent,
  problems: Array.from(document.querySelectorAll("#problems li"), li => li.textContent),
  gridLabels: Array.from(document.querySelectorAll("#grids > div:not(.grid)"), d => d.textContent),
  grid: Array.from(document.querySelectorAll("#grids .grid .cell"),
    c => ({text: c.textContent, title: c.title, color: getComputedStyle(c).backgroundColor})),
  slices: table("slices"),
  locks: table("locks"),
  members: table("members"),
  pools: table("pools"),
  poolTitles: Array.from(document.querySelectorAll("#pools tbody tr"), tr => tr.title),
};`

type pageCell struct {
	Text string `json:"text"`
	Cls  string `json:"cls"`
}

type pageTable struct {
	Headers []string     `json:"headers"`
	Rows    [][]pageCell `json:"rows"`
}

// cell returns the cell of row under the header named col ("" when absent).
func (p pageTable) cell(row []pageCell, col string) pageCell {
	for i, h := range p.Headers {
		if h == col && i < len(row) {
			return row[i]
		}
	}
	return pageCell{}
}

type pageState struct {
	Marker     int      `json:"marker"`
	Heading    string   `json:"heading"`
	Summary    string   `json:"summary"`
	Problems   []string `json:"problems"`
	GridLabels []string `json:"gridLabels"`
	Grid       []struct {
		Text  string `json:"text"`
		Title string `json:"title"`
		Color string `json:"color"`
	} `json:"grid"`
	Slices     pageTable `json:"slices"`
	Locks      pageTable `json:"locks"`
	Members    pageTable `json:"members"`
	Pools      pageTable `json:"pools"`
	PoolTitles []string  `json:"poolTitles"`
}

// readyOnPage returns the ready column of the slice table by slice index, or an explanation of
// why the table is not (yet) the expected shape.
func (s pageState) readyOnPage(slices int) ([]int, string) {
	if len(s.Slices.Rows) != slices {
		return nil, fmt.Sprintf("slice table has %d rows, want %d (summary %q)", len(s.Slices.Rows), slices, s.Summary)
	}
	ready := make([]int, slices)
	for i, row := range s.Slices.Rows {
		idx, err := strconv.Atoi(s.Slices.cell(row, "slice").Text)
		if err != nil || idx != i {
			return nil, fmt.Sprintf("row %d shows slice %q", i, s.Slices.cell(row, "slice").Text)
		}
		if ready[i], err = strconv.Atoi(s.Slices.cell(row, "ready").Text); err != nil {
			return nil, fmt.Sprintf("row %d: ready %q", i, s.Slices.cell(row, "ready").Text)
		}
	}
	return ready, ""
}

func TestStatusPageInHeadlessChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the browser test of the status page")
	}
	chromium, err1 := exec.LookPath("chromium")
	chromedriver, err2 := exec.LookPath("chromedriver")
	if err1 != nil || err2 != nil {
		t.Skipf("chromium or chromedriver not installed (Debian packages chromium and chromium-driver, listed in .ci/apt-packages.txt): skipping the status page browser test (%v; %v)", err1, err2)
	}
	const node = "statuspage-node"
	const slices = 4
	cfg := standaloneConfig(t, "node: "+node+"\n")
	if cfg.Queues[0].Slices != slices || cfg.Queues[0].LockDir == "" || cfg.Queues[0].Concurrency < 1 {
		t.Fatalf("standaloneConfig changed: %+v", cfg.Queues[0])
	}
	concurrency := cfg.Queues[0].Concurrency

	// Handlers block until the test ends (or the runner cancels them at shutdown, after
	// shutdown_grace 1s), so exactly `concurrency` messages go in flight and the rest stay ready.
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	var mu sync.Mutex
	taken := map[string]int{} // message base name -> slice, as the runner told the handler
	handler := runner.HandlerFunc(func(ctx context.Context, m *runner.Message) error {
		mu.Lock()
		taken[m.Name.Base] = m.Slice
		mu.Unlock()
		select {
		case <-block:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("handler of %s: %w", m.Name.Base, ctx.Err())
		}
	})
	a := startAgent(t, cfg, Options{Version: "test", Handlers: map[string]runner.Handler{"in": handler}})
	base := "http://" + a.Addr()

	// Real lock files in the queue's lock_dir, which the agent probes: one held and fresh, one
	// held by a Lock whose clock is an hour behind, so its expiry is far beyond the inspector's
	// slop and the probe reports it expired (breakable).
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	lockDir := cfg.Queues[0].LockDir
	heldPath, stalePath := filepath.Join(lockDir, "held.lck"), filepath.Join(lockDir, "stale.lck")
	takeLock(t, heldPath, lockfile.Options{Lifetime: 10 * time.Minute})
	takeLock(t, stalePath, lockfile.Options{Lifetime: time.Minute, Clock: clock.Offset{D: -time.Hour}})

	// Messages, and the ready count each slice should show.
	d := queue.NewDir(cfg.Queues[0].Dir, "", "")
	enqueued := map[string]int{} // base name -> slice, by queue.SliceOf
	enqueue := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			name, err := d.Enqueue(queue.Meta{}, []byte("status page test "+strconv.Itoa(i)), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			enqueued[name.Base] = queue.SliceOf(name.Digest, slices)
		}
	}
	expect := func() (ready, inFlight []int) {
		mu.Lock()
		defer mu.Unlock()
		ready, inFlight = make([]int, slices), make([]int, slices)
		for b, s := range enqueued {
			if got, ok := taken[b]; ok {
				if got != s {
					t.Errorf("message %s: handler got slice %d, queue.SliceOf says %d", b, got, s)
				}
				inFlight[s]++
			} else {
				ready[s]++
			}
		}
		return ready, inFlight
	}
	enqueue(22)
	poll(t, fmt.Sprintf("%d handlers blocked", concurrency), apiTimeout, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(taken) == concurrency
	})
	wantReady, wantInFlight := expect()
	t.Logf("expected per slice: ready %v, in flight %v", wantReady, wantInFlight)

	// The agent itself must report it before the page can: this separates agent bugs from page bugs.
	var st Status
	poll(t, "/api/status with the expected counts and both locks", apiTimeout, func() bool {
		st = Status{}
		getJSON(t, base+"/api/status", &st)
		if len(st.Slices) != slices || len(st.Locks) != 2 {
			return false
		}
		for i, s := range st.Slices {
			if s.Ready != wantReady[i] || s.InFlight != wantInFlight[i] {
				return false
			}
		}
		return true
	})

	// The profile directory is created before chromedriver starts, so that it is removed only
	// after chromedriver's process group was stopped (cleanups run last-in first-out).
	profile, shots := t.TempDir(), t.TempDir()
	wd := startChromeDriver(t, chromedriver)
	sess := wd.newSession(t, chromium, profile)
	defer func() {
		if t.Failed() {
			sess.screenshot(t, shots, "statuspage-failed.png")
		}
	}()
	if err := sess.wd.do("POST", "/session/"+sess.id+"/url", map[string]string{"url": base + "/"}, nil, navigateTimeout); err != nil {
		t.Fatal(err)
	}

	var ps pageState
	waitPage := func(what string, ok func(pageState) string) {
		t.Helper()
		deadline := time.Now().Add(pageTimeout)
		for {
			ps = pageState{}
			sess.call(t, "POST", "/execute/sync", map[string]any{"script": pageStateJS, "args": []any{}}, &ps)
			why := ok(ps)
			if why == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %s waiting for the page to show %s: %s\nlast state: %+v", pageTimeout, what, why, ps)
			}
			time.Sleep(pollEvery)
		}
	}
	readyIs := func(want []int) func(pageState) string {
		return func(ps pageState) string {
			got, why := ps.readyOnPage(slices)
			if why != "" {
				return why
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Sprintf("ready %v, want %v", got, want)
			}
			return ""
		}
	}
	waitPage("the slice table with the enqueued counts", readyIs(wantReady))
	waitPage("both locks", func(ps pageState) string {
		if len(ps.Locks.Rows) != 2 {
			return fmt.Sprintf("%d lock rows", len(ps.Locks.Rows))
		}
		return ""
	})

	// Heading and summary.
	if want := "qslice · node " + node + " · standalone"; ps.Heading != want {
		t.Errorf("heading %q, want %q", ps.Heading, want)
	}
	if want := fmt.Sprintf("%d slices, %d owned here; lease valid", slices, slices); !strings.HasPrefix(ps.Summary, want) {
		t.Errorf("summary %q, want it to start with %q", ps.Summary, want)
	}
	if len(ps.Problems) != 0 {
		t.Errorf("problems listed: %q", ps.Problems)
	}

	// The members table: a standalone node lists itself, up, owning and home for every slice.
	if len(ps.Members.Rows) != 1 {
		t.Errorf("members table has %d rows, want this node only", len(ps.Members.Rows))
	} else {
		m := func(col string) pageCell { return ps.Members.cell(ps.Members.Rows[0], col) }
		if m("node").Text != node+" (this node)" || m("state").Text != "up" || m("state").Cls != "ok" ||
			m("slices owned / home").Text != fmt.Sprintf("%d / %d", slices, slices) || m("address").Text == "" {
			t.Errorf("members row: node %q state %q (%s) slices %q address %q", m("node").Text, m("state").Text, m("state").Cls, m("slices owned / home").Text, m("address").Text)
		}
	}

	// The slice table. A standalone node is the owner (and home) of every slice, by its name.
	owner := node
	for i, row := range ps.Slices.Rows {
		c := func(col string) pageCell { return ps.Slices.cell(row, col) }
		if c("queue").Text != "in" || c("owner").Text != owner || c("state").Text != "owned" {
			t.Errorf("row %d: queue %q owner %q state %q, want in, %s, owned", i, c("queue").Text, c("owner").Text, c("state").Text, owner)
		}
		if c("owner").Text != st.Slices[i].Owner {
			t.Errorf("row %d: owner %q, the API says %q", i, c("owner").Text, st.Slices[i].Owner)
		}
		if c("owner").Cls == "bad" {
			t.Errorf("row %d: owner marked bad", i)
		}
		if want := strconv.Itoa(wantInFlight[i]); c("in flight").Text != want {
			t.Errorf("row %d: in flight %q, want %s", i, c("in flight").Text, want)
		}
		if c("health").Text != "passing" || c("health").Cls != "ok" {
			t.Errorf("row %d: health %q (class %q), want passing (ok)", i, c("health").Text, c("health").Cls)
		}
		if wantReady[i] > 0 && !strings.HasSuffix(c("oldest").Text, "s") {
			t.Errorf("row %d: oldest %q, want seconds", i, c("oldest").Text)
		}
		if c("lease left").Text != "" {
			t.Errorf("row %d: lease left %q on a standalone node", i, c("lease left").Text)
		}
	}

	// The slice map: one labelled grid, a cell per slice, all in the colour of the one owner.
	if len(ps.GridLabels) != 1 || ps.GridLabels[0] != "in" {
		t.Errorf("grid labels %q, want [in]", ps.GridLabels)
	}
	if len(ps.Grid) != slices {
		t.Fatalf("%d grid cells, want %d", len(ps.Grid), slices)
	}
	for i, c := range ps.Grid {
		if want := fmt.Sprintf("in/%d: %s, %d ready", i, owner, wantReady[i]); c.Text != strconv.Itoa(i) || c.Title != want {
			t.Errorf("grid cell %d: text %q title %q, want %d and %q", i, c.Text, c.Title, i, want)
		}
		if c.Color != ps.Grid[0].Color || c.Color == "rgb(180, 35, 24)" { // #b42318 marks unowned
			t.Errorf("grid cell %d: colour %s (cell 0: %s), want one owner colour, not the unowned one", i, c.Color, ps.Grid[0].Color)
		}
	}

	// The lock table (rows sorted by path: held.lck, stale.lck).
	locks := map[string][]pageCell{}
	for _, row := range ps.Locks.Rows {
		locks[ps.Locks.cell(row, "lock").Text] = row
	}
	holder := fmt.Sprintf("%s pid %d", host, os.Getpid())
	checkLock := func(path, state, cls string, expired bool) {
		t.Helper()
		row, ok := locks[path]
		if !ok {
			t.Errorf("lock %s not listed; rows %+v", path, ps.Locks.Rows)
			return
		}
		c := func(col string) pageCell { return ps.Locks.cell(row, col) }
		if c("holder").Text != holder || c("state").Text != state || c("state").Cls != cls || c("waiters").Text != "0" {
			t.Errorf("lock %s: holder %q state %q (class %q) waiters %q, want %q, %s (%s), 0", path,
				c("holder").Text, c("state").Text, c("state").Cls, c("waiters").Text, holder, state, cls)
		}
		if exp := c("expires in").Text; exp == "" || strings.HasSuffix(exp, " ago") != expired {
			t.Errorf("lock %s: expires in %q, want it %s", path, exp, map[bool]string{true: "in the past", false: "in the future"}[expired])
		}
	}
	checkLock(heldPath, "held", "ok", false)
	checkLock(stalePath, "EXPIRED", "bad", true)
	// No handler.worker queue here: the worker pools table says so.
	if len(ps.Pools.Rows) != 1 || len(ps.Pools.Rows[0]) != 1 || !strings.Contains(ps.Pools.Rows[0][0].Text, "no persistent workers") {
		t.Errorf("worker pools table %+v, want the one row saying there are none", ps.Pools.Rows)
	}
	sess.screenshot(t, shots, "statuspage.png")

	// The page refreshes by itself: mark the window (a reload would clear the mark), enqueue more,
	// and wait for the new counts without navigating.
	sess.call(t, "POST", "/execute/sync", map[string]any{"script": "window.__qsliceNoReload = 1; return 1;", "args": []any{}}, nil)
	enqueue(9)
	wantReady2, _ := expect()
	t.Logf("after 9 more: ready %v", wantReady2)
	waitPage("the new ready counts", readyIs(wantReady2))
	if ps.Marker != 1 {
		t.Errorf("the page was reloaded (marker %d): it should refresh its data in place", ps.Marker)
	}
	if total(wantReady2) != total(wantReady)+9 {
		t.Errorf("ready total %d, want %d", total(wantReady2), total(wantReady)+9)
	}
	sess.screenshot(t, shots, "statuspage-refreshed.png")
	sess.checkConsole(t)
}

// TestStatusPageShowsWorkerPools: a node with two queues of persistent workers (handler.worker),
// one working (a no-op Python worker, 2 processes) and one whose worker prints to stdout instead of
// answering the hello (a crash loop with a protocol error). /api/status and the page, in a real
// Chromium, show per queue the pool size, the live workers and their pids, the restarts (a
// working worker killed by the test is restarted and counted), the crash-loop state with its
// reason, and the last protocol error with its time; the crash loop is a listed problem.
func TestStatusPageShowsWorkerPools(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the browser test of the status page")
	}
	chromium, err1 := exec.LookPath("chromium")
	chromedriver, err2 := exec.LookPath("chromedriver")
	if err1 != nil || err2 != nil {
		t.Skipf("chromium or chromedriver not installed (Debian packages chromium and chromium-driver, listed in .ci/apt-packages.txt): skipping the status page browser test (%v; %v)", err1, err2)
	}
	py := testenv.RequirePython(t, "json", "python3")
	lib, err := filepath.Abs("../sdk/python/qslice_worker.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := fmt.Sprintf(`node: pools-node
listen: 127.0.0.1:0
probes: {interval: 200ms, budget: 150ms}
queues:
  - name: good
    dir: q/good
    slices: 2
    concurrency: 2
    poll_interval: 20ms
    shutdown_grace: 1s
    handler: {worker: [%q, %q]}
  - name: broken
    dir: q/broken
    slices: 2
    concurrency: 1
    poll_interval: 20ms
    shutdown_grace: 1s
    handler: {worker: [%q, "-c", "print('not a frame', flush=True); import time; time.sleep(60)"]}
`, py, lib, py)
	cfg, err := config.Parse(filepath.Join(dir, "qslice.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Control.Socket = testenv.SocketPath(t, "qslice.sock")
	a := startAgent(t, cfg, Options{Version: "test"})
	base := "http://" + a.Addr()

	pools := func() map[string]PoolView {
		var st Status
		getJSON(t, base+"/api/status", &st)
		out := map[string]PoolView{}
		for _, p := range st.WorkerPools {
			out[p.Queue] = p
		}
		return out
	}
	var got map[string]PoolView
	poll(t, "/api/status: good has 2 live workers, broken is in a crash loop", apiTimeout+30*time.Second, func() bool {
		got = pools()
		g, b := got["good"], got["broken"]
		return g.Live == 2 && len(g.PIDs) == 2 && b.CrashLoop
	})
	// Kill one working worker: it is restarted (a crash, not a loop) and counted.
	killed := got["good"].PIDs[0]
	if err := syscall.Kill(killed, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	poll(t, "/api/status: good restarted the killed worker", apiTimeout, func() bool {
		got = pools()
		g := got["good"]
		return g.Live == 2 && g.Restarts == 1 && !slices.Contains(g.PIDs, killed)
	})
	g, b := got["good"], got["broken"]
	if g.Size != 2 || g.CrashLoop || g.CrashLoopReason != "" || g.LastProtocolError != "" || !g.LastProtocolErrorAt.IsZero() {
		t.Errorf("pool good: %+v, want size 2, no crash loop, no protocol error", g)
	}
	if b.Size != 1 || b.Live != 0 || len(b.PIDs) != 0 || b.Restarts < 2 || !strings.Contains(b.CrashLoopReason, "crashes in a row") {
		t.Errorf("pool broken: %+v, want size 1, none live, 2+ restarts, the crash loop's reason", b)
	}
	if !strings.Contains(b.LastProtocolError, `"not a frame`) || time.Since(b.LastProtocolErrorAt) > time.Minute {
		t.Errorf("pool broken: last protocol error %q at %v, want the worker's output named, just now", b.LastProtocolError, b.LastProtocolErrorAt)
	}

	profile, shots := t.TempDir(), t.TempDir()
	wd := startChromeDriver(t, chromedriver)
	sess := wd.newSession(t, chromium, profile)
	defer func() {
		if t.Failed() {
			sess.screenshot(t, shots, "statuspage-pools-failed.png")
		}
	}()
	if err := sess.wd.do("POST", "/session/"+sess.id+"/url", map[string]string{"url": base + "/"}, nil, navigateTimeout); err != nil {
		t.Fatal(err)
	}
	var ps pageState
	deadline := time.Now().Add(pageTimeout)
	for {
		ps = pageState{}
		sess.call(t, "POST", "/execute/sync", map[string]any{"script": pageStateJS, "args": []any{}}, &ps)
		if len(ps.Pools.Rows) == 2 && len(ps.Pools.Rows[0]) == len(ps.Pools.Headers) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for the page's worker pools table: %+v", pageTimeout, ps.Pools)
		}
		time.Sleep(pollEvery)
	}
	row := func(i int) func(string) pageCell {
		return func(col string) pageCell { return ps.Pools.cell(ps.Pools.Rows[i], col) }
	}
	br, gr := row(0), row(1) // sorted by queue: broken, good
	if br("queue").Text != "broken" || gr("queue").Text != "good" {
		t.Fatalf("pool rows %q, %q; want broken, good", br("queue").Text, gr("queue").Text)
	}
	if gr("workers").Text != "2 / 2" || gr("workers").Cls != "ok" || gr("restarts").Text != "1" ||
		gr("crash loop").Text != "no" || gr("crash loop").Cls != "ok" || gr("last protocol error").Text != "none" {
		t.Errorf("good row: workers %q (%s), restarts %q, crash loop %q (%s), last protocol error %q; want 2 / 2 (ok), 1, no (ok), none",
			gr("workers").Text, gr("workers").Cls, gr("restarts").Text, gr("crash loop").Text, gr("crash loop").Cls, gr("last protocol error").Text)
	}
	if want := fmt.Sprint(g.PIDs[0]) + " " + fmt.Sprint(g.PIDs[1]); gr("pids").Text != want {
		t.Errorf("good row: pids %q, the API says %q", gr("pids").Text, want)
	}
	if br("workers").Text != "0 / 1" || br("workers").Cls != "bad" || br("crash loop").Text != "CRASH LOOP" || br("crash loop").Cls != "bad" ||
		br("pids").Text != "" || !strings.Contains(br("last protocol error").Text, `"not a frame`) || br("last protocol error").Cls != "warn" {
		t.Errorf("broken row: workers %q (%s), crash loop %q (%s), pids %q, last protocol error %q (%s)",
			br("workers").Text, br("workers").Cls, br("crash loop").Text, br("crash loop").Cls, br("pids").Text,
			br("last protocol error").Text, br("last protocol error").Cls)
	}
	if n, err := strconv.Atoi(br("restarts").Text); err != nil || n < 2 {
		t.Errorf("broken row: restarts %q, want 2 or more", br("restarts").Text)
	}
	if len(ps.PoolTitles) != 2 || !strings.Contains(ps.PoolTitles[0], "crashes in a row") || ps.PoolTitles[1] != "" {
		t.Errorf("row titles %q: want the crash loop's reason on broken's only", ps.PoolTitles)
	}
	found := false
	for _, p := range ps.Problems {
		found = found || strings.Contains(p, "queue broken: persistent workers in a crash loop")
	}
	if !found {
		t.Errorf("problems %q: want broken's crash loop listed", ps.Problems)
	}
	sess.screenshot(t, shots, "statuspage-pools.png")
	sess.checkConsole(t)
}

func total(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// takeLock takes a real lock file and releases it when the test ends.
func takeLock(t *testing.T, path string, opts lockfile.Options) {
	t.Helper()
	l, err := lockfile.New(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := l.TryLock()
	if err != nil || !ok {
		t.Fatalf("take lock %s: ok %v, err %v", path, ok, err)
	}
	t.Cleanup(func() {
		if err := l.Unlock(); err != nil {
			t.Errorf("release lock %s: %v", path, err)
		}
	})
}

// webDriver is a chromedriver process and a W3C WebDriver client for it.
type webDriver struct {
	base   string // http://127.0.0.1:port
	client *http.Client
}

// startChromeDriver starts chromedriver on a loopback port it picks itself (--port=0; it prints
// the port), in its own process group, and waits until it answers. A port chosen by the test
// and closed before chromedriver binds it may be taken meanwhile (by another process's outgoing
// connection, or a listener). The test's cleanup stops the group (chromedriver and any browser
// it left).
func startChromeDriver(t *testing.T, binary string) *webDriver {
	t.Helper()
	logDir := t.TempDir() // created before the cleanup below, so removed after it
	out := &lockedBuffer{}
	logPath := filepath.Join(logDir, "chromedriver.log")
	cmd := exec.Command(binary, "--port=0", "--log-path="+logPath)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromedriver: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // owned by the cleanup below, which waits for it
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			syscall.Kill(-pgid, sig)
			if groupGone(pgid, exited, driverStopTimeout) {
				break
			}
		}
		select {
		case <-exited:
		default:
			t.Errorf("chromedriver (pid %d) did not exit", pgid)
		}
		if t.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				t.Logf("chromedriver output:\n%s\nchromedriver log (tail):\n%s", out.String(), tail(log, 4000))
			}
		}
	})

	deadline := time.Now().Add(driverStartTimeout)
	var wd *webDriver
	for {
		if wd == nil {
			if port, ok := chromeDriverPort(out.String()); ok {
				wd = &webDriver{base: "http://127.0.0.1:" + strconv.Itoa(port), client: &http.Client{}}
			}
		}
		if wd != nil {
			var status struct {
				Ready   bool   `json:"ready"`
				Message string `json:"message"`
			}
			if err := wd.do("GET", "/status", nil, &status, driverCallTimeout); err == nil && status.Ready {
				return wd
			}
		}
		select {
		case <-exited:
			t.Fatalf("chromedriver exited at start: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			where := "it printed no port"
			if wd != nil {
				where = "at " + wd.base
			}
			t.Fatalf("chromedriver not ready after %s (%s); its output: %s", driverStartTimeout, where, out.String())
		}
		time.Sleep(pollEvery)
	}
}

// chromeDriverPort reads the port from chromedriver's start-up line ("ChromeDriver was started
// successfully on port 38047.").
func chromeDriverPort(out string) (int, bool) {
	const marker = "started successfully on port "
	i := strings.Index(out, marker)
	if i < 0 {
		return 0, false
	}
	digits := out[i+len(marker):]
	n := 0
	for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
		n++
	}
	port, err := strconv.Atoi(digits[:n])
	return port, err == nil && port > 0
}

// lockedBuffer is a bytes.Buffer that a process writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// groupGone waits until the process group has no member left and its leader was reaped.
func groupGone(pgid int, exited <-chan struct{}, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
				return true
			}
		default:
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// webDriverError is a W3C error response.
type webDriverError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
}

func (e *webDriverError) Error() string {
	return fmt.Sprintf("webdriver: HTTP %d: %s: %s", e.Status, e.Code, e.Message)
}

// do sends one WebDriver command and decodes the response's "value" into out (if not nil).
func (wd *webDriver) do(method, path string, body, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("webdriver %s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, wd.base+path, rd)
	if err != nil {
		return fmt.Errorf("webdriver %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := wd.client.Do(req)
	if err != nil {
		return fmt.Errorf("webdriver %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("webdriver %s %s: read: %w", method, path, err)
	}
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("webdriver %s %s: HTTP %d: decode %.200q: %w", method, path, resp.StatusCode, raw, err)
	}
	if resp.StatusCode != http.StatusOK {
		we := &webDriverError{Status: resp.StatusCode}
		json.Unmarshal(env.Value, we)
		return fmt.Errorf("%s %s: %w", method, path, we)
	}
	if out != nil {
		if err := json.Unmarshal(env.Value, out); err != nil {
			return fmt.Errorf("webdriver %s %s: decode value %.200q: %w", method, path, env.Value, err)
		}
	}
	return nil
}

// session is one browser session; the test's cleanup deletes it (which quits the browser).
type session struct {
	wd *webDriver
	id string
}

func (wd *webDriver) newSession(t *testing.T, chromium, profile string) *session {
	t.Helper()
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{
			"binary": chromium,
			"args": []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
				"--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--no-proxy-server", "--window-size=1280,900", "--user-data-dir=" + profile},
		},
		"goog:loggingPrefs": map[string]string{"browser": "ALL"},
		"timeouts":          map[string]int{"pageLoad": 20000, "script": 10000},
	}}}
	var created struct {
		SessionID string `json:"sessionId"`
	}
	if err := wd.do("POST", "/session", caps, &created, sessionCreateTimeout); err != nil {
		t.Fatalf("create a chromium session: %v", err)
	}
	s := &session{wd: wd, id: created.SessionID}
	t.Cleanup(func() {
		if err := wd.do("DELETE", "/session/"+s.id, nil, nil, driverCallTimeout); err != nil {
			t.Logf("delete session: %v (chromedriver's process group is killed anyway)", err)
		}
	})
	return s
}

// call runs a command of this session and fails the test on error.
func (s *session) call(t *testing.T, method, path string, body, out any) {
	t.Helper()
	if err := s.wd.do(method, "/session/"+s.id+path, body, out, driverCallTimeout); err != nil {
		t.Fatal(err)
	}
}

// screenshot saves a PNG of the window into dir and, when QSLICE_SCREENSHOT_DIR is set, there too.
func (s *session) screenshot(t *testing.T, dir, name string) {
	t.Helper()
	var b64 string
	if err := s.wd.do("GET", "/session/"+s.id+"/screenshot", nil, &b64, driverCallTimeout); err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	png, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("screenshot %s: not a base64 PNG (%d bytes, %v)", name, len(b64), err)
		return
	}
	dirs := []string{dir}
	if extra := os.Getenv("QSLICE_SCREENSHOT_DIR"); extra != "" {
		dirs = append(dirs, extra)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			continue
		}
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			continue
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(png))
	}
}

// checkConsole fails the test on errors in the browser's console (JavaScript errors, failed
// fetches of api/status). The browser's own request for /favicon.ico, which the agent does not
// serve, is only logged. Fetching the log is a chromedriver extension that Debian's
// chromium-driver has: without it the console is unchecked, which fails the test.
func (s *session) checkConsole(t *testing.T) {
	t.Helper()
	var entries []struct {
		Level   string `json:"level"`
		Message string `json:"message"`
	}
	if err := s.wd.do("POST", "/session/"+s.id+"/se/log", map[string]string{"type": "browser"}, &entries, driverCallTimeout); err != nil {
		t.Errorf("browser console not checked (chromedriver's log extension failed): %v", err)
		return
	}
	for _, e := range entries {
		if e.Level == "SEVERE" && !strings.Contains(e.Message, "/favicon.ico ") {
			t.Errorf("browser console: %s: %s", e.Level, e.Message)
		} else {
			t.Logf("browser console: %s: %s", e.Level, e.Message)
		}
	}
}
