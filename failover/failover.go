package failover

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SliceID names slice Index of queue Queue.
type SliceID struct {
	Queue string
	Index int
}

func (s SliceID) String() string { return fmt.Sprintf("%s/%d", s.Queue, s.Index) }

// Assignee is driven by the coordinator: the runner (or the Mailman supervisor) of this node.
type Assignee interface {
	// SetSlices replaces the set of slices of queue that this node may process. Widening: the
	// assignee first recovers in-flight files of the new slices, then processes them. Narrowing:
	// stops claiming at once; the returned channel is closed when every removed slice is released
	// (no in-flight message left).
	SetSlices(queue string, slices []int) <-chan struct{}
}

// Health statuses, spelled as Consul spells check statuses.
const (
	StatusPassing  = "passing"
	StatusWarning  = "warning"
	StatusCritical = "critical"
)

// Health is reported by the agent for owned slices: passing; warning when the backlog is stalled
// or too old; critical when the worker is failing.
type Health struct {
	Status string // StatusPassing, StatusWarning or StatusCritical
	Output string
}

// HealthSource is what the coordinator asks about this node. Both methods are called from the
// coordinator's goroutines and must be cheap and safe for concurrent use.
type HealthSource interface {
	// NodeHealthy returns nil while this node is fit to work; the node's TTL check is passed only
	// then. An error lets the check lapse, so the node loses its slices after one TTL.
	NodeHealthy() error
	// SliceHealth reports on a slice this node owns.
	SliceHealth(SliceID) Health
}

// QueueAvailability is optionally implemented by a HealthSource: the queues this node cannot
// work at all now, each with the reason (their filesystem does not answer here). The Consul
// coordinator hands their slices off at once (reason unavailable, whatever StuckHandoff says),
// takes none of them, and publishes the list in its service Meta (`unavailable`) so that no
// other node hands it any. Called from the coordinator's loop: cheap and safe for concurrent use.
type QueueAvailability interface {
	UnavailableQueues() map[string]string
}

// Coordinator decides which slices this node processes and tells the Assignee.
type Coordinator interface {
	// Run owns everything; on ctx cancel it stops cleanly: the assignee drains its in-flight
	// messages, then the locks are released, the session destroyed and the service
	// deregistered, or, for a coordinator set up to restart in place (Restartable), the
	// session and its locks stay for the node's next process (Leaver hands off instead).
	Run(ctx context.Context) error
	// ValidUntil is the lease deadline (a time.Time carrying a monotonic reading); standalone: far
	// future. The runner claims only while now < ValidUntil() and kills handlers past it.
	ValidUntil() time.Time
	// Drain gives all slices away with zero loss and returns when done; the node then takes
	// none until Undrain.
	Drain(ctx context.Context) error
	Undrain(ctx context.Context) error
	// Status is a snapshot for metrics and the status page.
	Status() Status
}

// Reasons of ownership changes, the label values of Status.OwnershipChanges.
const (
	ReasonAcquired  = "acquired"   // took a slice nobody held before
	ReasonFailover  = "failover"   // took a slice whose owner lost its lock without releasing it
	ReasonFailback  = "failback"   // a better-ranked node (home, or back after hold-down) takes a slice from a backup
	ReasonDrain     = "drain"      // handed off because the owner drains
	ReasonLeaseLost = "lease_lost" // this node lost a lock it held (session invalidated, key taken)
	ReasonReleased  = "released"   // given up on shutdown
	ReasonStuck     = "stuck"      // handed off because its worker kept failing here (StuckHandoff)
	// ReasonUnavailable: handed off because its queue's filesystem does not answer here.
	ReasonUnavailable = "unavailable"
)

// Slice states in Status.Slices.
const (
	SliceOwned     = "owned"     // this node holds the lock and the assignee processes it
	SliceSuspended = "suspended" // this node holds the lock but the lease lapsed: not processing
	SliceReleasing = "releasing" // this node holds the lock and waits for in-flight work to end
	SliceHeld      = "held"      // another node holds the lock
	SliceFree      = "free"      // nobody holds the lock
)

// Status is a snapshot for metrics and the status page.
type Status struct {
	Mode     string // "standalone" or "consul"
	NodeID   string
	Draining bool
	// LeaseValid and LeaseRemaining describe ValidUntil at the time Status was called.
	LeaseValid     bool
	LeaseRemaining time.Duration
	Owned          []OwnedSlice  // slices this node holds, by queue then index
	Slices         []SliceStatus // every slice of every queue, from the last watch
	// OwnershipChanges counts this node's ownership changes by reason (Reason* constants).
	OwnershipChanges map[string]uint64
	// ConsulErrors counts failed Consul requests by operation.
	ConsulErrors map[string]uint64
	// ConsulError is the last Consul error, explained, or "" once Consul answers again.
	ConsulError string
}

// OwnedSlice is a slice this node holds.
type OwnedSlice struct {
	Slice SliceID
	// FencingToken is the ModifyIndex of the slice's KV pair when this node acquired the lock:
	// strictly larger for every later acquisition of the same slice.
	FencingToken uint64
	LockIndex    uint64
	Since        time.Time
	Processing   bool // handed to the assignee (lease valid, not releasing)
}

// SliceStatus is one slice as this node last saw it.
type SliceStatus struct {
	Slice SliceID
	Owner string // node holding the lock, "" when free
	Home  string // node the slice belongs to when everyone is up
	State string // Slice* constants
}

// Errors callers can test with errors.Is.
var (
	// ErrPermissionDenied: Consul refused the ACL token.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrConsulUnavailable: Consul could not be reached or had no leader.
	ErrConsulUnavailable = errors.New("consul unavailable")
	// ErrNotRunning: Drain or Undrain was called while Run is not running.
	ErrNotRunning = errors.New("coordinator not running")
	// ErrAlreadyRunning: Run was called twice.
	ErrAlreadyRunning = errors.New("coordinator already running")
)

// Restart in place (docs/failover.md): a process that stops for a restart (Run's context ends)
// keeps its Consul session and slice locks, and the next process of the same node adopts them.

// PreviousRun is what the previous process of this node left for a restart in place.
type PreviousRun struct {
	Session   string    // the session it held its locks with
	LiveSince time.Time // its published live_since: the node's live stretch goes on
	// Releasing: slices it was handing off (recorded before each release is sent, removed once
	// Consul answered): a release of theirs may still be applied, so the next process releases
	// them again instead of processing them (EvAdopt.Releasing).
	Releasing []SliceID
}

// RunStore keeps, for the next process of this node, the session this one holds its locks with
// (package nodestate writes it to the node's state directory).
type RunStore interface {
	SaveRun(PreviousRun) error
	// ForgetRun: nothing is left to adopt (the process handed everything off, or its session
	// ended): the next process starts fresh.
	ForgetRun() error
}

// Restartable is implemented by coordinators that can stop for a restart and resume after one
// (the Consul coordinator). Both calls come before Run.
type Restartable interface {
	// SetRestart says what to adopt (prev; nil: start fresh) and where to record the session
	// (store; nil: nowhere, and a stop hands every slice off as without restart in place). The
	// caller vouches for EvAdopt's conditions: it holds the node's local lock and killed the
	// previous run's handler process trees.
	SetRestart(prev *PreviousRun, store RunStore)
}

// Leaver is implemented by coordinators that tell a stop for a restart (Run's context ends:
// the session and locks stay) from a hand-off: Leave hands every slice to other nodes, destroys
// the session, deregisters, makes Run return and returns once it did.
type Leaver interface {
	Leave(ctx context.Context) error
}
