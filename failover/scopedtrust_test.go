package failover

import (
	"strings"
	"testing"
	"time"
)

// TestScopedTrustRules drives ScopedTrust through scripts of resets, new sessions and full
// reads, and checks after every step what it lets the driver believe. TTL 4s, lock-delay 2s
// (quarantine 4s), watch interval 1s.
func TestScopedTrustRules(t *testing.T) {
	const (
		ttl       = 4 * time.Second
		lockDelay = 2 * time.Second
		watch     = time.Second
		s         = time.Second
		ms        = time.Millisecond
	)
	type step struct {
		at time.Duration // the driver's clock, since the start
		// op: "reset" (Consul's index went backwards), "writing" (the member key's write with a
		// new session is sent), "session" (that write's answer: the new session took the member
		// key), "full" (a full read sent at `at` in the current epoch, at index 100 over a view
		// at 100), "full-old" (sent in the epoch before), "full-back" (index 90 over a view at
		// 100), "older" / "no-older" (a full read sent at `at` found / did not find a live
		// member without a member key).
		op string
		// What the step must return: readAt for reset and session (since the start), the verdict
		// for full reads, prefix and recheckAt (-1: none) for older-peer reads.
		readAt  time.Duration
		verdict FullReadVerdict
		prefix  bool
		recheck time.Duration
		// Then: the membership the Machine may see ("held": none, it keeps its own), and
		// whether a full read sent at `at` is wanted (ReadDue).
		members string
		due     bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"answers from before a reset are dropped", []step{
			{at: 0, op: "full", verdict: FullReadApply, members: "a,self"},
			{at: s, op: "reset", readAt: 5 * s, members: "held"},
			{at: 2 * s, op: "full-old", verdict: FullReadStale, members: "held"},
			{at: 2 * s, op: "full-back", verdict: FullReadReset, members: "held"},
			{at: 3 * s, op: "reset", readAt: 7 * s, members: "held"},
			{at: 3 * s, op: "full-old", verdict: FullReadStale, members: "held"},
		}},
		{"hold until a full read sent at the quarantine's end", []step{
			{at: 0, op: "reset", readAt: 4 * s, members: "held"},
			{at: s, op: "full", verdict: FullReadApply, members: "held"},
			{at: 4*s - ms, op: "full", verdict: FullReadApply, members: "held"},
			{at: 4 * s, op: "check", members: "held", due: true},
			{at: 4 * s, op: "full", verdict: FullReadApply, members: "a,self"},
			{at: 5 * s, op: "check", members: "a,self"},
		}},
		{"a second reset moves the hold's end on", []step{
			{at: 0, op: "reset", readAt: 4 * s, members: "held"},
			{at: 3 * s, op: "reset", readAt: 7 * s, members: "held"},
			{at: 4 * s, op: "full", verdict: FullReadApply, members: "held"},
			{at: 7 * s, op: "full", verdict: FullReadApply, members: "a,self"},
		}},
		{"a stale or reset-starting read never ends the hold", []step{
			{at: 0, op: "reset", readAt: 4 * s, members: "held"},
			{at: 5 * s, op: "full-old", verdict: FullReadStale, members: "held", due: true},
			{at: 5 * s, op: "full-back", verdict: FullReadReset, members: "held", due: true},
		}},
		{"warm-up lifted only by a full read a watch interval later", []step{
			{at: 0, op: "full", verdict: FullReadApply, members: "a,self"},
			{at: s, op: "session", readAt: 2 * s, members: "a"},
			{at: 2*s - ms, op: "full", verdict: FullReadApply, members: "a"},
			{at: 2 * s, op: "check", members: "a", due: true},
			{at: 2 * s, op: "full", verdict: FullReadApply, members: "a,self"},
		}},
		{"warm-up from the write's sending: no read ends it before the answer names its end", []step{
			{at: 0, op: "full", verdict: FullReadApply, members: "a,self"},
			{at: s, op: "writing", members: "a"},
			{at: 3 * s, op: "full", verdict: FullReadApply, members: "a"}, // the key in the view before the answer
			{at: 3 * s, op: "check", members: "a"},
			{at: 4 * s, op: "session", readAt: 5 * s, members: "a"},
			{at: 5*s - ms, op: "full", verdict: FullReadApply, members: "a"},
			{at: 5 * s, op: "check", members: "a", due: true},
			{at: 5 * s, op: "full", verdict: FullReadApply, members: "a,self"},
		}},
		{"warm-up during a hold: each ends at its own time", []step{
			{at: 0, op: "reset", readAt: 4 * s, members: "held"},
			{at: 500 * ms, op: "session", readAt: 1500 * ms, members: "held"},
			{at: 2 * s, op: "full", verdict: FullReadApply, members: "held"},
			{at: 4 * s, op: "full", verdict: FullReadApply, members: "a,self"},
		}},
		{"older peer believed only on the second read a TTL later", []step{
			{at: 0, op: "older", prefix: false, recheck: 4 * s, members: "a,self"},
			{at: 2 * s, op: "older", prefix: false, recheck: 4 * s, members: "a,self"},
			{at: 4*s - ms, op: "older", prefix: false, recheck: 4 * s, members: "a,self"},
			{at: 4 * s, op: "older", prefix: true, recheck: -1, members: "a,self"},
			{at: 10 * s, op: "older", prefix: true, recheck: -1, members: "a,self"},
			{at: 20 * s, op: "no-older", prefix: false, recheck: -1, members: "a,self"},
		}},
		{"a read finding no older peer clears the suspicion", []step{
			{at: 0, op: "older", prefix: false, recheck: 4 * s, members: "a,self"},
			{at: 4 * s, op: "no-older", prefix: false, recheck: -1, members: "a,self"},
			{at: 5 * s, op: "older", prefix: false, recheck: 9 * s, members: "a,self"},
			{at: 9 * s, op: "older", prefix: true, recheck: -1, members: "a,self"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Unix(1_000_000, 0)
			tr := NewScopedTrust(ScopedTrustConfig{Self: "self", TTL: ttl, LockDelay: lockDelay, WatchInterval: watch})
			v := NewScopedView()
			v.Full(100, nil, []MemberRecord{{Info: MemberInfo{Node: "a", Live: true}, ModifyIndex: 7}, {Info: MemberInfo{Node: "self", Live: true}, ModifyIndex: 9}})
			for i, st := range tc.steps {
				now := start.Add(st.at)
				switch st.op {
				case "reset", "session":
					var readAt time.Time
					if st.op == "reset" {
						readAt = tr.Reset(now)
					} else {
						readAt = tr.NewSession(now)
					}
					if got := readAt.Sub(start); got != st.readAt {
						t.Fatalf("step %d %s at %s: read due at %s, want %s", i, st.op, st.at, got, st.readAt)
					}
				case "full", "full-old", "full-back":
					epoch, index := tr.Epoch(), uint64(100)
					if st.op == "full-old" {
						epoch--
					}
					if st.op == "full-back" {
						index = 90
					}
					if got := tr.FullRead(epoch, now, index, v.Index()); got != st.verdict {
						t.Fatalf("step %d %s at %s: verdict %d, want %d", i, st.op, st.at, got, st.verdict)
					}
				case "older", "no-older":
					prefix, recheck := tr.OlderPeer(now, st.op == "older")
					got := time.Duration(-1)
					if !recheck.IsZero() {
						got = recheck.Sub(start)
					}
					if prefix != st.prefix || got != st.recheck {
						t.Fatalf("step %d %s at %s: prefix %v, recheck at %s; want %v, %s", i, st.op, st.at, prefix, got, st.prefix, st.recheck)
					}
				case "writing":
					tr.Writing()
				case "check":
				default:
					t.Fatalf("step %d: unknown op %q", i, st.op)
				}
				members := "held"
				if ms, ok := tr.Membership(v); ok {
					var names []string
					for _, m := range ms {
						names = append(names, m.Node)
					}
					members = strings.Join(names, ",")
				}
				if members != st.members {
					t.Fatalf("step %d %s at %s: the Machine sees members %q, want %q", i, st.op, st.at, members, st.members)
				}
				if got := tr.ReadDue(now); got != st.due {
					t.Fatalf("step %d %s at %s: ReadDue %v, want %v", i, st.op, st.at, got, st.due)
				}
			}
		})
	}
}

// Current holds for the epoch a request was sent in only until the next reset.
func TestScopedTrustEpochs(t *testing.T) {
	tr := NewScopedTrust(ScopedTrustConfig{Self: "self", TTL: time.Second})
	sent := tr.Epoch()
	if !tr.Current(sent) {
		t.Fatalf("an answer sent in the current epoch %d is dropped", sent)
	}
	tr.Reset(time.Unix(0, 0))
	if tr.Current(sent) {
		t.Fatalf("an answer sent in epoch %d is kept after a reset (epoch %d)", sent, tr.Epoch())
	}
	if !tr.Current(tr.Epoch()) {
		t.Fatalf("an answer sent after the reset is dropped")
	}
}
