package agent

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/probes"
)

// Status is the node's view of the cluster, served at /api/status and printed by `qslice status`.
type Status struct {
	Node                  string            `json:"node"`
	Mode                  string            `json:"mode"` // standalone or consul
	Draining              bool              `json:"draining"`
	LeaseValid            bool              `json:"lease_valid"`
	LeaseRemainingSeconds float64           `json:"lease_remaining_seconds"`
	ConsulError           string            `json:"consul_error,omitempty"`
	Slices                []SliceView       `json:"slices"`
	Locks                 []probes.LockView `json:"locks"`
	Filesystems           []FSView          `json:"filesystems"` // one per queue worked here
	Members               []Member          `json:"members"`
	WorkerPools           []PoolView        `json:"worker_pools"` // one per queue with handler.worker worked here
	Problems              []string          `json:"problems"`     // unowned or unhealthy slices, failed scans: non-empty makes `status` exit 3
	GeneratedAt           time.Time         `json:"generated_at"`
}

// FSView is the filesystem health of one queue directory on this node.
type FSView struct {
	Queue            string    `json:"queue"`
	Dir              string    `json:"dir"`
	Available        bool      `json:"available"`
	Since            time.Time `json:"since"`
	Reason           string    `json:"reason,omitempty"`
	LastProbeSeconds float64   `json:"last_probe_seconds"`
	LastGood         time.Time `json:"last_good,omitzero"`
	StuckFiles       []string  `json:"stuck_files,omitempty"` // abandoned messages whose operations have not returned
}

// PoolView is the persistent worker pool (handler.worker) of one queue on this node.
type PoolView struct {
	Queue               string    `json:"queue"`
	Size                int       `json:"size"`     // worker processes it keeps (the queue's concurrency)
	Live                int       `json:"live"`     // worker processes ready for messages now
	PIDs                []int     `json:"pids"`     // of the live workers
	Restarts            int       `json:"restarts"` // workers started again after one ended (crashes and kills)
	CrashLoop           bool      `json:"crash_loop"`
	CrashLoopReason     string    `json:"crash_loop_reason,omitempty"`
	LastProtocolError   string    `json:"last_protocol_error,omitempty"`
	LastProtocolErrorAt time.Time `json:"last_protocol_error_at,omitzero"`
}

// SliceView is one slice in the status.
type SliceView struct {
	Queue            string  `json:"queue"`
	Slice            int     `json:"slice"`
	Owner            string  `json:"owner"` // "" when unowned
	Home             string  `json:"home,omitempty"`
	State            string  `json:"state"`
	Ready            int     `json:"ready"`
	InFlight         int     `json:"in_flight"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	Health           string  `json:"health,omitempty"` // for slices this node owns
	HealthOutput     string  `json:"health_output,omitempty"`
	LeaseLeftSeconds float64 `json:"lease_left_seconds,omitempty"` // for slices this node owns
}

// Status builds the node's current status.
func (a *Agent) Status() Status {
	cs := a.coord.Status()
	st := Status{Node: a.cfg.Node, Mode: cs.Mode, Draining: cs.Draining, LeaseValid: cs.LeaseValid,
		LeaseRemainingSeconds: cs.LeaseRemaining.Seconds(), ConsulError: cs.ConsulError, GeneratedAt: a.opts.Clock.Now().UTC(),
		Slices: []SliceView{}, Locks: []probes.LockView{}, Problems: []string{}}
	if st.ConsulError != "" {
		st.Problems = append(st.Problems, "consul: "+st.ConsulError)
	}
	st.Filesystems = []FSView{}
	for _, fs := range a.fs.States() {
		v := FSView{Queue: fs.Name, Dir: fs.Dir, Available: fs.Available, Since: fs.Since.UTC(), Reason: fs.Reason,
			LastProbeSeconds: fs.LastLatency.Seconds(), LastGood: fs.LastGood.UTC()}
		if r := a.runners[fs.Name]; r != nil {
			v.StuckFiles = r.StuckFiles()
		}
		if !fs.Available {
			st.Problems = append(st.Problems, fmt.Sprintf("queue %s: filesystem of %s unavailable on this node: %s", fs.Name, fs.Dir, fs.Reason))
		}
		st.Filesystems = append(st.Filesystems, v)
	}
	st.WorkerPools = []PoolView{}
	for _, name := range slices.Sorted(maps.Keys(a.pools)) {
		ps := a.pools[name].Status()
		v := PoolView{Queue: ps.Queue, Size: ps.Workers, Live: len(ps.Live), PIDs: ps.Live, Restarts: ps.Restarts,
			CrashLoop: ps.CrashLoop, CrashLoopReason: ps.CrashLoopReason, LastProtocolError: ps.LastProtocolError}
		if !ps.LastProtocolErrorAt.IsZero() {
			v.LastProtocolErrorAt = ps.LastProtocolErrorAt.UTC()
		}
		if ps.CrashLoop {
			st.Problems = append(st.Problems, fmt.Sprintf("queue %s: persistent workers in a crash loop: %s", name, ps.CrashLoopReason))
		}
		st.WorkerPools = append(st.WorkerPools, v)
	}
	ms := a.Members()
	st.Members = ms.Members
	st.Problems = append(st.Problems, memberProblems(ms)...)
	mine := map[failover.SliceID]bool{}
	for _, o := range cs.Owned {
		mine[o.Slice] = true
	}
	snap := a.probe.Latest()
	perQueue := map[string]*probes.QueueSnapshot{}
	if snap != nil {
		for i := range snap.Queues {
			q := &snap.Queues[i]
			perQueue[q.Config.Name] = q
			if !q.OK() {
				st.Problems = append(st.Problems, fmt.Sprintf("queue %s: scan failed: %v", q.Config.Name, q.Err))
			}
		}
		for i := range snap.Locks {
			l := &snap.Locks[i]
			for _, in := range l.Locks {
				st.Locks = append(st.Locks, probes.NewLockView(in, l.At))
			}
			if !l.OK() {
				st.Problems = append(st.Problems, fmt.Sprintf("lock dir %s: scan failed: %v", l.Config.Dir, l.Err))
			}
		}
	}
	for _, s := range cs.Slices {
		v := SliceView{Queue: s.Slice.Queue, Slice: s.Slice.Index, Owner: s.Owner, Home: s.Home, State: s.State}
		if cs.Mode == "standalone" {
			// The standalone coordinator has no node names; this node is the owner and the home.
			v.Owner, v.Home = nameIfStandalone(v.Owner, a.cfg.Node), nameIfStandalone(v.Home, a.cfg.Node)
		}
		if q := perQueue[v.Queue]; q != nil && q.HasData && v.Slice < len(q.PerSlice) {
			ps := q.PerSlice[v.Slice]
			v.Ready, v.InFlight = ps.Ready, ps.InFlight
			v.OldestAgeSeconds = ps.OldestReadyAge(q.At).Seconds()
		}
		if mine[s.Slice] {
			h := a.SliceHealth(s.Slice)
			v.Health, v.HealthOutput = h.Status, h.Output
			v.LeaseLeftSeconds = cs.LeaseRemaining.Seconds()
			if h.Status != failover.StatusPassing {
				st.Problems = append(st.Problems, fmt.Sprintf("%s/%d: %s: %s", v.Queue, v.Slice, h.Status, h.Output))
			}
		}
		if v.Owner == "" {
			st.Problems = append(st.Problems, fmt.Sprintf("%s/%d: unowned: no live node holds it", v.Queue, v.Slice))
		}
		st.Slices = append(st.Slices, v)
	}
	sort.Slice(st.Slices, func(i, j int) bool {
		if st.Slices[i].Queue != st.Slices[j].Queue {
			return st.Slices[i].Queue < st.Slices[j].Queue
		}
		return st.Slices[i].Slice < st.Slices[j].Slice
	})
	return st
}

func nameIfStandalone(name, node string) string {
	if name == failover.StandaloneNode {
		return node
	}
	return name
}

//go:embed status.html
var statusPage []byte

func (a *Agent) registerAPI() {
	a.server.Handle("GET /api/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	}))
	a.server.Handle("GET /api/members", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Members())
	}))
	// State changes: only for a known requester, logged with it and counted (exporters.HandleControl).
	a.server.HandleControl("drain", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.coord.Drain(r.Context()); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "drained: this node holds no slice and takes none until undrained"})
	}))
	a.server.HandleControl("undrain", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.coord.Undrain(r.Context()); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "undrained: this node takes slices again"})
	}))
	a.server.HandleControl("leave", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.Leave(r.Context()); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "left: every slice handed off, session ended, service deregistered; the process exits"})
	}))
	a.server.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(statusPage)
	}))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
