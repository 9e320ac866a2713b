package failover

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/qslice/qslice/runner/queue"
)

// QueueSpec describes one queue and how many slices it is cut into.
type QueueSpec struct {
	Name   string
	Slices int
	// Home optionally ranks nodes explicitly for a slice: Home[i] lists node IDs, best first. The
	// first live, settled node of the list owns slice i; when none is, rendezvous hashing over
	// the other nodes decides.
	Home map[int][]string
}

// TLSConfig points at the files for HTTPS to Consul. Empty fields keep what api.DefaultConfig
// read from CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
// CONSUL_TLS_SERVER_NAME and CONSUL_HTTP_SSL_VERIFY.
type TLSConfig struct {
	CAFile             string
	CAPath             string
	CertFile           string
	KeyFile            string
	ServerName         string
	InsecureSkipVerify bool
}

// ConsulConfig configures the Consul coordinator (package failover/consul). Zero durations take the defaults below.
type ConsulConfig struct {
	// Cluster names this qslice cluster: KV prefix qslice/<Cluster>/ and service Meta "cluster".
	Cluster string
	// NodeID names this node; unique in the cluster (two processes with one NodeID fight over
	// the same slices).
	NodeID string

	// Address, Token and TLS override api.DefaultConfig() (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
	// CONSUL_CACERT, ...) when non-empty. Address is host:port or scheme://host:port.
	Address string
	Token   string
	TLS     TLSConfig

	// TTL of the node's liveness check; the session, and so every slice lock, is bound to it.
	TTL time.Duration
	// LockDelay is the session's lock-delay: after the session is invalidated, nobody may take
	// its locks for this long. At most 60s (Consul silently caps it there).
	LockDelay time.Duration
	// HoldDown is how long a node must have been healthy (in the observer's view) before slices
	// come back to it (fail-back) or it gets its share after joining.
	HoldDown time.Duration
	// StuckHandoff hands a slice whose health stays critical for StuckAfter to the next node.
	StuckHandoff bool
	StuckAfter   time.Duration

	Queues []QueueSpec

	// DeregisterCriticalServiceAfter removes a dead node's service instance (Consul minimum 1m).
	DeregisterCriticalServiceAfter time.Duration

	// Derived timings; zero takes the default computed from TTL and LockDelay (see the
	// constants below for the reasoning).
	RenewInterval  time.Duration // how often the TTL is passed and the session confirmed
	RequestTimeout time.Duration // timeout of one non-blocking Consul request
	LeaseMargin    time.Duration // subtracted from every lease; covers handler kill latency and drift
	// WatchMinInterval is the least time between two blocking queries of one watch; it
	// coalesces bursts of KV changes into one response.
	WatchMinInterval time.Duration
	// DrainTimeout bounds how long Run waits, on shutdown, for in-flight work before it destroys
	// its session and leaves the remaining slices to lock-delay.
	DrainTimeout time.Duration
	// WatchLayout is what the node watches: LayoutPrefix (the whole KV prefix and the service's
	// health; the default) or LayoutScoped (single keys: the slices and members of its watch
	// groups, and its inbox; for clusters of hundreds of nodes). See docs/failover.md.
	WatchLayout string
	// FullReadInterval: in the scoped layout, how often the node reads every slice and member
	// key (and the service's health) to correct what its watches do not cover.
	FullReadInterval time.Duration

	// Version is advertised in the service Meta.
	Version string

	// ServiceAddress and ServicePort are registered as the service's address and port: where
	// the node serves /metrics, so that Prometheus's consul_sd_configs finds it. "" registers no
	// address (Consul then gives the node's address); 0 registers no port.
	ServiceAddress string
	ServicePort    int
	// ServiceTags are added to the service's tags (which always hold "cluster-<Cluster>").
	ServiceTags []string
	// ServiceMeta is added to the service Meta (keys the coordinator sets itself win).
	ServiceMeta map[string]string
}

// Timing defaults and the invariants that tie them together.
//
// Lease. A node processes its slices only until its lease deadline
//
//	D = min(tTTL + TTL, tConfirm + LockDelay) - LeaseMargin
//
// on its monotonic clock, where tTTL is when the last successful pass of the TTL check was SENT
// and tConfirm is when the last consistent read that found our session alive was SENT.
//
// Why it is safe. Another node can take a slice we hold only after our session is invalidated at
// some instant Ti and lock-delay has run out: it takes it at T >= Ti + LockDelay (explicit KV
// releases happen only after our assignee reported the slice released). Two cases:
//   - the TTL check lapsed: the agent restarted its TTL timer when it received our pass, after
//     we sent it, so Ti >= tTTL + TTL and T >= tTTL + TTL + LockDelay > D + LeaseMargin;
//   - anything else (session destroyed, serfHealth failed, node maintenance): a consistent read
//     is answered by a leader that has confirmed its leadership, so the session still existed
//     after tConfirm: Ti >= tConfirm and T >= tConfirm + LockDelay >= D + LeaseMargin.
//
// So a new owner starts at least LeaseMargin after our deadline. The runner stops claiming at D
// and cancels handlers there; LeaseMargin must cover how long a handler may still run after D
// (its kill latency) plus clock-rate drift between us, the agent and the Consul leader (NTP keeps
// it under 500 ppm: 30 ms over the 60 s maximum lock-delay). Hence also LockDelay > LeaseMargin
// >= the time an old owner may still run after its lease. The new owner calls SetSlices to widen
// (which recovers the old owner's in-flight files) only after its lock attempt succeeded, so
// after T.
//
// Liveness. The lease is extended every RenewInterval; one round takes at most RequestTimeout per
// request. For the lease never to lapse while Consul answers, even when one round is lost,
//
//	2*RenewInterval + RequestTimeout + LeaseMargin < min(TTL, LockDelay)           (checked)
//
// and RenewInterval < TTL/3 keeps the TTL check passing across two lost rounds (checked). The
// defaults take a fifth of L = min(TTL, LockDelay) for each of RenewInterval, RequestTimeout and
// LeaseMargin, which uses 4/5 of L.
//
// Hold-down. HoldDown >= TTL (checked): a node that flaps faster than the TTL never looks
// healthy for a whole hold-down, so its slices stay where they went.
//
// The defaults: a crashed node's slices are processed elsewhere about TTL + LockDelay = 7 s
// after its last renewal (the failover benchmark: median <= 8 s, p95 <= 10 s;
// docs/failover.md has the figures), against 30 s with Consul's customary 15 s + 15 s.
//
//   - TTL 4.5 s is the larger part because it buys what pages operators: a node briefly slow
//     or cut off keeps its session, so nothing moves. It tolerates a stall (GC, frozen VM,
//     SIGSTOP) up to StallTolerance = 3 s and a cut off its agent up to CutTolerance = 2.25 s;
//     it stays below what Consul's own failure detection of a dead agent takes (serf suspicion
//     of at least 4 s at 10 nodes, 6.8 s at 50, 9.2 s at 200), which is what moves the slices
//     of a machine that died with its agent.
//   - LockDelay 2.5 s is the smaller part: it bounds how long a node processes without a
//     consistent read (the lease, LockDelay - LeaseMargin = 2 s after the last confirmation
//     sent), so a Consul leader election longer than about 1.5 s pauses processing (the locks
//     stay: nothing moves, processing resumes when a leader answers). It must exceed the lease
//     margin, 0.5 s here, which covers a handler's kill latency: a handler group that takes
//     longer to die needs a larger lease_margin (and so a larger lock_delay).
//   - RenewInterval, RequestTimeout and LeaseMargin are a fifth of min(TTL, LockDelay): 0.5 s.
//     Consul load per node: 1 + queues TTL updates every 0.5 s to its own agent (they reach the
//     servers only on a status change) and 2 consistent reads per second at the leader for the
//     session: 100/s at 50 nodes, 400/s at 200 (a consistent read costs the leader one
//     heartbeat round, which Raft shares between concurrent reads). The watches do not depend
//     on these timings (WatchMinInterval).
//   - HoldDown 60 s: a node must stay up a minute (some eight failover times) before its
//     slices come back, so a node that crash-loops, or whose Consul connection flaps, never
//     pulls slices back and forth; the cost is a minute of its share processed by its peers.
//
// Consul's own limits, checked against Consul 1.13: qslice binds its session to checks (the
// alive TTL check and serfHealth), not to a session TTL, so the session TTL minimum (10 s,
// session_ttl_min) and its 2x grace do not apply; an agent TTL check has no minimum (qslice
// requires 1 s); lock-delay is capped at 60 s (MaxLockDelay). An agent persists a TTL check's
// status across its restart until the TTL (in whole seconds) runs out, so an agent restarted
// within CutTolerance keeps the check passing, provided it does not leave the cluster when it
// stops: leave_on_terminate is true by default on client agents, and leaving ends every session
// of the node (docs/failover.md).
const (
	DefaultTTL                            = 4500 * time.Millisecond
	DefaultLockDelay                      = 2500 * time.Millisecond
	DefaultHoldDown                       = 60 * time.Second
	DefaultStuckAfter                     = 2 * time.Minute
	DefaultDeregisterCriticalServiceAfter = 10 * time.Minute
	DefaultWatchMinInterval               = time.Second // at most one 25k-key KV response per second per node
	DefaultDrainTimeout                   = time.Minute
	DefaultFullReadInterval               = 5 * time.Minute

	// MaxLockDelay is Consul's cap (structs.MaxLockDelay); a larger value would be cut silently
	// and break the lease arithmetic.
	MaxLockDelay = 60 * time.Second
	// MinLeaseMargin covers clock drift alone (500 ppm of MaxLockDelay) plus scheduling noise.
	MinLeaseMargin = 50 * time.Millisecond
	// minTTL: Consul runs TTL timers on a goroutine; below a second, GC pauses on a busy agent
	// start to matter.
	minTTL = time.Second
	// minDeregister is Consul's minimum for DeregisterCriticalServiceAfter.
	minDeregister = time.Minute

	// Consul limits on service Meta (agent/structs: metaMaxKeyPairs, metaValueMaxLength).
	metaMaxKeys     = 64
	metaValueMaxLen = 512
)

// WithDefaults returns a copy with zero fields set to their defaults.
func (c ConsulConfig) WithDefaults() ConsulConfig {
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.LockDelay == 0 {
		c.LockDelay = DefaultLockDelay
	}
	if c.HoldDown == 0 {
		c.HoldDown = DefaultHoldDown
	}
	if c.StuckAfter == 0 {
		c.StuckAfter = DefaultStuckAfter
	}
	if c.DeregisterCriticalServiceAfter == 0 {
		c.DeregisterCriticalServiceAfter = DefaultDeregisterCriticalServiceAfter
	}
	l := min(c.TTL, c.LockDelay)
	if c.RenewInterval == 0 {
		c.RenewInterval = l / 5
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = l / 5
	}
	if c.LeaseMargin == 0 {
		c.LeaseMargin = max(l/5, MinLeaseMargin)
	}
	if c.WatchMinInterval == 0 {
		c.WatchMinInterval = DefaultWatchMinInterval
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.WatchLayout == "" {
		c.WatchLayout = LayoutPrefix
	}
	if c.FullReadInterval == 0 {
		c.FullReadInterval = DefaultFullReadInterval
	}
	return c
}

// The watch layouts (ConsulConfig.WatchLayout).
const (
	LayoutPrefix = "prefix" // every node watches the whole KV prefix and the service's health
	LayoutScoped = "scoped" // every node watches the single keys it must act on (scope.go)
)

// StallTolerance is the longest the node may stall (its process paused or starved: a GC pause,
// a frozen VM, SIGSTOP) and keep its session, and so its slices: c must have its defaults.
//
// The agent's TTL timer restarts when it receives a pass. The last pass before the stall was
// sent at most RenewInterval plus one round (at most RequestTimeout) before it; after the stall
// the keeper's overdue round confirms the session (at most RequestTimeout) and passes the
// check. So a stall d keeps the check passing when d + RenewInterval + 2*RequestTimeout < TTL.
// The lease may lapse meanwhile (it is shorter): processing pauses, nothing moves.
func (c ConsulConfig) StallTolerance() time.Duration {
	return c.TTL - c.RenewInterval - 2*c.RequestTimeout
}

// CutTolerance is the longest the node may be cut off its Consul agent (a network blip, the
// agent restarting with its check state kept) and keep its session: as StallTolerance, plus
// the keeper's backoff when the cut heals (it retries every RenewInterval/4 doubling up to
// RenewInterval, with 50% jitter: at most 1.5 RenewInterval). The Consul agent's own part is
// not included: a client agent that leaves the cluster when stopped (leave_on_terminate, true by
// default on clients) or that serf declares failed ends every session of its node.
func (c ConsulConfig) CutTolerance() time.Duration {
	return c.StallTolerance() - 3*c.RenewInterval/2
}

// FieldError is one invalid configuration field.
type FieldError struct {
	Field   string // e.g. "queues[1].slices"
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

// The naming rules: the one definition every mode (standalone and Consul) and the config file
// share, so a name that one of them refuses is refused by all, at load time.
var (
	// Node IDs and cluster names go into KV paths, service IDs and Meta values.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// Queue names go into KV paths, check IDs and the service Meta list ("in:8,out:64").
	queueRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)
)

// CheckName checks a node ID or cluster name.
func CheckName(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%q: must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", s)
	}
	return nil
}

// CheckQueueName checks a queue name.
func CheckQueueName(s string) error {
	if !queueRE.MatchString(s) {
		return fmt.Errorf("%q: must be 1-63 letters, digits, '_' or '-', starting with a letter or digit (no '.')", s)
	}
	return nil
}

// Validate checks c after WithDefaults and returns every problem, each a *FieldError, joined.
func (c ConsulConfig) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if err := CheckName(c.Cluster); err != nil {
		bad("cluster", "%v", err)
	}
	if err := CheckName(c.NodeID); err != nil {
		bad("node_id", "%v", err)
	}
	if c.TTL < minTTL {
		bad("ttl", "must be >= %s", minTTL)
	}
	if c.LockDelay <= 0 || c.LockDelay > MaxLockDelay {
		bad("lock_delay", "must be > 0 and <= %s (Consul caps lock-delay there)", MaxLockDelay)
	}
	if c.HoldDown < c.TTL {
		bad("hold_down", "must be >= ttl (%s): a node flapping faster than the TTL would pull slices back", c.TTL)
	}
	if c.StuckHandoff && c.StuckAfter <= 0 {
		bad("stuck_after", "must be > 0 when stuck_handoff is on")
	}
	if c.DeregisterCriticalServiceAfter < minDeregister {
		bad("deregister_critical_service_after", "must be >= %s (Consul's minimum)", minDeregister)
	}
	if c.RenewInterval <= 0 || 3*c.RenewInterval >= c.TTL {
		bad("renew_interval", "must be > 0 and < ttl/3 (%s) so that two lost renewals do not fail the TTL check", c.TTL/3)
	}
	if c.RequestTimeout <= 0 {
		bad("request_timeout", "must be > 0")
	}
	if c.LeaseMargin < MinLeaseMargin {
		bad("lease_margin", "must be >= %s (clock drift)", MinLeaseMargin)
	}
	if l := min(c.TTL, c.LockDelay); c.RenewInterval > 0 && 2*c.RenewInterval+c.RequestTimeout+c.LeaseMargin >= l {
		bad("lease_margin", "2*renew_interval + request_timeout + lease_margin (%s) must be < min(ttl, lock_delay) (%s), or the lease lapses after one lost renewal",
			2*c.RenewInterval+c.RequestTimeout+c.LeaseMargin, l)
	}
	if c.WatchMinInterval <= 0 {
		bad("watch_min_interval", "must be > 0")
	}
	if c.DrainTimeout <= 0 {
		bad("drain_timeout", "must be > 0")
	}
	if c.WatchLayout != LayoutPrefix && c.WatchLayout != LayoutScoped {
		bad("watch_layout", "must be %q or %q, not %q", LayoutPrefix, LayoutScoped, c.WatchLayout)
	}
	if c.FullReadInterval < c.TTL {
		bad("full_read_interval", "must be >= ttl (%s): every node reads the whole prefix at each", c.TTL)
	}
	errs = append(errs, validateQueues(c.Queues, "queues")...)
	errs = append(errs, c.validateMeta()...)
	return errors.Join(errs...)
}

// ValidateSettings is Validate without the checks of the queues that ValidateQueues makes: what
// the Consul mode adds to the rules every mode shares.
func (c ConsulConfig) ValidateSettings() error {
	var errs []error
	for _, e := range flattenErrs(c.Validate()) {
		var fe *FieldError
		if errors.As(e, &fe) && fe.Field != "queues" && strings.HasPrefix(fe.Field, "queues") {
			continue
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

func flattenErrs(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenErrs(e)...)
		}
		return out
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

func (c ConsulConfig) validateMeta() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if 5+len(c.Queues) > metaMaxKeys {
		bad("queues", "at most %d queues fit in the service Meta", metaMaxKeys-5)
	}
	if n := len(queuesMeta(c.Queues)); n > metaValueMaxLen {
		bad("queues", "names and slice counts take %d characters, more than the %d a service Meta value holds", n, metaValueMaxLen)
	}
	return errs
}

func validateQueues(qs []QueueSpec, field string) []error {
	var errs []error
	bad := func(f, format string, args ...any) {
		errs = append(errs, &FieldError{Field: f, Problem: fmt.Sprintf(format, args...)})
	}
	if len(qs) == 0 {
		bad(field, "must list at least one queue")
	}
	seen := map[string]bool{}
	for i, q := range qs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := CheckQueueName(q.Name); err != nil {
			bad(f+".name", "%v", err)
		} else if seen[q.Name] {
			bad(f+".name", "%q: used by two queues", q.Name)
		}
		seen[q.Name] = true
		if err := queue.ValidateSlices(q.Slices); err != nil {
			bad(f+".slices", "must be between 1 and %d (got %d)", queue.MaxSlices, q.Slices)
		}
		keys := make([]int, 0, len(q.Home))
		for k := range q.Home {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		for _, k := range keys {
			hf := fmt.Sprintf("%s.home.%d", f, k) // a YAML map: home: {3: [a, b]}
			if k < 0 || k >= q.Slices {
				bad(hf, "slice %d out of range 0..%d", k, q.Slices-1)
			}
			if len(q.Home[k]) == 0 {
				bad(hf, "must list at least one node")
			}
			dup := map[string]bool{}
			for j, n := range q.Home[k] {
				if err := CheckName(n); err != nil {
					bad(fmt.Sprintf("%s[%d]", hf, j), "node %v", err)
				}
				if dup[n] {
					bad(fmt.Sprintf("%s[%d]", hf, j), "node %q listed twice", n)
				}
				dup[n] = true
			}
		}
	}
	return errs
}

// ValidateQueues checks queue specs: the rules every mode shares (Validate adds the Consul ones).
func ValidateQueues(qs []QueueSpec) error { return errors.Join(validateQueues(qs, "queues")...) }

// queuesMeta renders the queue list for the service Meta: "in:8,out:64".
func queuesMeta(qs []QueueSpec) string {
	parts := make([]string, len(qs))
	for i, q := range qs {
		parts[i] = fmt.Sprintf("%s:%d", q.Name, q.Slices)
	}
	return strings.Join(parts, ",")
}
