package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind string

// Fault kinds.
const (
	// KindKill: SIGKILL of every process of the node's session (qslice and its handlers), as a
	// crash of the machine; the node is started again after Hold.
	KindKill Kind = "kill"
	// KindPause: SIGSTOP of every process of the node's session for Hold, then SIGCONT, as a
	// paused virtual machine.
	KindPause Kind = "pause"
	// KindConsulRestart: Consul is stopped and started again on the same data (Hold unused).
	KindConsulRestart Kind = "consul-restart"
	// KindRestart: SIGTERM (a stop for a restart: in-flight messages finish, the slice locks
	// stay), then a start after Hold: the new process resumes the slices in place when it comes
	// within the TTL, else they move after TTL + lock-delay.
	KindRestart Kind = "restart"
	// KindDrain: `qslice drain`, then `qslice drain --undo` after Hold.
	KindDrain Kind = "drain"
	// KindPartition: the node is cut off Consul for Hold while its processes run on (its proxy
	// to Consul closes every connection and refuses new ones), then the connection comes back,
	// as a network partition between a machine and the Consul servers.
	KindPartition Kind = "partition"
	// KindBlackhole: the node is cut off Consul for Hold while its processes run on, the harsh
	// way: its proxy forwards nothing on the open connections and holds new ones silent (no
	// reset, no close), then new connections are forwarded again while those opened until then
	// stay silent for good, as a partition that drops packets and loses the connections' state
	// (a firewall or NAT dropping its flow table). The node hears nothing on an old connection
	// until its own timeouts.
	KindBlackhole Kind = "blackhole"
	// KindFSCut: the node's own mount of the shared filesystem stops answering for Hold (its
	// GlusterFS client's link to the server drops every packet) while Consul and the other
	// nodes' mounts work on, as a hung NFS mount on one host; then the link comes back, and
	// operations blocked in the filesystem meanwhile complete late. Needs a cluster on
	// per-node mounts (ClusterConfig.FS).
	KindFSCut Kind = "fscut"
	// KindStall: SIGSTOP of every process of the node's session for Hold, shorter than the
	// stall the timing tolerates (ScheduleParams.StallMax: the node keeps its session), then
	// SIGCONT: a node briefly slow (a GC pause, a stalled disk, a VM migration).
	KindStall Kind = "stall"
	// KindBlip: the node is cut off Consul as by KindPartition, but for less than the cut the
	// timing tolerates (ScheduleParams.BlipMax: the node keeps its session), then healed: a
	// network blip or a restart of the local Consul agent.
	KindBlip Kind = "blip"
)

// Kinds lists every fault kind, in report order.
var Kinds = []Kind{KindKill, KindPause, KindConsulRestart, KindRestart, KindDrain, KindPartition, KindBlackhole, KindFSCut, KindStall, KindBlip}

// ParseKinds parses "kill=2,pause=2" into counts.
func ParseKinds(s string) (map[Kind]int, error) {
	out := map[Kind]int{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n := 0
		if _, err := fmt.Sscanf(v, "%d", &n); !ok || err != nil || n < 0 {
			return nil, fmt.Errorf("parse faults %q: want kind=count, got %q", s, part)
		}
		known := false
		for _, kk := range Kinds {
			known = known || Kind(k) == kk
		}
		if !known {
			return nil, fmt.Errorf("parse faults %q: unknown kind %q (want one of %v)", s, k, Kinds)
		}
		out[Kind(k)] = n
	}
	return out, nil
}

// Fault is one planned fault. Faults run one after the other: apply, hold, recover, wait for
// the cluster to own every slice again, then Gap.
type Fault struct {
	Seq  int
	Kind Kind
	Node int           // index of the node (unused for KindConsulRestart)
	Hold time.Duration // how long the fault lasts before recovery
	Gap  time.Duration // pause after recovery before the next fault
}

func (f Fault) String() string {
	if f.Kind == KindConsulRestart {
		return fmt.Sprintf("#%d %s", f.Seq, f.Kind)
	}
	return fmt.Sprintf("#%d %s node %d for %s", f.Seq, f.Kind, f.Node, f.Hold.Round(time.Millisecond))
}

// ScheduleParams bounds the random choices of a schedule.
type ScheduleParams struct {
	Nodes int
	// Lease is the longest a node may process without renewing (min(TTL, LockDelay) minus the
	// margin): a pause lasts at least Lease + 200 ms, so the paused node's lease always lapses.
	Lease time.Duration
	// Takeover is how long the others need to take a dead node's slices (TTL + LockDelay + a
	// second): kills, partitions and blackholes hold at least that, so failover happens before
	// the restart or the healing; pauses are drawn up to Takeover + 2 s, so some end before the
	// others could take over and some after.
	Takeover time.Duration
	GapMin   time.Duration
	GapMax   time.Duration
	// FSHold is the shortest hold of an fscut (drawn up to 2 s more); 0 means 20 s: longer than
	// the filesystem timeout plus a hand-off, shorter than GlusterFS's 42 s ping-timeout, so
	// operations blocked by the cut are carried out late, at the healing.
	FSHold time.Duration
	// StallMax and BlipMax bound stalls and blips: they last between half of it and it. They
	// are the stall and the cut the nodes' timings tolerate without losing their session
	// (failover.ConsulConfig.StallTolerance and CutTolerance).
	StallMax, BlipMax time.Duration
}

// NewSchedule draws a deterministic schedule from seed: counts[k] faults of kind k in a random
// order. The same seed and parameters give the same schedule.
func NewSchedule(seed uint64, counts map[Kind]int, p ScheduleParams) []Fault {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	var kinds []Kind
	for _, k := range Kinds {
		for range counts[k] {
			kinds = append(kinds, k)
		}
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	out := make([]Fault, 0, len(kinds))
	for i, k := range kinds {
		out = append(out, drawFault(rng, i, k, p))
	}
	return out
}

// randomKinds are the kinds NextFault draws from: every kind but KindBlackhole, KindFSCut (it
// needs a cluster on per-node mounts), KindStall and KindBlip, which a run gets only by count
// (SoakOptions.Faults), so that a seed keeps drawing the schedule it drew before they existed.
var randomKinds = []Kind{KindKill, KindPause, KindConsulRestart, KindRestart, KindDrain, KindPartition}

// NextFault draws one more fault of a random kind of randomKinds (soak runs of unbounded length).
func NextFault(rng *rand.Rand, seq int, p ScheduleParams) Fault {
	return drawFault(rng, seq, randomKinds[rng.IntN(len(randomKinds))], p)
}

// NewRand returns the generator NextFault expects, seeded deterministically.
func NewRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)) }

func drawFault(rng *rand.Rand, seq int, k Kind, p ScheduleParams) Fault {
	between := func(lo, hi time.Duration) time.Duration {
		if hi <= lo {
			return lo
		}
		return lo + time.Duration(rng.Int64N(int64(hi-lo)))
	}
	f := Fault{Seq: seq, Kind: k, Node: rng.IntN(max(p.Nodes, 1)), Gap: between(p.GapMin, p.GapMax)}
	switch k {
	case KindKill, KindPartition, KindBlackhole:
		f.Hold = between(p.Takeover, p.Takeover+2*time.Second)
	case KindPause:
		f.Hold = between(p.Lease+200*time.Millisecond, p.Takeover+2*time.Second)
	case KindRestart:
		f.Hold = between(500*time.Millisecond, 3*time.Second)
	case KindDrain:
		f.Hold = between(time.Second, 4*time.Second)
	case KindFSCut:
		lo := p.FSHold
		if lo == 0 {
			lo = 20 * time.Second
		}
		f.Hold = between(lo, lo+2*time.Second)
	case KindStall:
		f.Hold = between(p.StallMax/2, p.StallMax)
	case KindBlip:
		f.Hold = between(p.BlipMax/2, p.BlipMax)
	}
	return f
}
