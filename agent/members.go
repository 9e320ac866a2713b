package agent

import (
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/exporters"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/consul"
)

// Member states.
const (
	MemberUp          = "up"          // its alive check passes
	MemberDraining    = "draining"    // up, but drained: it holds no slice and takes none
	MemberMaintenance = "maintenance" // put in maintenance in Consul: it takes no slice
	MemberDown        = "down"        // registered but failing (alive check or the Consul agent), or not registered while it holds slices
)

// Member is one node of the cluster, as `qslice members` and the status page show it.
type Member struct {
	Node      string    `json:"node"`
	Address   string    `json:"address"` // host:port of its metrics and status endpoint
	Version   string    `json:"version"`
	LiveSince time.Time `json:"live_since,omitzero"` // when its current run became healthy
	State     string    `json:"state"`               // Member* constants
	// Lease is the status of the node's alive check, to which its session and slice locks are
	// bound: passing while it holds its lease.
	Lease        string        `json:"lease"`
	Draining     bool          `json:"draining"`
	SlicesOwned  int           `json:"slices_owned"`
	SlicesHome   int           `json:"slices_home"` // slices it would own with every node up
	Queues       []MemberCheck `json:"queues"`      // health of its per-queue checks
	Problem      string        `json:"problem,omitempty"`
	ThisNode     bool          `json:"this_node,omitempty"`
	registration bool
}

// MemberCheck is the health of one queue on a member.
type MemberCheck struct {
	Queue  string `json:"queue"`
	Status string `json:"status"`
	Output string `json:"output,omitempty"`
}

// Members is the answer of /api/members.
type Members struct {
	Cluster     string    `json:"cluster"`
	Mode        string    `json:"mode"`
	Members     []Member  `json:"members"`
	Error       string    `json:"error,omitempty"` // Consul could not be read: the list is the last one read
	GeneratedAt time.Time `json:"generated_at"`
}

// memberSource gives the cluster's service instances: the Consul coordinator's membership watch
// (consul.Coordinator.MemberEntries), read rather than watched a second time.
type memberSource interface {
	MemberEntries() (entries []*api.ServiceEntry, read bool, err error)
}

var _ memberSource = (*consul.Coordinator)(nil)

// memberFromEntry reads one service instance.
func memberFromEntry(e *api.ServiceEntry) Member {
	s := e.Service
	addr := s.Address
	if addr == "" && e.Node != nil {
		addr = e.Node.Address
	}
	if s.Port != 0 {
		addr = net.JoinHostPort(addr, strconv.Itoa(s.Port))
	}
	m := Member{Node: s.Meta["node"], Address: addr, Version: s.Meta["version"], Draining: s.Meta["draining"] == "true",
		Lease: api.HealthCritical, Queues: []MemberCheck{}, registration: true}
	if ms, err := strconv.ParseInt(s.Meta["live_since"], 10, 64); err == nil && ms > 0 {
		m.LiveSince = time.UnixMilli(ms).UTC()
	}
	var problems []string
	maintenance := false
	for _, ch := range e.Checks {
		switch {
		case ch.CheckID == s.ID+":alive":
			m.Lease = ch.Status
			if ch.Status != api.HealthPassing {
				problems = append(problems, "alive check "+ch.Status+checkOutput(ch))
			}
		case strings.HasPrefix(ch.CheckID, s.ID+":queue:"):
			m.Queues = append(m.Queues, MemberCheck{Queue: strings.TrimPrefix(ch.CheckID, s.ID+":queue:"), Status: ch.Status, Output: strings.TrimSpace(ch.Output)})
		case strings.HasPrefix(ch.CheckID, "_service_maintenance:") || ch.CheckID == "_node_maintenance":
			if ch.Status == api.HealthCritical {
				maintenance = true
				problems = append(problems, "in maintenance"+checkOutput(ch))
			}
		case ch.ServiceID == "" && ch.Status != api.HealthPassing:
			problems = append(problems, ch.Name+" "+ch.Status+checkOutput(ch))
		}
	}
	sort.Slice(m.Queues, func(i, j int) bool { return m.Queues[i].Queue < m.Queues[j].Queue })
	switch {
	case maintenance:
		m.State = MemberMaintenance
	case len(problems) > 0:
		m.State = MemberDown
	case m.Draining:
		m.State = MemberDraining
	default:
		m.State = MemberUp
	}
	m.Problem = strings.Join(problems, "; ")
	return m
}

func checkOutput(ch *api.HealthCheck) string {
	if out := strings.TrimSpace(ch.Output); out != "" {
		return ": " + out
	}
	return ""
}

// Members lists the cluster's nodes: every registered service instance of this cluster, plus
// nodes that hold slices without being registered; with the slices each owns and is home for.
func (a *Agent) Members() Members {
	cs := a.coord.Status()
	out := Members{Cluster: a.cfg.Cluster, Mode: cs.Mode, Members: []Member{}, GeneratedAt: a.opts.Clock.Now().UTC()}
	owned, home := map[string]int{}, map[string]int{}
	for _, s := range cs.Slices {
		if cs.Mode == "standalone" {
			s.Owner, s.Home = nameIfStandalone(s.Owner, a.cfg.Node), nameIfStandalone(s.Home, a.cfg.Node)
		}
		if s.Owner != "" {
			owned[s.Owner]++
		}
		if s.Home != "" {
			home[s.Home]++
		}
	}
	byNode := map[string]*Member{}
	known := true // the registered members are known
	if a.members == nil {
		m := Member{Node: a.cfg.Node, Address: a.Addr(), Version: a.opts.Version, State: MemberUp, Lease: api.HealthPassing,
			Draining: cs.Draining, Queues: []MemberCheck{}, registration: true}
		if cs.Draining {
			m.State = MemberDraining
		}
		byNode[m.Node] = &m
	} else {
		entries, read, err := a.members.MemberEntries()
		known = read
		if err != nil {
			out.Error = "consul: " + err.Error()
		} else if !read {
			out.Error = "consul: members not read yet"
		}
		for _, e := range entries {
			if e.Service == nil || e.Service.Meta["cluster"] != a.cfg.Cluster || e.Service.Meta["node"] == "" {
				continue
			}
			m := memberFromEntry(e)
			byNode[m.Node] = &m
		}
	}
	for node := range owned {
		if _, ok := byNode[node]; !ok && known {
			byNode[node] = &Member{Node: node, State: MemberDown, Lease: "none", Queues: []MemberCheck{},
				Problem: "holds slices but is not registered in Consul (its service was deregistered)"}
		}
	}
	for node, m := range byNode {
		m.SlicesOwned, m.SlicesHome, m.ThisNode = owned[node], home[node], node == a.cfg.Node
		out.Members = append(out.Members, *m)
	}
	sort.Slice(out.Members, func(i, j int) bool { return out.Members[i].Node < out.Members[j].Node })
	return out
}

// memberProblems are the status's problems about members: one line per node down.
func memberProblems(ms Members) []string {
	var out []string
	for _, m := range ms.Members {
		if m.State == MemberDown {
			out = append(out, fmt.Sprintf("member %s: down: %s", m.Node, m.Problem))
		}
	}
	return out
}

// advertise sets what the coordinator registers for Prometheus's consul_sd_configs: the bound
// metrics address and port, the "metrics" tag, and the scheme and path in Meta.
func (a *Agent) advertise(fc *failover.ConsulConfig) error {
	addrs := a.server.Addrs()
	if len(addrs) == 0 {
		return nil
	}
	host, port, err := net.SplitHostPort(addrs[0].String())
	if err != nil {
		return fmt.Errorf("listen address %s: %w", addrs[0], err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "" // all interfaces: Consul advertises the node's address
	}
	fc.ServiceAddress = host
	fc.ServicePort, _ = strconv.Atoi(port)
	fc.ServiceTags = []string{"metrics"}
	scheme := "http"
	if tls, err := exporters.WebConfigServesTLS(a.cfg.WebConfig); err != nil {
		return fmt.Errorf("web_config: %w", err)
	} else if tls {
		scheme = "https"
	}
	fc.ServiceMeta = map[string]string{"metrics_path": "/metrics", "metrics_scheme": scheme}
	return nil
}

// allowedHosts are the Host names the HTTP listener answers to besides IP addresses and
// localhost: the host name (short and as configured), the node name, the listen host, and
// control.hosts.
func allowedHosts(cfg *config.Config) []string {
	hosts := []string{cfg.Node}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
		if short, _, ok := strings.Cut(h, "."); ok {
			hosts = append(hosts, short)
		}
	}
	if h, _, err := net.SplitHostPort(cfg.Listen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	return append(hosts, cfg.Control.Hosts...)
}
