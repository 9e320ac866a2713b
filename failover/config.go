package failover

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
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

// ConsulConfig configures a ConsulCoordinator. Zero durations take the defaults below.
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

	// Version is advertised in the service Meta.
	Version string
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
const (
	DefaultTTL                            = 15 * time.Second
	DefaultLockDelay                      = 15 * time.Second // Consul's own default
	DefaultHoldDown                       = 60 * time.Second
	DefaultStuckAfter                     = 2 * time.Minute
	DefaultDeregisterCriticalServiceAfter = 10 * time.Minute
	DefaultWatchMinInterval               = time.Second // at most one 25k-key KV response per second per node
	DefaultDrainTimeout                   = time.Minute

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
	return c
}

// FieldError is one invalid configuration field.
type FieldError struct {
	Field   string // e.g. "queues[1].slices"
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

var (
	// Node IDs and cluster names go into KV paths, service IDs and Meta values.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// Queue names go into KV paths and check IDs.
	queueRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)
)

// Validate checks c after WithDefaults and returns every problem, each a *FieldError, joined.
func (c ConsulConfig) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if !nameRE.MatchString(c.Cluster) {
		bad("cluster", "must match %s", nameRE)
	}
	if !nameRE.MatchString(c.NodeID) {
		bad("node_id", "must match %s", nameRE)
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
	errs = append(errs, validateQueues(c.Queues, "queues")...)
	if 5+len(c.Queues) > metaMaxKeys {
		bad("queues", "at most %d queues fit in the service Meta", metaMaxKeys-5)
	}
	if n := len(queuesMeta(c.Queues)); n > metaValueMaxLen {
		bad("queues", "names and slice counts take %d characters, more than the %d a service Meta value holds", n, metaValueMaxLen)
	}
	return errors.Join(errs...)
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
		if !queueRE.MatchString(q.Name) {
			bad(f+".name", "must match %s", queueRE)
		} else if seen[q.Name] {
			bad(f+".name", "duplicate queue %q", q.Name)
		}
		seen[q.Name] = true
		if q.Slices < 1 {
			bad(f+".slices", "must be >= 1")
		}
		keys := make([]int, 0, len(q.Home))
		for k := range q.Home {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		for _, k := range keys {
			hf := fmt.Sprintf("%s.home[%d]", f, k)
			if k < 0 || k >= q.Slices {
				bad(hf, "slice %d out of range [0,%d)", k, q.Slices)
			}
			dup := map[string]bool{}
			for j, n := range q.Home[k] {
				if !nameRE.MatchString(n) {
					bad(fmt.Sprintf("%s[%d]", hf, j), "node %q must match %s", n, nameRE)
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

// ValidateQueues checks queue specs for standalone mode.
func ValidateQueues(qs []QueueSpec) error { return errors.Join(validateQueues(qs, "queues")...) }

// queuesMeta renders the queue list for the service Meta: "in:8,out:64".
func queuesMeta(qs []QueueSpec) string {
	parts := make([]string, len(qs))
	for i, q := range qs {
		parts[i] = fmt.Sprintf("%s:%d", q.Name, q.Slices)
	}
	return strings.Join(parts, ",")
}
