package supervise

import (
	"testing"
	"time"
)

func TestCrashTracker(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name     string
		exits    []int // seconds after t0
		stableAt int   // -1: never
		critical bool
		recent   int // at the last exit
	}{
		{name: "below threshold", exits: []int{0, 1}, stableAt: -1, critical: false, recent: 2},
		{name: "threshold within window", exits: []int{0, 1, 2}, stableAt: -1, critical: true, recent: 3},
		{name: "spread over more than the window", exits: []int{0, 6, 12}, stableAt: -1, critical: false, recent: 2},
		{name: "just inside the window", exits: []int{0, 5, 9}, stableAt: -1, critical: true, recent: 3},
		{name: "exit exactly one window later drops the first", exits: []int{0, 5, 10}, stableAt: -1, critical: false, recent: 2},
		{name: "stays critical after the window", exits: []int{0, 1, 2, 60}, stableAt: -1, critical: true, recent: 1},
		{name: "stable run clears", exits: []int{0, 1, 2}, stableAt: 100, critical: false, recent: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := crashTracker{threshold: 3, window: 10 * time.Second}
			for _, e := range tt.exits {
				c.recordExit(at(e), "exit status 1")
			}
			last := at(tt.exits[len(tt.exits)-1])
			if tt.stableAt >= 0 {
				c.stable()
				last = at(tt.stableAt)
			}
			if c.critical != tt.critical {
				t.Errorf("critical = %v, want %v (reason %q)", c.critical, tt.critical, c.reason)
			}
			if got := c.recentExits(last); got != tt.recent {
				t.Errorf("recentExits = %d, want %d", got, tt.recent)
			}
			if tt.critical && c.reason != "crash loop: worker exited 3 times within 10s; last: exit status 1" {
				t.Errorf("reason = %q", c.reason)
			}
		})
	}
}

func TestSliceHealth(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tr := func(critical bool) crashTracker {
		return crashTracker{threshold: 1, window: time.Minute, critical: critical, reason: "crash loop: x"}
	}
	tests := []struct {
		name string
		st   sliceStats
		want SliceHealth
	}{
		{name: "not started", st: sliceStats{tracker: tr(false)},
			want: SliceHealth{HealthWarning, "worker not running yet"}},
		{name: "up", st: sliceStats{up: true, pid: 42, tracker: tr(false)},
			want: SliceHealth{HealthPassing, "worker running (pid 42)"}},
		{name: "backoff", st: sliceStats{nextStart: now.Add(2 * time.Second), lastExit: exitInfo{desc: "exit status 3"}, tracker: tr(false)},
			want: SliceHealth{HealthWarning, "worker not running: exit status 3; 0 unexpected exits recently; restart in 2s"}},
		{name: "critical while up", st: sliceStats{up: true, pid: 42, tracker: tr(true)},
			want: SliceHealth{HealthCritical, "crash loop: x"}},
	}
	for _, tt := range tests {
		if got := tt.st.health(now); got != tt.want {
			t.Errorf("%s: health = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}
