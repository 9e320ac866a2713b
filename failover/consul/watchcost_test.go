package consul

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/failover/sim"
	"github.com/qslice/qslice/internal/consultest"
)

// countingProxy forwards one node's requests to Consul and counts the answers of its two
// watches: how many, their bytes (uncompressed: the proxy asks for no gzip, so the bytes are
// the JSON Consul encoded) and the index of the last one.
type countingProxy struct {
	URL string
	mu  sync.Mutex
	n   map[string]int   // answers by watch ("kv", "health")
	b   map[string]int64 // bytes by watch
	idx map[string]uint64
	// paths: the single-key answers, in order (for the log).
	paths []string
}

func newCountingProxy(t *testing.T, consulAddr string) *countingProxy {
	t.Helper()
	target, err := url.Parse("http://" + consulAddr)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{}
	p.reset()
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		r := resp.Request
		kind := ""
		switch {
		case r.Method != http.MethodGet:
		case strings.HasPrefix(r.URL.Path, "/v1/kv/") && r.URL.Query().Has("recurse"):
			kind = "kv"
		case strings.HasPrefix(r.URL.Path, "/v1/kv/"):
			kind = "key" // one key (scoped layout); a missing key answers 404 with no body
		case strings.HasPrefix(r.URL.Path, "/v1/health/service/"):
			kind = "health"
		}
		if kind == "" || (resp.StatusCode != http.StatusOK && !(kind == "key" && resp.StatusCode == http.StatusNotFound)) {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(strings.NewReader(string(body)))
		idx, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
		p.mu.Lock()
		if kind == "key" {
			p.paths = append(p.paths, r.URL.Path+"?"+r.URL.RawQuery+" "+strconv.Itoa(len(body)))
		}
		p.n[kind]++
		p.b[kind] += int64(len(body))
		p.idx[kind] = idx
		p.mu.Unlock()
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Accept-Encoding")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *countingProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n, p.b, p.idx, p.paths = map[string]int{}, map[string]int64{}, map[string]uint64{}, nil
}

func (p *countingProxy) snapshot() (n map[string]int, b map[string]int64, idx map[string]uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, b, idx = map[string]int{}, map[string]int64{}, map[string]uint64{}
	for k, v := range p.n {
		n[k] = v
	}
	for k, v := range p.b {
		b[k] = v
	}
	for k, v := range p.idx {
		idx[k] = v
	}
	return n, b, idx
}

// startCounted starts nodes ids on layout, each behind a counting proxy, and waits until they
// are settled and share the slices at their homes.
func startCounted(t *testing.T, srv *consultest.Server, l *failovertest.Ledger, layout string, ids []string) ([]*testNode, map[string]*countingProxy) {
	t.Helper()
	var nodes []*testNode
	proxies := map[string]*countingProxy{}
	for _, id := range ids {
		p := newCountingProxy(t, srv.HTTPAddr)
		proxies[id] = p
		nodes = append(nodes, startNode(t, srv, l, id, func(c *failover.ConsulConfig) { c.Address, c.WatchLayout = p.URL, layout }))
	}
	for _, n := range nodes {
		waitSettled(t, n)
	}
	waitSplit(t, 20*time.Second, fmt.Sprintf("the %d nodes share the slices", len(nodes)), rendezvousSplit(nodes...), nodes...)
	// Quiet: the start-up's last writes (member keys, service meta, check outputs) are done and
	// have been answered, so that what a test counts after it resets the proxies is the fault's
	// doing (a late one once gave every survivor two more health answers than the model).
	cl := srv.Client("")
	var last [2]uint64
	var since time.Time
	consultest.WaitFor(t, 30*time.Second, "the cluster's indexes still for 2 s", func() error {
		_, km, err := cl.KV().List("qslice/test/", nil)
		if err != nil {
			return err
		}
		_, hm, err := cl.Health().Service(ServiceName, "", false, nil)
		if err != nil {
			return err
		}
		if cur := [2]uint64{km.LastIndex, hm.LastIndex}; cur != last {
			last, since = cur, time.Now()
			return fmt.Errorf("indexes moved to %v", cur)
		}
		if d := time.Since(since); d < 2*time.Second {
			return fmt.Errorf("still for %s", d.Round(time.Millisecond))
		}
		return nil
	})
	return nodes, proxies
}

// TestWatchLoadPerFailoverMatchesModel measures what one crash costs the watches of the layout
// as built on a real Consul (4 nodes, 12 slices), and checks the watch-cost model of
// failover/sim (qslice-sim -bench watch) against it: every survivor is woken, and reads about
// the answers and bytes the model counts for it.
func TestWatchLoadPerFailoverMatchesModel(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	l := failovertest.NewLedger()
	ids := []string{"a", "b", "c", "d"}
	nodes, proxies := startCounted(t, srv, l, failover.LayoutPrefix, ids)

	for _, p := range proxies {
		p.reset()
	}
	dead, survivors := nodes[0], nodes[1:]
	dead.crash(t)
	waitSplit(t, 15*time.Second, "the survivors take the dead node's slices", rendezvousSplit(survivors...), survivors...)
	// Every watch answer caused by the failover has arrived once each survivor's watches have
	// answered at the indexes Consul is at now (the Meta of the new holders included).
	consultest.WaitFor(t, 15*time.Second, "the survivors' watches caught up", func() error {
		_, kvMeta, err := cl.KV().List("qslice/test/", nil)
		if err != nil {
			return err
		}
		_, hMeta, err := cl.Health().Service(ServiceName, "", false, nil)
		if err != nil {
			return err
		}
		for _, n := range survivors {
			_, _, idx := proxies[n.id].snapshot()
			if idx["kv"] < kvMeta.LastIndex || idx["health"] < hMeta.LastIndex {
				return fmt.Errorf("%s at kv %d health %d, Consul at %d, %d", n.id, idx["kv"], idx["health"], kvMeta.LastIndex, hMeta.LastIndex)
			}
		}
		return nil
	})

	// The status page reads the members from the same watch (MemberEntries), not from a second
	// one: a survivor's entries show the dead node's alive check critical.
	consultest.WaitFor(t, 5*time.Second, "a survivor's MemberEntries show the dead node critical", func() error {
		entries, read, err := survivors[0].c.MemberEntries()
		deadAlive := ""
		for _, e := range entries {
			for _, ch := range e.Checks {
				if ch.CheckID == "qslice-test-"+dead.id+":alive" {
					deadAlive = ch.Status
				}
			}
		}
		if !read || err != nil || deadAlive != "critical" {
			return fmt.Errorf("read %v, err %v, %s's alive check %q", read, err, dead.id, deadAlive)
		}
		return nil
	})

	model := sim.FailoverWatchCost(sim.LayoutPrefix, testQueues, ids, dead.id)
	var answers int
	var bytes int64
	for _, n := range survivors {
		cnt, b, _ := proxies[n.id].snapshot()
		t.Logf("%s read %d KV answers (%d bytes) and %d health answers (%d bytes)", n.id, cnt["kv"], b["kv"], cnt["health"], b["health"])
		if cnt["kv"] == 0 || cnt["health"] == 0 {
			t.Errorf("%s: %d KV and %d health answers: every survivor must be woken by a failover in this layout", n.id, cnt["kv"], cnt["health"])
		}
		answers += cnt["kv"] + cnt["health"]
		bytes += b["kv"] + b["health"]
	}
	perNode := float64(bytes) / float64(len(survivors))
	// The model counts every answer separately (Bytes) and merged as far as the rate limit can
	// (MergedBytes: two of each watch); a loaded machine merges more.
	most, least := float64(model.Bytes)/float64(model.Woken), float64(model.MergedBytes)/float64(model.Woken)
	t.Logf("measured per survivor: %.1f answers, %.0f bytes; model: %.1f answers, %.0f bytes (%.0f merged)",
		float64(answers)/float64(len(survivors)), perNode, float64(model.Answers)/float64(model.Woken), most, least)
	if model.Woken != len(survivors) {
		t.Errorf("the model wakes %d nodes, Consul woke all %d survivors", model.Woken, len(survivors))
	}
	if perNode < 0.8*least || perNode > 1.2*most {
		t.Errorf("a survivor read %.0f bytes, the model counts %.0f to %.0f: the model no longer describes the driver", perNode, least, most)
	}
	l.Check(t)
}

// TestScopedWatchLoadPerFailover measures what one crash costs the watches of the scoped layout
// on a real Consul (5 nodes, 12 slices): survivors read single keys only (no answer of the
// whole prefix or of the service's health), at most four answers per key that changed, and
// every slice is owned again by the survivors.
func TestScopedWatchLoadPerFailover(t *testing.T) {
	srv := consultest.Start(t)
	l := failovertest.NewLedger()
	ids := []string{"a", "b", "c", "d", "e"}
	nodes, proxies := startCounted(t, srv, l, failover.LayoutScoped, ids)
	quiet := func(what string) {
		t.Helper()
		last := -1
		consultest.WaitFor(t, 20*time.Second, what, func() error {
			total := 0
			for _, p := range proxies {
				n, _, _ := p.snapshot()
				for _, v := range n {
					total += v
				}
			}
			if total != last {
				last = total
				time.Sleep(1500 * time.Millisecond)
				return fmt.Errorf("%d answers so far", total)
			}
			return nil
		})
	}
	quiet("the watches are quiet before the crash")
	for _, p := range proxies {
		p.reset()
	}
	cl := srv.Client("")
	_, before, err := cl.KV().List("qslice/test/", nil)
	if err != nil {
		t.Fatal(err)
	}
	dead, survivors := nodes[0], nodes[1:]
	dead.crash(t)
	waitSplit(t, 15*time.Second, "the survivors take the dead node's slices", rendezvousSplit(survivors...), survivors...)
	quiet("the watches are quiet after the failover")
	// What changed: the slice and member keys written since the crash (the inbox keys are the
	// layout's own traffic, counted in what the survivors read).
	pairs, _, err := cl.KV().List("qslice/test/", nil)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for _, p := range pairs {
		if p.ModifyIndex > before.LastIndex && !strings.Contains(p.Key, "/inbox/") {
			changed++
		}
	}
	const keyAnswer = 250 // bytes of one single-key answer, at most (slice keys ~170, member keys ~210)
	bound := int64(4 * changed * keyAnswer)

	prefixAnswer := int64(0) // what one answer of the prefix layout's KV watch costs now
	{
		p := newCountingProxy(t, srv.HTTPAddr)
		cl, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(p.URL, "http://"), Token: srv.ManagementToken})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := cl.KV().List("qslice/test/", nil); err != nil {
			t.Fatal(err)
		}
		_, b, _ := p.snapshot()
		prefixAnswer = b["kv"]
	}
	woken := 0
	for _, n := range survivors {
		cnt, b, _ := proxies[n.id].snapshot()
		t.Logf("%s read %d single-key answers (%d bytes); full reads: %d KV (%d bytes), %d health", n.id, cnt["key"], b["key"], cnt["kv"], b["kv"], cnt["health"])
		if testing.Verbose() {
			proxies[n.id].mu.Lock()
			t.Logf("%s single-key answers:\n%s", n.id, strings.Join(proxies[n.id].paths, "\n"))
			proxies[n.id].mu.Unlock()
		}
		if cnt["kv"] != 0 || cnt["health"] != 0 {
			t.Errorf("%s read the whole prefix or the service's health during a failover: the scoped layout must not", n.id)
		}
		if b["key"] > bound {
			t.Errorf("%s read %d bytes for %d changed keys, more than 4 single-key answers each (%d bytes): not bounded by what changed", n.id, b["key"], changed, bound)
		}
		if cnt["key"] > 0 {
			woken++
		}
	}
	if woken == 0 {
		t.Error("no survivor read anything: the failover cannot have been seen through the watches")
	}
	t.Logf("%d keys changed; one answer of the prefix layout's KV watch: %d bytes; %d of %d survivors woken", changed, prefixAnswer, woken, len(survivors))
	l.Check(t)
}
