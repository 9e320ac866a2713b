package exporters

import (
	"errors"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/probes"
)

// SnapshotSource gives the latest probe snapshot without blocking (probes.Probe implements it).
type SnapshotSource interface {
	Latest() *probes.Snapshot
}

// OwnershipSource tells which slices of which queues this node owns right now: queue name to
// slice indices. Owned is called on every scrape: it must return at once (from an atomically
// published value, say), and the caller must not modify what it returned.
type OwnershipSource interface {
	Owned() map[string][]int
}

// CoordinatorSource reports the failover coordinator's state. Status is called on every scrape:
// like Owned it must return at once.
type CoordinatorSource interface {
	Status() CoordinatorStatus
}

// CoordinatorStatus is what the failover coordinator exposes for metrics. Counters are
// cumulative since the process started. Keys of ConsulErrors and OwnershipChanges must come from a
// small fixed set (operations failover.ConsulOps(), exported as 0 until they fail when the lease is
// not LeaseForever; reasons such as "failover",
// "failback", "lease_lost"): beyond MaxEnumLabels distinct keys the rest are summed under "other".
type CoordinatorStatus struct {
	// LeaseValid: this node's session is provably valid (last confirmed renewal + TTL - margin
	// lies ahead on the monotonic clock).
	LeaseValid bool
	// LeaseRemaining: how long the lease stays valid without another renewal; <= 0 when none.
	LeaseRemaining time.Duration
	// LeaseForever: the lease never ends (a standalone node); LeaseRemaining is then not exported.
	LeaseForever bool
	// ConsulErrors counts failed Consul requests by operation.
	ConsulErrors map[string]uint64
	// OwnershipChanges counts slices acquired or released by this node, by reason.
	OwnershipChanges map[string]uint64
	// Owners is the owner of each slice as this node sees it (the cluster view). Entries for
	// queues that are not configured here, or slices out of range, are ignored; Node "" means
	// no owner.
	Owners []SliceOwner
}

// SliceOwner says which node owns one slice.
type SliceOwner struct {
	Queue string
	Slice int
	Node  string
}

// Label bounds. Every label's values come from the configuration or from a fixed set, and these
// caps hold even when a caller misbehaves.
const (
	// DefaultMaxSliceLabels: queues cut into more slices than this are exported per queue, with
	// slice="all", instead of per slice. 20 queues x 1024 slices x 5 per-slice metrics is ~100k
	// series, the most a single Prometheus target should ever have.
	DefaultMaxSliceLabels = 1024
	// MaxEnumLabels caps the distinct values of an operation, reason, outcome or result label;
	// the rest are summed under OtherLabel.
	MaxEnumLabels = 32
	// SliceAll is the slice label of a queue exported as a whole.
	SliceAll = "all"
	// OtherLabel collects label values beyond a cap.
	OtherLabel = "other"
)

// CollectorOptions configure NewCollector. Every source may be nil: its metrics are then absent.
type CollectorOptions struct {
	Probe       SnapshotSource
	Ownership   OwnershipSource
	Coordinator CoordinatorSource
	// Queues maps each configured queue to its slice count. It bounds the ownership and owner
	// metrics (only these queues and slices are exported); queues missing here take their count
	// from the probe snapshot.
	Queues map[string]int
	// MaxSliceLabels: see DefaultMaxSliceLabels (0 selects it).
	MaxSliceLabels int
}

// Collector builds const metrics from the latest probe snapshot and the agent's sources on each
// scrape. It never scans: a scrape costs reading one atomic pointer and formatting.
type Collector struct {
	opts                     CollectorOptions
	consulOps, changeReasons labelCap
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector over the given sources.
func NewCollector(opts CollectorOptions) *Collector {
	if opts.MaxSliceLabels <= 0 {
		opts.MaxSliceLabels = DefaultMaxSliceLabels
	}
	return &Collector{opts: opts}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	qs = []string{"queue", "slice"}
	q  = []string{"queue"}
	l  = []string{"lock"}

	descReady          = desc("qslice_queue_ready_messages", "Messages ready to be processed (.pck files), as of the last successful scan.", qs...)
	descReadyBytes     = desc("qslice_queue_ready_bytes", "Total size of the ready messages, as of the last successful scan; absent when bytes are not counted (probes.bytes off, or more ready files than probes.bytes_max_files).", qs...)
	descOldestReady    = desc("qslice_queue_oldest_ready_age_seconds", "Age of the oldest ready message by the time in its name, at the last successful scan; 0 when none.", qs...)
	descInFlight       = desc("qslice_queue_in_flight_messages", "Messages claimed by a runner (.bak files), as of the last successful scan.", qs...)
	descOldestInFlight = desc("qslice_queue_oldest_in_flight_age_seconds", "How long the oldest in-flight message had been claimed (since its rename), at the last successful scan; 0 when none.", qs...)
	descTemp           = desc("qslice_queue_temp_files", "Messages being written (.pck.tmp files), as of the last successful scan.", q...)
	descIgnored        = desc("qslice_queue_ignored_files", "Entries of the queue directory that are not queue files (foreign or malformed names, subdirectories, links, FIFOs, sockets or devices named like messages).", q...)
	descShunt          = desc("qslice_queue_shunt_messages", "Messages in the queue's shunt directory (shared directories report the same value under every queue).", q...)
	descBad            = desc("qslice_queue_bad_messages", "Messages in the queue's bad directory (shared directories report the same value under every queue).", q...)
	descQScanOK        = desc("qslice_queue_scan_success", "Whether the last scan of the queue completed (1) or failed (0).", q...)
	descQScanDur       = desc("qslice_queue_scan_duration_seconds", "Duration of the last scan of the queue.", q...)
	descQScanLast      = desc("qslice_queue_scan_last_success_timestamp_seconds", "Unix time of the start of the last successful scan of the queue.", q...)
	descQScanFileErr   = desc("qslice_queue_scan_file_errors", "Files the last scan of the queue could not examine (excluding files that vanished, which is normal).", q...)

	descOwned       = desc("qslice_slice_owned", "Whether this node owns the slice (1) or not (0).", qs...)
	descOwnedSlices = desc("qslice_queue_owned_slices", "Number of slices of the queue this node owns.", q...)
	descOwnerInfo   = desc("qslice_slice_owner_info", "The node that owns the slice, as this node sees the cluster; always 1.", "queue", "slice", "node")
	descLeaseValid  = desc("qslice_lease_valid", "Whether this node's Consul session lease is provably valid (1) or not (0).")
	descLeaseLeft   = desc("qslice_lease_remaining_seconds", "Time until this node's lease runs out without another renewal; 0 when it has none; absent on a standalone node, whose lease never ends.")
	descConsulErrs  = desc("qslice_consul_request_errors_total", "Failed Consul requests, by operation.", "operation")
	descOwnChanges  = desc("qslice_ownership_changes_total", "Slices acquired or released by this node, by reason.", "reason")

	descLocksHeld   = desc("qslice_locks_held", "Lock files held in the directory.", l...)
	descLockWaiters = desc("qslice_lock_waiters", "Claims waiting for a lock in the directory.", l...)
	descLocksExp    = desc("qslice_locks_expired", "Held locks past their expiry plus the clock slop (any waiter would break them).", l...)
	descLockOrphans = desc("qslice_lock_orphaned_claims", "Claim files left by dead processes on this host, or older than the orphan age.", l...)
	descLocksDead   = desc("qslice_locks_holder_dead", "Held locks whose holder ran on this host and no longer exists.", l...)
	descLocksAnom   = desc("qslice_locks_anomalous", "Lock files that are not sound flufl.lock or Mailman 2.1 locks (bad content, link count, missing claim).", l...)
	descLockOldest  = desc("qslice_lock_oldest_hold_seconds", "How long the longest-held lock of the directory has been held; 0 when none is.", l...)
	descLScanOK     = desc("qslice_lock_scan_success", "Whether the last scan of the lock directory completed (1) or failed (0).", l...)
	descLScanDur    = desc("qslice_lock_scan_duration_seconds", "Duration of the last scan of the lock directory.", l...)
	descLScanLast   = desc("qslice_lock_scan_last_success_timestamp_seconds", "Unix time of the start of the last successful scan of the lock directory.", l...)

	allDescs = []*prometheus.Desc{
		descReady, descReadyBytes, descOldestReady, descInFlight, descOldestInFlight, descTemp, descIgnored,
		descShunt, descBad, descQScanOK, descQScanDur, descQScanLast, descQScanFileErr,
		descOwned, descOwnedSlices, descOwnerInfo, descLeaseValid, descLeaseLeft, descConsulErrs, descOwnChanges,
		descLocksHeld, descLockWaiters, descLocksExp, descLockOrphans, descLocksDead, descLocksAnom, descLockOldest,
		descLScanOK, descLScanDur, descLScanLast,
	}
)

// Describe sends every metric the collector may produce.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect sends the metrics of the latest snapshot and of the agent's sources.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var snap *probes.Snapshot
	if c.opts.Probe != nil {
		snap = c.opts.Probe.Latest()
	}
	if snap != nil {
		for i := range snap.Queues {
			c.collectQueue(ch, &snap.Queues[i])
		}
		for i := range snap.Locks {
			collectLockDir(ch, &snap.Locks[i])
		}
	}
	slices := c.sliceCounts(snap)
	if c.opts.Ownership != nil {
		c.collectOwnership(ch, slices, c.opts.Ownership.Owned())
	}
	if c.opts.Coordinator != nil {
		c.collectCoordinator(ch, slices, c.opts.Coordinator.Status())
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *Collector) collectQueue(ch chan<- prometheus.Metric, qs *probes.QueueSnapshot) {
	name := qs.Config.Name
	gauge(ch, descQScanOK, boolf(qs.OK()), name)
	gauge(ch, descQScanDur, qs.Duration.Seconds(), name)
	fileErrs := qs.Dropped
	for _, e := range qs.Errors {
		if !errors.Is(e, probes.ErrVanished) {
			fileErrs++
		}
	}
	gauge(ch, descQScanFileErr, float64(fileErrs), name)
	if !qs.HasData {
		return
	}
	gauge(ch, descQScanLast, float64(qs.At.UnixNano())/1e9, name)
	bytes := qs.BytesCounted
	at := qs.At
	if len(qs.PerSlice) > c.opts.MaxSliceLabels {
		ready, claim := qs.Oldest()
		all := probes.SliceStats{Ready: qs.Ready, Bytes: qs.Bytes, InFlight: qs.InFlight, OldestReady: ready, OldestClaim: claim}
		sliceMetrics(ch, name, SliceAll, all, at, bytes)
	} else {
		for i, s := range qs.PerSlice {
			sliceMetrics(ch, name, strconv.Itoa(i), s, at, bytes)
		}
	}
	gauge(ch, descTemp, float64(qs.Temp), name)
	gauge(ch, descIgnored, float64(qs.Ignored), name)
	if qs.HasShunt {
		gauge(ch, descShunt, float64(qs.Shunt), name)
	}
	if qs.HasBad {
		gauge(ch, descBad, float64(qs.Bad), name)
	}
}

func sliceMetrics(ch chan<- prometheus.Metric, queue, slice string, s probes.SliceStats, at time.Time, bytes bool) {
	gauge(ch, descReady, float64(s.Ready), queue, slice)
	if bytes {
		gauge(ch, descReadyBytes, float64(s.Bytes), queue, slice)
	}
	gauge(ch, descOldestReady, s.OldestReadyAge(at).Seconds(), queue, slice)
	gauge(ch, descInFlight, float64(s.InFlight), queue, slice)
	gauge(ch, descOldestInFlight, s.OldestInFlightAge(at).Seconds(), queue, slice)
}

func collectLockDir(ch chan<- prometheus.Metric, ls *probes.LockDirSnapshot) {
	name := ls.Config.Name
	gauge(ch, descLScanOK, boolf(ls.OK()), name)
	gauge(ch, descLScanDur, ls.Duration.Seconds(), name)
	if !ls.HasData {
		return
	}
	gauge(ch, descLScanLast, float64(ls.At.UnixNano())/1e9, name)
	gauge(ch, descLocksHeld, float64(ls.Held), name)
	gauge(ch, descLockWaiters, float64(ls.Waiters), name)
	gauge(ch, descLocksExp, float64(ls.Expired), name)
	gauge(ch, descLockOrphans, float64(ls.OrphanedClaims), name)
	gauge(ch, descLocksDead, float64(ls.HolderDead), name)
	gauge(ch, descLocksAnom, float64(ls.Anomalous), name)
	gauge(ch, descLockOldest, ls.OldestHeld.Seconds(), name)
}

// sliceCounts returns the slice count of every known queue: the configured ones first, then
// those of the snapshot.
func (c *Collector) sliceCounts(snap *probes.Snapshot) map[string]int {
	if snap == nil || len(snap.Queues) == 0 {
		return c.opts.Queues
	}
	m := make(map[string]int, len(c.opts.Queues)+len(snap.Queues))
	for _, q := range snap.Queues {
		m[q.Config.Name] = q.Config.Slices
	}
	for k, v := range c.opts.Queues {
		m[k] = v
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (c *Collector) collectOwnership(ch chan<- prometheus.Metric, slices map[string]int, owned map[string][]int) {
	for _, queue := range sortedKeys(slices) {
		n := slices[queue]
		mine := make(map[int]bool, len(owned[queue]))
		for _, i := range owned[queue] {
			if i >= 0 && i < n {
				mine[i] = true
			}
		}
		gauge(ch, descOwnedSlices, float64(len(mine)), queue)
		if n > c.opts.MaxSliceLabels {
			continue
		}
		for i := range n {
			gauge(ch, descOwned, boolf(mine[i]), queue, strconv.Itoa(i))
		}
	}
}

func (c *Collector) collectCoordinator(ch chan<- prometheus.Metric, slices map[string]int, st CoordinatorStatus) {
	gauge(ch, descLeaseValid, boolf(st.LeaseValid))
	if !st.LeaseForever {
		gauge(ch, descLeaseLeft, max(0, st.LeaseRemaining.Seconds()))
	}
	consulErrs := capCounts(&c.consulOps, st.ConsulErrors)
	if !st.LeaseForever { // a node with Consul: every operation exported, 0 until it fails
		for _, op := range failover.ConsulOps() {
			if _, ok := consulErrs[op.String()]; !ok {
				consulErrs[op.String()] = 0
			}
		}
	}
	for k, v := range consulErrs {
		ch <- prometheus.MustNewConstMetric(descConsulErrs, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range capCounts(&c.changeReasons, st.OwnershipChanges) {
		ch <- prometheus.MustNewConstMetric(descOwnChanges, prometheus.CounterValue, float64(v), k)
	}
	seen := map[SliceOwner]bool{}
	for _, o := range st.Owners {
		n, ok := slices[o.Queue]
		if !ok || o.Slice < 0 || o.Slice >= n || n > c.opts.MaxSliceLabels || o.Node == "" {
			continue
		}
		key := SliceOwner{Queue: o.Queue, Slice: o.Slice}
		if seen[key] { // one owner per slice: the first report wins
			continue
		}
		seen[key] = true
		gauge(ch, descOwnerInfo, 1, o.Queue, strconv.Itoa(o.Slice), o.Node)
	}
}

// capCounts sums the counters of m under the label values c admits.
func capCounts(c *labelCap, m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for _, k := range sortedKeys(m) { // sorted: admission order does not depend on map order
		out[c.value(k)] += m[k]
	}
	return out
}
