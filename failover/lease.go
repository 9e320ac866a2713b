package failover

import "time"

// LeaseDeadline is D = min(tTTL + TTL, tConfirm + LockDelay) - margin (see the timing constants
// in config.go for why). Zero inputs mean "never happened": no lease.
func LeaseDeadline(ttlSent, confirmSent time.Time, ttl, lockDelay, margin time.Duration) time.Time {
	if ttlSent.IsZero() || confirmSent.IsZero() {
		return time.Time{}
	}
	d := ttlSent.Add(ttl)
	if c := confirmSent.Add(lockDelay); c.Before(d) {
		d = c
	}
	return d.Add(-margin)
}

// LiveStretch is the keeper's live_since (published in the service Meta): when this node's
// current stretch of good health began, which the planner's hold-down counts from. It restarts
// when the session is lost (Lost), and, provisionally, when the lease lapses while the session
// cannot be confirmed (Lapsed): peers must not see the node settled before it knows whether its
// session, and with it its slices, survived. A later confirmation of that same session (Confirmed)
// brings the earlier stretch back: the session never ended, so Consul never saw the node fail,
// and a Consul outage (or overload) that kept every session must not make every node look
// unsettled at once (the planner then lets a restarted node take its slices back without its
// hold-down). A pure value: the caller passes the times.
type LiveStretch struct {
	since time.Time
	fresh bool // restart since at the next healthy round
	// kept is the stretch a lapse of session keptFor interrupted; "" when none.
	kept    time.Time
	keptFor string
}

// NewLiveStretch starts a stretch at since (a process start, or the previous process's
// live_since when it adopts that process's session).
func NewLiveStretch(since time.Time) LiveStretch { return LiveStretch{since: since} }

// Since is the live_since to publish.
func (l *LiveStretch) Since() time.Time { return l.since }

// Lapsed: the lease lapsed and session (the node's current one) could not be confirmed. The
// stretch restarts at the next healthy round; the one it interrupts is kept for session.
func (l *LiveStretch) Lapsed(session string) {
	l.fresh = true
	if session != "" && l.keptFor != session {
		l.kept, l.keptFor = l.since, session
	}
}

// Lost: the node has no session that survived (Consul invalidated it, it is not adoptable, or
// the node has none); the stretch restarts at the next healthy round, for good.
func (l *LiveStretch) Lost() {
	l.fresh, l.kept, l.keptFor = true, time.Time{}, ""
}

// Confirmed: Consul confirmed session. If it is the session a lapse interrupted, the stretch
// before the lapse goes on; any other session keeps the current stretch.
func (l *LiveStretch) Confirmed(session string) {
	if l.keptFor != "" && l.keptFor == session {
		l.since = l.kept
	}
	l.fresh, l.kept, l.keptFor = false, time.Time{}, ""
}

// Healthy: a healthy round at now, about to pass the check: a restarted stretch begins.
func (l *LiveStretch) Healthy(now time.Time) {
	if l.fresh {
		l.since, l.fresh = now, false
	}
}
