package sim

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/failover"
)

// The Consul load of one failover under two watch layouts, computed from the real rendezvous
// ranking and from the JSON Consul encodes for each answer (the sizes and the wake-up rules are
// checked against a real Consul by TestWatchCostModelMatchesConsul):
//
//   - LayoutPrefix, as built: every node runs one recursive blocking query over
//     qslice/<c>/slices/ and one over health/service/qslice. A blocking query on a prefix or on a
//     service's health answers after any change under it, with the whole result. One failover
//     wakes every node for one KV answer when the dead session's keys are released and one per
//     acquisition, and one health answer when its alive check goes critical and one per new
//     holder's Meta; the rate limit (WatchMinInterval) can merge them down to two of each.
//   - LayoutScoped, designed: a blocking query on one key answers only when that key changes.
//     Every node holds a member key qslice/<c>/members/<node> with its session (value: live_since,
//     draining, unavailable), so that Consul releases it in the same write that ends the session,
//     and an inbox key qslice/<c>/inbox/<node> that peers write to. For each slice the first
//     ScopedDepth live candidates of the ranking (home first, then rendezvous) form its watch
//     group: each member watches the member keys of the others, and every member but the holder
//     watches the slice key. When a member dies, its peers see its member key released; the
//     next candidate takes a slice the dead node held (its check index is in the last answer it
//     read), and the highest-ranked survivor writes the inbox of the candidate that enters the
//     group, which then reads the slice key and the member keys of the group once and watches
//     them. A node that joins or comes back reads the member prefix and its slice keys once and
//     writes the inboxes of its groups' members.

// ScopedDepth is how many candidates of each slice watch it in LayoutScoped: with three, a
// slice survives two failures among its candidates that overlap in time without waiting for an
// inbox write (the third is then covered by the entrant's inbox, written by a survivor).
const ScopedDepth = 3

// WatchLayout names a layout of the Consul watches.
type WatchLayout string

// The layouts FailoverWatchCost knows.
const (
	LayoutPrefix WatchLayout = "prefix" // as built: whole KV prefix and whole service health
	LayoutScoped WatchLayout = "scoped" // designed: single keys of the slices and members a node must act on
)

// WatchCost is what one node failure costs the Consul servers under a layout.
type WatchCost struct {
	Layout  WatchLayout
	Nodes   int
	Slices  int
	Woken   int   // nodes that read at least one answer
	Answers int   // answers and reads, all nodes
	Writes  int   // KV writes by qslice nodes (acquisitions, inbox writes)
	Bytes   int64 // bytes of JSON the servers encode for the answers, all nodes
	// MergedBytes is Bytes when the watches' rate limit merges every answer it can (the layout
	// as built: two answers of each watch per node); the truth lies between the two.
	MergedBytes  int64
	MaxNodeBytes int64 // the most one node reads
	// IdleQueries is the number of blocking queries the servers hold while nothing changes,
	// all nodes; each is re-sent once per blocking wait (5 minutes).
	IdleQueries int
}

// MeanWokenBytes is what a woken node reads on average.
func (c WatchCost) MeanWokenBytes() int64 {
	if c.Woken == 0 {
		return 0
	}
	return c.Bytes / int64(c.Woken)
}

// sizes holds the bytes of one answer of each kind, from the JSON Consul encodes.
type sizes struct {
	sliceKey, memberKey, inboxKey int // a single-key GET
	healthEntry                   int // one instance of health/service with its checks
	prefixOverhead                int // the brackets of a list answer
	slicePair                     int // one pair inside a recursive answer
}

// queueCheckOutput is a queue check's output as the catalog has it once synced (Consul syncs
// output-only changes every check_update_interval, 5 minutes by default).
const queueCheckOutput = "4 slices processed here: 3,17,80,201"

func newSizes(queues int) sizes {
	return sizes{
		sliceKey:       len(kvAnswer(kvPair("qslice/prod/slices/q00/123", failover.LockValue{Node: "node-0001"}))),
		memberKey:      len(kvAnswer(kvPair("qslice/prod/members/node-0001", memberValue{LiveSince: 1893456000000, Draining: false}))),
		inboxKey:       len(kvAnswer(kvPair("qslice/prod/inbox/node-0001", inboxValue{From: "node-0002", Slices: []string{"q00/123"}}))),
		healthEntry:    len(healthAnswer(1, queues, queueCheckOutput)) - 2,
		prefixOverhead: 2,
		slicePair:      len(kvAnswer(kvPair("qslice/prod/slices/q00/123", failover.LockValue{Node: "node-0001"}))) - 2,
	}
}

// memberValue and inboxValue are the values the scoped layout would write (for their size).
type memberValue struct {
	LiveSince   int64  `json:"live_since"`
	Draining    bool   `json:"draining"`
	Unavailable string `json:"unavailable,omitempty"`
}

type inboxValue struct {
	From   string   `json:"from"`
	Slices []string `json:"slices"`
}

func kvPair(key string, value any) *api.KVPair {
	v, _ := json.Marshal(value)
	return &api.KVPair{Key: key, Value: v, Session: "5f0a6ac0-1f5e-49a6-9f79-3d1fa1a1b6c1",
		CreateIndex: 123456, ModifyIndex: 234567, LockIndex: 3}
}

// kvAnswer is Consul's answer to a KV GET: a JSON list (not indented unless ?pretty).
func kvAnswer(pairs ...*api.KVPair) []byte {
	b, _ := json.Marshal(pairs)
	return b
}

// healthAnswer is Consul's answer to health/service/qslice for nodes instances of a node with
// queues queue checks whose outputs are output. The types mirror the JSON Consul 1.13 writes
// (the api package's own types encode some fields differently).
func healthAnswer(nodes, queues int, output string) []byte {
	type check struct {
		Node, CheckID, Name, Status, Notes, Output, ServiceID, ServiceName string
		ServiceTags                                                        []string
		Type, Interval, Timeout                                            string
		ExposedPort                                                        int
		Definition                                                         struct{}
		CreateIndex, ModifyIndex                                           uint64
	}
	type addr struct {
		Address string
		Port    int
	}
	type service struct {
		ID, Service       string
		Tags              []string
		Address           string
		TaggedAddresses   map[string]addr
		Meta              map[string]string
		Port              int
		Weights           struct{ Passing, Warning int }
		EnableTagOverride bool
		Proxy             struct {
			Mode        string
			MeshGateway struct{}
			Expose      struct{}
		}
		Connect                  struct{}
		PeerName                 string
		CreateIndex, ModifyIndex uint64
	}
	type node struct {
		ID, Node, Address, Datacenter string
		TaggedAddresses               map[string]string
		Meta                          map[string]string
		CreateIndex, ModifyIndex      uint64
	}
	type entry struct {
		Node    node
		Service service
		Checks  []check
	}
	var out []entry
	for i := 0; i < nodes; i++ {
		name := fmt.Sprintf("node-%04d", i)
		id := "qslice-prod-" + name
		tags := []string{"cluster-prod"}
		e := entry{
			Node: node{ID: "eaae968b-615e-9329-b565-bf344fba05f9", Node: name, Address: "10.0.0.1", Datacenter: "dc1",
				TaggedAddresses: map[string]string{"lan": "10.0.0.1", "lan_ipv4": "10.0.0.1", "wan": "10.0.0.1", "wan_ipv4": "10.0.0.1"},
				Meta:            map[string]string{"consul-network-segment": ""}, CreateIndex: 6, ModifyIndex: 50},
			Service: service{ID: id, Service: "qslice", Tags: tags, Address: "10.0.0.1", Port: 9466,
				TaggedAddresses: map[string]addr{"lan_ipv4": {"10.0.0.1", 9466}, "wan_ipv4": {"10.0.0.1", 9466}},
				Meta: map[string]string{"cluster": "prod", "node": name, "version": "1.4.0", "queues": "q00:256,q01:256,q02:256",
					"owned": "q00:3,17 q01:80 q02:201", "draining": "false", "live_since": "1893456000000"},
				CreateIndex: 51, ModifyIndex: 51},
			Checks: []check{
				{Node: name, CheckID: "serfHealth", Name: "Serf Health Status", Status: "passing", Output: "Agent alive and reachable",
					ServiceTags: []string{}, CreateIndex: 6, ModifyIndex: 6},
				{Node: name, CheckID: id + ":alive", Name: "qslice node alive", Status: "passing",
					Notes:     "Passed by qslice while the node is healthy; the node's slice locks are bound to it.",
					ServiceID: id, ServiceName: "qslice", ServiceTags: tags, Type: "ttl", CreateIndex: 51, ModifyIndex: 51},
			},
		}
		e.Service.Weights.Passing, e.Service.Weights.Warning = 1, 1
		for q := 0; q < queues; q++ {
			e.Checks = append(e.Checks, check{Node: name, CheckID: fmt.Sprintf("%s:queue:q%02d", id, q), Name: fmt.Sprintf("qslice queue q%02d", q),
				Status: "passing", Notes: "Worst health of the slices of this queue owned by the node.", Output: output,
				ServiceID: id, ServiceName: "qslice", ServiceTags: tags, Type: "ttl", CreateIndex: 51, ModifyIndex: 51})
		}
		out = append(out, e)
	}
	b, _ := json.Marshal(out)
	return b
}

// topCandidates returns, per slice, its first n candidates: rendezvous order over nodes.
func topCandidates(queues []failover.QueueSpec, nodes []string, n int) map[failover.SliceID][]string {
	out := map[failover.SliceID][]string{}
	type ranked struct {
		node string
		w    uint64
	}
	for _, q := range queues {
		for i := 0; i < q.Slices; i++ {
			s := failover.SliceID{Queue: q.Name, Index: i}
			top := make([]ranked, 0, n+1)
			for _, node := range nodes {
				r := ranked{node, failover.Rendezvous(s, node)}
				pos, _ := slices.BinarySearchFunc(top, r, func(a, b ranked) int {
					return cmp.Or(cmp.Compare(b.w, a.w), cmp.Compare(a.node, b.node))
				})
				if pos < n {
					top = slices.Insert(top, pos, r)
					if len(top) > n {
						top = top[:n]
					}
				}
			}
			for _, r := range top {
				out[s] = append(out[s], r.node)
			}
		}
	}
	return out
}

// FailoverWatchCost computes what the failure of node failed costs the Consul servers under
// layout, in a cluster of nodes serving queues where every node is live and settled and every
// slice is at its home.
func FailoverWatchCost(layout WatchLayout, queues []failover.QueueSpec, nodes []string, failed string) WatchCost {
	return failoverWatchCost(layout, queues, nodes, topCandidates(queues, nodes, ScopedDepth+1), failed)
}

// failoverWatchCost is FailoverWatchCost with each slice's first ScopedDepth+1 candidates.
func failoverWatchCost(layout WatchLayout, queues []failover.QueueSpec, nodes []string, top map[failover.SliceID][]string, failed string) WatchCost {
	total := 0
	for _, q := range queues {
		total += q.Slices
	}
	sz := newSizes(len(queues))
	cost := WatchCost{Layout: layout, Nodes: len(nodes), Slices: total}
	perNode := map[string]int64{}
	read := func(node string, bytes int) {
		perNode[node] += int64(bytes)
		cost.Answers++
	}
	switch layout {
	case LayoutPrefix:
		kv := int64(sz.prefixOverhead + total*sz.slicePair)
		health := int64(sz.prefixOverhead + len(nodes)*sz.healthEntry)
		for _, owners := range top {
			if owners[0] == failed {
				cost.Writes++ // one acquisition per slice of the failed node
			}
		}
		// Each watch answers once for the session's end (its keys released; its alive check
		// critical) and once per acquisition (the key; the new holder's Meta), unless the rate
		// limit (WatchMinInterval) merges answers: 1 + moved slices is what a real Consul gave
		// each survivor with a 50 ms limit (TestWatchLoadPerFailoverMatchesModel).
		answers := int64(1 + cost.Writes)
		for _, n := range nodes {
			if n == failed {
				continue
			}
			perNode[n] = answers * (kv + health)
			cost.Answers += 2 * int(answers)
			cost.MergedBytes += 2 * (kv + health)
		}
		cost.IdleQueries = 2 * len(nodes)
	case LayoutScoped:
		// Idle: each node watches its inbox, the member keys of its groups' other members, and
		// the slice keys of its groups but the slices it holds.
		memberWatch := map[string]map[string]bool{}
		sliceWatch := map[string]int{}
		for _, cands := range top {
			group := cands[:min(ScopedDepth, len(cands))]
			for i, a := range group {
				if memberWatch[a] == nil {
					memberWatch[a] = map[string]bool{}
				}
				for _, b := range group {
					if b != a {
						memberWatch[a][b] = true
					}
				}
				if i > 0 {
					sliceWatch[a]++
				}
			}
		}
		for _, n := range nodes {
			cost.IdleQueries += 1 + len(memberWatch[n]) + sliceWatch[n]
		}
		// The session ends: one write releases the member key and the held slice keys. Every
		// node watching the member key reads it once; every watcher of a released slice key
		// reads it once.
		for _, n := range nodes {
			if n != failed && memberWatch[n][failed] {
				read(n, sz.memberKey)
			}
		}
		for _, cands := range top {
			group := cands[:min(ScopedDepth, len(cands))]
			i := slices.Index(group, failed)
			if i < 0 {
				continue
			}
			if i == 0 {
				for _, w := range group[1:] {
					read(w, sz.sliceKey) // the key released
				}
				// The next candidate acquires; the others in the group read the key again.
				cost.Writes++
				for _, w := range group[2:] {
					read(w, sz.sliceKey)
				}
			}
			// The candidate after the group enters it: a survivor writes its inbox; it reads the
			// inbox, the slice key and the member keys of the group's survivors once.
			if len(cands) > ScopedDepth {
				entrant := cands[ScopedDepth]
				cost.Writes++
				read(entrant, sz.inboxKey)
				read(entrant, sz.sliceKey)
				for _, m := range group {
					if m == failed {
						continue
					}
					if !memberWatch[entrant][m] { // the entrant watches the group's survivors
						read(entrant, sz.memberKey)
						if memberWatch[entrant] == nil {
							memberWatch[entrant] = map[string]bool{}
						}
						memberWatch[entrant][m] = true
					}
					if !memberWatch[m][entrant] { // and they watch the entrant
						read(m, sz.memberKey)
						memberWatch[m][entrant] = true
					}
				}
			}
		}
	default:
		panic("unknown layout " + string(layout))
	}
	if layout == LayoutScoped {
		for _, b := range perNode {
			cost.MergedBytes += b
		}
	}
	for _, b := range perNode {
		if b > 0 {
			cost.Woken++
			cost.Bytes += b
			cost.MaxNodeBytes = max(cost.MaxNodeBytes, b)
		}
	}
	return cost
}

// BenchWatch prints the Consul load of one failover under both layouts at 50 nodes x 8 queues x
// 64 slices, 200 and 1,000 nodes x 16 x 256: the mean over failures of nodes spread over the
// cluster (every node's failure below 200 nodes, every fifth above).
func BenchWatch(w io.Writer) error {
	type size struct{ nodes, queues, slices int }
	fmt.Fprintln(w, "Consul load of one node failure, mean over failures (the model: answer sizes checked against a real Consul by")
	fmt.Fprintln(w, "TestWatchCostModelMatchesConsul, answers per failover by TestWatchLoadPerFailoverMatchesModel). bytes: JSON the servers")
	fmt.Fprintln(w, "encode for the watches' answers, every answer separate; merged: the watches' rate limit merging all it can.")
	fmt.Fprintf(w, "%-18s %-7s %6s %8s %7s %7s %11s %11s %11s %10s\n", "cluster", "layout", "woken", "answers", "writes", "idle q", "bytes", "merged", "mean woken", "max node")
	for _, c := range []size{{50, 8, 64}, {200, 16, 256}, {1000, 16, 256}} {
		var queues []failover.QueueSpec
		for q := 0; q < c.queues; q++ {
			queues = append(queues, failover.QueueSpec{Name: fmt.Sprintf("q%02d", q), Slices: c.slices})
		}
		var nodes []string
		for i := 0; i < c.nodes; i++ {
			nodes = append(nodes, fmt.Sprintf("node-%04d", i))
		}
		top := topCandidates(queues, nodes, ScopedDepth+1)
		step := 1
		if c.nodes > 200 {
			step = 5
		}
		for _, layout := range []WatchLayout{LayoutPrefix, LayoutScoped} {
			var sum WatchCost
			n := 0
			for i := 0; i < len(nodes); i += step {
				cst := failoverWatchCost(layout, queues, nodes, top, nodes[i])
				sum.Woken += cst.Woken
				sum.Answers += cst.Answers
				sum.Writes += cst.Writes
				sum.Bytes += cst.Bytes
				sum.MergedBytes += cst.MergedBytes
				sum.MaxNodeBytes = max(sum.MaxNodeBytes, cst.MaxNodeBytes)
				sum.IdleQueries = cst.IdleQueries
				n++
			}
			name := fmt.Sprintf("%d x %d x %d", c.nodes, c.queues, c.slices)
			fmt.Fprintf(w, "%-18s %-7s %6.1f %8.1f %7.1f %7d %11s %11s %11s %10s\n", name, layout,
				float64(sum.Woken)/float64(n), float64(sum.Answers)/float64(n), float64(sum.Writes)/float64(n), sum.IdleQueries,
				humanBytes(float64(sum.Bytes)/float64(n)), humanBytes(float64(sum.MergedBytes)/float64(n)),
				humanBytes(float64(sum.Bytes)/float64(sum.Woken)), humanBytes(float64(sum.MaxNodeBytes)))
		}
	}
	return nil
}

func humanBytes(b float64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.2f GB", b/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.1f MB", b/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.1f KB", b/1e3)
	default:
		return strings.TrimSpace(fmt.Sprintf("%4.0f B", b))
	}
}
