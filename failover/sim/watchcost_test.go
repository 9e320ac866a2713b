package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/consultest"
)

// TestWatchCostModelMatchesConsul anchors the watch-cost model (watchcost.go) on a real Consul:
// the size of each kind of answer it counts, within 10%, and the wake-up rules it assumes: a
// blocking query on one key is not answered when another key changes, and is answered when its
// key is released by the end of the session that held it; a blocking query on a prefix is
// answered when any key under it changes.
func TestWatchCostModelMatchesConsul(t *testing.T) {
	srv := consultest.Start(t, consultest.WithLogLevel("warn"))
	cl := srv.Client("")
	const queues = 4
	sz := newSizes(queues)
	get := func(path string) []byte {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+srv.HTTPAddr+path, nil)
		req.Header.Set("X-Consul-Token", srv.ManagementToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return b
	}
	near := func(what string, got, model int) {
		t.Helper()
		if d := float64(got-model) / float64(got); d > 0.10 || d < -0.10 {
			t.Errorf("%s: Consul answered %d bytes, the model counts %d (%+.0f%%)", what, got, model, -100*d)
		} else {
			t.Logf("%s: Consul %d bytes, model %d", what, got, model)
		}
	}

	session, _, err := cl.Session().Create(&api.SessionEntry{Name: "qslice/prod/node-0001", LockDelay: time.Millisecond, Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		if ok, _, err := cl.KV().Acquire(&api.KVPair{Key: key, Value: b, Session: session}, nil); err != nil || !ok {
			t.Fatalf("acquire %s: %v %v", key, ok, err)
		}
	}
	const keys = 40
	for i := 0; i < keys; i++ {
		put(fmt.Sprintf("qslice/prod/slices/q%02d/%d", i%queues, 100+i), failover.LockValue{Node: "node-0001"})
	}
	put("qslice/prod/members/node-0001", memberValue{LiveSince: time.Now().UnixMilli()})
	put("qslice/prod/inbox/node-0001", inboxValue{From: "node-0002", Slices: []string{"q00/123"}})

	near("one slice key", len(get("/v1/kv/qslice/prod/slices/q00/100")), sz.sliceKey)
	near("one member key", len(get("/v1/kv/qslice/prod/members/node-0001")), sz.memberKey)
	near("one inbox key", len(get("/v1/kv/qslice/prod/inbox/node-0001")), sz.inboxKey)
	near(fmt.Sprintf("the slice prefix, %d keys", keys), len(get("/v1/kv/qslice/prod/slices/?recurse")), sz.prefixOverhead+keys*sz.slicePair)

	// health/service: instances with the alive check and one check per queue.
	const instances = 6
	for i := 0; i < instances; i++ {
		node := fmt.Sprintf("node-%04d", i)
		id := "qslice-prod-" + node
		checks := api.AgentServiceChecks{{CheckID: id + ":alive", Name: "qslice node alive", TTL: "1h", Status: api.HealthPassing,
			Notes: "Passed by qslice while the node is healthy; the node's slice locks are bound to it."}}
		for q := 0; q < queues; q++ {
			checks = append(checks, &api.AgentServiceCheck{CheckID: fmt.Sprintf("%s:queue:q%02d", id, q), Name: fmt.Sprintf("qslice queue q%02d", q),
				TTL: "1h", Status: api.HealthPassing, Notes: "Worst health of the slices of this queue owned by the node."})
		}
		if err := cl.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "qslice", Tags: []string{"cluster-prod"}, Port: 9466, Address: "10.0.0.1",
			Meta: map[string]string{"cluster": "prod", "node": node, "version": "1.4.0", "queues": "q00:256,q01:256,q02:256",
				"owned": "q00:3,17 q01:80 q02:201", "draining": "false", "live_since": "1893456000000"}, Checks: checks}); err != nil {
			t.Fatal(err)
		}
		for q := 0; q < queues; q++ {
			if err := cl.Agent().UpdateTTL(fmt.Sprintf("%s:queue:q%02d", id, q), "4 slices processed here: 3,17,80,201", api.HealthPassing); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.Agent().UpdateTTL(id+":alive", "ok", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
	}
	consultest.WaitFor(t, 10*time.Second, "every instance in the catalog", func() error {
		if es, _, err := cl.Health().Service("qslice", "", false, nil); err != nil || len(es) != instances {
			return fmt.Errorf("%d instances, %v", len(es), err)
		}
		return nil
	})
	near(fmt.Sprintf("health/service, %d instances with %d queue checks", instances, queues), len(get("/v1/health/service/qslice")), len(healthAnswer(instances, queues, ""))) // outputs not synced yet

	// Wake-ups. A blocking query on one key, while another key changes: it waits out its wait.
	const wait = 2 * time.Second
	watch := func(key string, recurse bool) <-chan time.Duration {
		opts := &api.QueryOptions{}
		var idx uint64
		if recurse {
			_, m, err := cl.KV().List(key, opts)
			if err != nil {
				t.Fatal(err)
			}
			idx = m.LastIndex
		} else {
			_, m, err := cl.KV().Get(key, opts)
			if err != nil {
				t.Fatal(err)
			}
			idx = m.LastIndex
		}
		done := make(chan time.Duration, 1)
		go func() {
			start := time.Now()
			q := &api.QueryOptions{WaitIndex: idx, WaitTime: wait}
			if recurse {
				_, _, _ = cl.KV().List(key, q)
			} else {
				_, _, _ = cl.KV().Get(key, q)
			}
			done <- time.Since(start)
		}()
		return done
	}
	// A query that reaches Consul only after the write answers at once (its index is behind),
	// which looks like a wake-up: the write waits 300 ms for the queries to be sent, and the check
	// is tried three times; a query woken by another key's change fails all three.
	for attempt := 1; ; attempt++ {
		one := watch("qslice/prod/slices/q00/100", false)
		prefix := watch("qslice/prod/slices/", true)
		time.Sleep(300 * time.Millisecond)
		if _, err := cl.KV().Put(&api.KVPair{Key: fmt.Sprintf("qslice/prod/slices/q01/%d", 200+attempt), Value: []byte(`{"node":"x"}`)}, nil); err != nil {
			t.Fatal(err)
		}
		if d := <-prefix; d >= wait {
			t.Errorf("the prefix query was not answered when a key under it changed (after %s)", d)
		}
		d := <-one
		if d >= wait*9/10 {
			break
		}
		if attempt == 3 {
			t.Errorf("the query on one key was answered after %s when another key changed, three times: it must wait out its wait (%s)", d, wait)
			break
		}
	}
	// The end of the session answers a query on a key it held.
	member := watch("qslice/prod/members/node-0001", false)
	time.Sleep(300 * time.Millisecond) // an early answer would pass too: this checks the wake-up, not its absence
	if _, err := cl.Session().Destroy(session, nil); err != nil {
		t.Fatal(err)
	}
	if d := <-member; d >= wait {
		t.Errorf("the query on a member key was not answered when its session ended (after %s)", d)
	}
	if p, _, err := cl.KV().Get("qslice/prod/members/node-0001", nil); err != nil || p == nil || p.Session != "" {
		t.Errorf("member key after its session ended: %+v %v; want it released", p, err)
	}
}

// The designed layout's cost of a failover follows what changed (the failed node's share of the
// slices), not the cluster's size; the layout as built grows with the cluster.
func TestWatchCostScopedIsBoundedByWhatChanged(t *testing.T) {
	queues := []failover.QueueSpec{{Name: "a", Slices: 256}, {Name: "b", Slices: 256}}
	cluster := func(n int) []string {
		var ids []string
		for i := 0; i < n; i++ {
			ids = append(ids, fmt.Sprintf("node-%04d", i))
		}
		return ids
	}
	small, large := cluster(32), cluster(128)
	for _, failed := range []string{"node-0003", "node-0017"} {
		ps, pl := FailoverWatchCost(LayoutPrefix, queues, small, failed), FailoverWatchCost(LayoutPrefix, queues, large, failed)
		perAnswer := func(c WatchCost) int64 { return c.Bytes / int64(c.Answers) }
		if pl.Woken != len(large)-1 || perAnswer(pl) < 2*perAnswer(ps) {
			t.Errorf("prefix layout: %d woken, %d bytes per answer at 128 nodes vs %d at 32: want everyone woken and answers growing with the cluster", pl.Woken, perAnswer(pl), perAnswer(ps))
		}
		ss, sl := FailoverWatchCost(LayoutScoped, queues, small, failed), FailoverWatchCost(LayoutScoped, queues, large, failed)
		// 512 slices: the failed node held 16 at 32 nodes and 4 at 128; it was a candidate in
		// the watch groups of about 3x as many.
		for _, c := range []WatchCost{ss, sl} {
			share := c.Slices / c.Nodes
			if c.Woken > 4*ScopedDepth*share || c.MaxNodeBytes > int64(8*ScopedDepth*share*300) || c.Writes > (1+ScopedDepth)*share*2 {
				t.Errorf("scoped layout at %d nodes: %+v: more than the failed node's %d slices justify", c.Nodes, c, share)
			}
		}
		if sl.Bytes >= ss.Bytes {
			t.Errorf("scoped layout: %d bytes at 128 nodes, %d at 32: the failed node's share shrank, so must the cost", sl.Bytes, ss.Bytes)
		}
	}
}
