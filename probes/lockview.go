package probes

import (
	"time"

	"github.com/qslice/qslice/runner/lockfile"
)

// LockView is one observed lock as the command line (`qslice locks --json`) and the status page
// show it.
type LockView struct {
	Path             string   `json:"path"`
	Held             bool     `json:"held"`
	HolderHost       string   `json:"holder_host"`
	HolderPID        int      `json:"holder_pid"`
	HeldSeconds      float64  `json:"held_seconds"`
	ExpiresInSeconds *float64 `json:"expires_in_seconds"` // negative when past; null when not held
	Expired          bool     `json:"expired"`            // past expiry plus the slop: a waiter would break it
	Waiters          int      `json:"waiters"`
	OrphanedClaims   int      `json:"orphaned_claims"`
	HolderDead       bool     `json:"holder_dead"` // on this host, and its pid is gone
	Naming           string   `json:"naming,omitempty"`
	Anomaly          string   `json:"anomaly,omitempty"`
}

// NewLockView describes in as seen at time at.
func NewLockView(in lockfile.Info, at time.Time) LockView {
	v := LockView{Path: in.Path, Held: in.Held, HolderHost: in.HolderHost, HolderPID: in.HolderPID,
		Expired: in.Held && in.Breakable, Waiters: in.Waiters, OrphanedClaims: in.OrphanedClaims,
		HolderDead: in.HolderDeadOnThisHost, Anomaly: in.Anomaly}
	if in.Held {
		v.Naming = in.Naming.String()
		if !in.HeldSince.IsZero() && at.After(in.HeldSince) {
			v.HeldSeconds = at.Sub(in.HeldSince).Seconds()
		}
		e := in.Expires.Sub(at).Seconds()
		v.ExpiresInSeconds = &e
	}
	return v
}
