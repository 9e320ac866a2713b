package chaos

import (
	"fmt"
	"github.com/qslice/qslice/runner/queue"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_800_000_000, 0)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestParseLedgerLine(t *testing.T) {
	cases := []struct {
		line    string
		want    Event
		wantErr string
	}{
		{"1.5+ab n1 start 1800000000000000000 slice=3 pid=42", Event{ID: "1.5+ab", Node: "n1", At: t0, Slice: 3, PID: 42}, ""},
		{"1.5+ab n2 end 1800000000001000000 slice=0 pid=7", Event{ID: "1.5+ab", Node: "n2", End: true, At: at(1), Slice: 0, PID: 7}, ""},
		{"1.5+ab n2 end 1800000000001000000", Event{ID: "1.5+ab", Node: "n2", End: true, At: at(1), Slice: -1}, ""},
		{"1.5+ab n2 fenced 1800000000001000000 slice=0 pid=7", Event{ID: "1.5+ab", Node: "n2", Fenced: true, At: at(1), Slice: 0, PID: 7}, ""},
		{"1.5+ab n2 begin 1800000000001000000", Event{}, "want start, end or fenced"},
		{"1.5+ab n2 end soon", Event{}, "time"},
		{"1.5+ab n2 end 1 slice=x", Event{}, "slice"},
		{"1.5+ab n2", Event{}, "at least 4 fields"},
	}
	for _, c := range cases {
		got, err := ParseLedgerLine(c.line)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%q: err = %v, want one mentioning %q", c.line, err, c.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
}

func TestLedgerReaderIsIncrementalAndWaitsForWholeLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ledger-n1.log")
	r := NewLedgerReader(p, filepath.Join(dir, "ledger-missing.log"))
	if evs, err := r.Poll(); err != nil || len(evs) != 0 {
		t.Fatalf("Poll on missing files = %v, %v", evs, err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("a n1 start 1800000000000000000 slice=1 pid=1\na n1 end 18000000000")
	evs, err := r.Poll()
	if err != nil || len(evs) != 1 || evs[0].End {
		t.Fatalf("first Poll = %+v, %v; want the start only", evs, err)
	}
	f.WriteString("01000000 slice=1 pid=1\ngarbage\n")
	evs, err = r.Poll()
	if err != nil || len(evs) != 1 || !evs[0].End || !evs[0].At.Equal(at(1)) {
		t.Fatalf("second Poll = %+v, %v; want the completed end line", evs, err)
	}
	if r.Malformed != 1 {
		t.Fatalf("Malformed = %d, want 1", r.Malformed)
	}
}

// A handler that gave up at its commit point (its lease deadline passed) ended there: a handling
// of the same message after it, on the same node, is a repeat, not a concurrent duplicate.
func TestFencedHandlingEnds(t *testing.T) {
	evs := []Event{
		{ID: "a", Node: "n1", At: at(10), Slice: 1, PID: 1},
		{ID: "a", Node: "n1", Fenced: true, At: at(30), Slice: 1, PID: 1},
		{ID: "a", Node: "n1", At: at(1400), Slice: 1, PID: 2},
		{ID: "a", Node: "n1", End: true, At: at(1420), Slice: 1, PID: 2},
	}
	hs := PairHandlings(evs)
	if len(hs) != 2 || !hs[0].Fenced.Equal(at(30)) || hs[0].Completed() || !hs[1].Completed() {
		t.Fatalf("PairHandlings = %+v", hs)
	}
	r := Analyze(Input{Enqueued: []string{"a"}, Handlings: hs})
	if r.ConcurrentDuplicates != 0 || r.UnexplainedRepeats != 0 || r.RepeatsAfterCrash != 1 || r.Lost != 0 {
		t.Fatalf("report %+v", r)
	}
	// Without the fenced line the first handling never ends: a concurrent duplicate.
	r = Analyze(Input{Enqueued: []string{"a"}, Handlings: PairHandlings([]Event{evs[0], evs[2], evs[3]})})
	if r.ConcurrentDuplicates != 1 {
		t.Fatalf("without the fenced line: %d concurrent duplicates, want 1", r.ConcurrentDuplicates)
	}
}

func TestPairHandlings(t *testing.T) {
	evs := []Event{
		{ID: "a", Node: "n1", At: at(10), Slice: 1, PID: 1},
		{ID: "a", Node: "n2", At: at(30), Slice: 1, PID: 9},
		{ID: "a", Node: "n1", End: true, At: at(20), Slice: 1, PID: 1},
		{ID: "b", Node: "n1", At: at(5), Slice: 2, PID: 2}, // cut off
	}
	got := PairHandlings(evs)
	want := []Handling{
		{ID: "b", Node: "n1", Slice: 2, PID: 2, Start: at(5)},
		{ID: "a", Node: "n1", Slice: 1, PID: 1, Start: at(10), End: at(20)},
		{ID: "a", Node: "n2", Slice: 1, PID: 9, Start: at(30)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("PairHandlings =\n%+v\nwant\n%+v", got, want)
	}
}

func h(id, node string, start, end int) Handling {
	x := Handling{ID: id, Node: node, Start: at(start)}
	if end >= 0 {
		x.End = at(end)
	}
	return x
}

func fault(k Kind, node string, atMs, doneMs, endMs int) FaultRecord {
	return FaultRecord{Fault: Fault{Kind: k}, NodeName: node, At: at(atMs), Done: at(doneMs), End: at(endMs)}
}

// blackhole is a KindBlackhole record whose node got its lease and its slices back leaseMs and
// slicesMs after the healing (0: not reached).
func blackhole(node string, doneMs, endMs, leaseMs, slicesMs int) FaultRecord {
	f := fault(KindBlackhole, node, doneMs-5, doneMs, endMs)
	f.Held, f.Silenced = 3, 2
	f.LeaseBack, f.SlicesBack = time.Duration(leaseMs)*time.Millisecond, time.Duration(slicesMs)*time.Millisecond
	return f
}

func TestAnalyze(t *testing.T) {
	cases := []struct {
		name  string
		in    Input
		check func(t *testing.T, r Report)
	}{
		{"clean run", Input{
			Enqueued:  []string{"a", "b"},
			Handlings: []Handling{h("a", "n1", 0, 10), h("b", "n2", 5, 15)},
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.Completed != 2 || r.RepeatsAfterCrash != 0 {
				t.Fatalf("report %+v, err %v", r, err)
			}
		}},
		{"lost and stranded", Input{
			Enqueued: []string{"a", "b", "c", "d"},
			Leftovers: []Leftover{
				{ID: "c", Where: "bad", Reason: "found in flight after a crash or a lost lease 3 times: the handler never finished it"},
				{ID: "d", Where: "in-flight"},
			},
			Handlings: []Handling{h("a", "n1", 0, 10), h("c", "n1", 2, -1)},
		}, func(t *testing.T, r Report) {
			if r.Lost != 1 || r.LostIDs[0] != "b" || r.Stranded != 2 || r.StrandedExplained != 1 {
				t.Fatalf("lost %d %v, stranded %d (%d explained)", r.Lost, r.LostIDs, r.Stranded, r.StrandedExplained)
			}
			if err := r.Err(); err == nil || !strings.Contains(err.Error(), "1 messages lost") || !strings.Contains(err.Error(), "1 messages left on disk") {
				t.Fatalf("Err = %v", err)
			}
		}},
		{"file left behind although handled", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, 10)},
			Leftovers: []Leftover{{ID: "a", Where: "in-flight"}},
		}, func(t *testing.T, r Report) {
			if r.Stranded != 1 || r.Err() == nil {
				t.Fatalf("stranded %d, err %v", r.Stranded, r.Err())
			}
		}},
		{"overlapping completed handlings", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, 20), h("a", "n2", 10, 30)},
		}, func(t *testing.T, r Report) {
			if r.ConcurrentDuplicates != 1 || r.UnexplainedRepeats != 1 {
				t.Fatalf("dups %d unexplained %d", r.ConcurrentDuplicates, r.UnexplainedRepeats)
			}
		}},
		{"kill cuts the handling off before the takeover", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 3000, 3010)},
			Faults:    []FaultRecord{fault(KindKill, "n1", 5, 8, 6000)},
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.RepeatsAfterCrash != 1 || r.CutOff != 1 {
				t.Fatalf("err %v, repeats after crash %d, cut off %d", err, r.RepeatsAfterCrash, r.CutOff)
			}
		}},
		{"handling running on after the kill overlaps", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 3, 10)},
			Faults:    []FaultRecord{fault(KindKill, "n1", 4, 5, 6000)},
		}, func(t *testing.T, r Report) {
			if r.ConcurrentDuplicates != 1 {
				t.Fatalf("dups %d, want 1", r.ConcurrentDuplicates)
			}
		}},
		{"cut off with no fault nor lapse never ends", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 9000, 9010)},
			Faults:    []FaultRecord{fault(KindKill, "n3", 5, 8, 6000)},
		}, func(t *testing.T, r Report) {
			if r.ConcurrentDuplicates != 1 || r.UnexplainedRepeats != 1 {
				t.Fatalf("dups %d unexplained %d, want 1 and 1", r.ConcurrentDuplicates, r.UnexplainedRepeats)
			}
		}},
		{"lease lapse cuts off and explains", Input{
			Enqueued:  []string{"a", "b"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n1", 3000, 3010), h("b", "n2", 0, 10), h("b", "n3", 4000, 4010)},
			Lapses:    map[string][]time.Time{"n1": {at(100)}, "n2": {at(50)}},
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.RepeatsAfterCrash != 2 {
				t.Fatalf("err %v, repeats after crash %d, want 2", err, r.RepeatsAfterCrash)
			}
		}},
		{"completed, then paused before the file was removed", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, 10), h("a", "n2", 4000, 4010)},
			Faults:    []FaultRecord{fault(KindPause, "n1", 11, 12, 5000)},
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.RepeatsAfterCrash != 1 {
				t.Fatalf("err %v, repeats after crash %d", err, r.RepeatsAfterCrash)
			}
		}},
		{"a paused node handling after the takeover is not explained by the pause", Input{
			// n1 was paused before it ran its handler; on resume it handled a message n2 had
			// already handled: the later handling is the stale one, and nothing explains it.
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n2", 3000, 3010), h("a", "n1", 5001, 5010)},
			Faults:    []FaultRecord{fault(KindPause, "n1", 0, 1, 5000)},
		}, func(t *testing.T, r Report) {
			if r.UnexplainedRepeats != 1 {
				t.Fatalf("unexplained %d, want 1", r.UnexplainedRepeats)
			}
		}},
		// Partitions: n1 is cut off Consul at 10 ms (Done), healed at 5000 ms; lease 800 ms.
		{"partition: handler killed on the lapse, message taken over", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 3000, 3010)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 5000)},
			Lapses:    map[string][]time.Time{"n1": {at(800)}},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.RepeatsAfterCrash != 1 || r.CutOff != 1 || r.Faults[KindPartition] != 1 {
				t.Fatalf("err %v, repeats after crash %d, cut off %d, partitions %d", err, r.RepeatsAfterCrash, r.CutOff, r.Faults[KindPartition])
			}
		}},
		{"partition: completed before the lapse, file left in flight, handled again", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 700, 720), h("a", "n2", 3000, 3010)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 5000)},
			Lapses:    map[string][]time.Time{"n1": {at(810)}},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.RepeatsAfterCrash != 1 {
				t.Fatalf("err %v, repeats after crash %d", err, r.RepeatsAfterCrash)
			}
		}},
		{"partition alone neither ends a handling nor explains a repeat", Input{
			// The cut-off node's processes run on: without a lapse of its runner, a handling cut
			// off there never ends (so the takeover's handling overlaps it), a completed one may
			// have been settled, and a partition longer than the lease without a lapse fails.
			Enqueued:  []string{"a", "b"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 3000, 3010), h("b", "n1", 0, 20), h("b", "n3", 3000, 3010)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 5000)},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if r.ConcurrentDuplicates != 1 || r.UnexplainedRepeats != 2 || r.PartitionsUnlapsed != 1 || r.RepeatsAfterCrash != 0 {
				t.Fatalf("dups %d unexplained %d unlapsed %d after crash %d; want 1, 2, 1, 0",
					r.ConcurrentDuplicates, r.UnexplainedRepeats, r.PartitionsUnlapsed, r.RepeatsAfterCrash)
			}
			if err := r.Err(); err == nil || !strings.Contains(err.Error(), "did not stop") {
				t.Fatalf("Err = %v", err)
			}
		}},
		{"partition: the takeover overlaps a handler that outlived the lapse", Input{
			// n1's handling started before the cut and was still running when n2 took the
			// message over, before n1's runner lapsed: a concurrent duplicate, whatever the cut.
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 600, 610)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 5000)},
			Lapses:    map[string][]time.Time{"n1": {at(800)}},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if r.ConcurrentDuplicates != 1 || r.Err() == nil {
				t.Fatalf("dups %d err %v, want 1 and an error", r.ConcurrentDuplicates, r.Err())
			}
		}},
		{"partition: a node handling past its lease did not stop; another node's lapse explains nothing", Input{
			// n1 started at 950, cut off since 10 with a lease of 800: past its lease (and the
			// slack). Its repeat is not explained by its own lapse (before the handling) nor by
			// n2's (another node).
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 950, 970), h("a", "n2", 3000, 3010)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 5000), fault(KindPartition, "n2", 1500, 1510, 2500)},
			Lapses:    map[string][]time.Time{"n1": {at(800)}, "n2": {at(2000)}},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if r.UnexplainedRepeats != 1 || r.HandledWhileCut != 1 || r.PartitionsUnlapsed != 0 {
				t.Fatalf("unexplained %d handled while cut %d unlapsed %d", r.UnexplainedRepeats, r.HandledWhileCut, r.PartitionsUnlapsed)
			}
			if err := r.Err(); err == nil || !strings.Contains(err.Error(), "1 handlings while cut off") {
				t.Fatalf("Err = %v", err)
			}
			want := fmt.Sprintf("a: handled on n1 at %s, cut off Consul since %s (lease 800ms), healed %s", stamp(at(950)), stamp(at(10)), stamp(at(5000)))
			if len(r.PartitionDetails) != 1 || r.PartitionDetails[0] != want {
				t.Fatalf("details %q, want %q", r.PartitionDetails, want)
			}
		}},
		{"filesystem cut: a node handling once it must have noticed did not stop", Input{
			// n1's filesystem cut at 10, timeout 2 s: it must have noticed by 3010 (lapseWithin
			// 1 s). A handling at 2900 is fine, one at 3100 is not, one after the healing is.
			Enqueued:  []string{"a", "b", "c"},
			Handlings: []Handling{h("a", "n1", 2900, 2950), h("b", "n1", 3100, 3150), h("c", "n1", 9001, 9010)},
			Faults:    []FaultRecord{fault(KindFSCut, "n1", 5, 10, 9000)},
			FSTimeout: 2 * time.Second,
		}, func(t *testing.T, r Report) {
			want := fmt.Sprintf("b: handled on n1 at %s, its filesystem cut since %s (timeout 2s), healed %s", stamp(at(3100)), stamp(at(10)), stamp(at(9000)))
			if r.HandledWhileCut != 1 || len(r.PartitionDetails) != 1 || r.PartitionDetails[0] != want {
				t.Fatalf("handled while cut %d, details %q; want 1, %q", r.HandledWhileCut, r.PartitionDetails, want)
			}
		}},
		{"partition: handling just before the lease ends, and after healing, are fine", Input{
			Enqueued:  []string{"a", "b"},
			Handlings: []Handling{h("a", "n1", 850, 870), h("b", "n1", 5001, 5020)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 5000)},
			Lapses:    map[string][]time.Time{"n1": {at(900)}},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.HandledWhileCut != 0 {
				t.Fatalf("err %v handled while cut %d", err, r.HandledWhileCut)
			}
		}},
		{"partition shorter than the lease needs no lapse", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, 10)},
			Faults:    []FaultRecord{fault(KindPartition, "n1", 5, 10, 1500)},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.PartitionsUnlapsed != 0 {
				t.Fatalf("err %v unlapsed %d", err, r.PartitionsUnlapsed)
			}
		}},
		// Blackholes are judged as partitions: n1 blackholed at 10 ms, healed at 5000 ms.
		{"blackhole: handler killed on the lapse, message taken over, handled after healing", Input{
			Enqueued:  []string{"a", "b"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 3000, 3010), h("b", "n1", 5001, 5020)},
			Faults:    []FaultRecord{blackhole("n1", 10, 5000, 800, 9000)},
			Lapses:    map[string][]time.Time{"n1": {at(800)}},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil || r.RepeatsAfterCrash != 1 || r.HandledWhileCut != 0 || r.Faults[KindBlackhole] != 1 {
				t.Fatalf("err %v, repeats after crash %d, handled while cut %d, blackholes %d", err, r.RepeatsAfterCrash, r.HandledWhileCut, r.Faults[KindBlackhole])
			}
		}},
		{"blackhole: a node handling past its lease, or without a lapse, did not stop", Input{
			// n1 starts a handling at 950, blackholed since 10 with a lease of 800, and its
			// runner logs no lapse: handled while cut off, a blackhole without a lapse, and a
			// repeat nothing explains (a blackhole alone explains nothing).
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 950, 970), h("a", "n2", 3000, 3010)},
			Faults:    []FaultRecord{blackhole("n1", 10, 5000, 0, 0)},
			Lease:     800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if r.HandledWhileCut != 1 || r.PartitionsUnlapsed != 1 || r.UnexplainedRepeats != 1 || r.RepeatsAfterCrash != 0 {
				t.Fatalf("handled while cut %d unlapsed %d unexplained %d after crash %d; want 1, 1, 1, 0",
					r.HandledWhileCut, r.PartitionsUnlapsed, r.UnexplainedRepeats, r.RepeatsAfterCrash)
			}
			if err := r.Err(); err == nil || !strings.Contains(err.Error(), "did not stop") {
				t.Fatalf("Err = %v", err)
			}
			if len(r.BlackholeDetails) != 1 || !strings.Contains(r.BlackholeDetails[0], "lease back not reached, slices back not reached") {
				t.Fatalf("details %q", r.BlackholeDetails)
			}
		}},
		{"blackhole recovery times are summarized over the blackholes that recovered", Input{
			Faults: []FaultRecord{blackhole("n1", 10, 5000, 900, 4000), blackhole("n2", 10000, 15000, 1100, 300000),
				blackhole("n3", 20000, 25000, 1000, 0), fault(KindPartition, "n1", 30000, 30010, 35000)},
			Lapses: map[string][]time.Time{"n1": {at(810), at(30810)}, "n2": {at(10800)}, "n3": {at(20800)}},
			Lease:  800 * time.Millisecond,
		}, func(t *testing.T, r Report) {
			if err := r.Err(); err != nil {
				t.Fatal(err)
			}
			l, sl := r.BlackholeLeaseBack, r.BlackholeSlicesBack
			if l.N != 3 || l.Min != 900*time.Millisecond || l.Median != time.Second || l.Max != 1100*time.Millisecond {
				t.Fatalf("lease back %s", l)
			}
			if sl.N != 2 || sl.Min != 4*time.Second || sl.Max != 5*time.Minute {
				t.Fatalf("slices back %s", sl)
			}
			if len(r.BlackholeDetails) != 3 || !strings.Contains(r.BlackholeDetails[1], "lease back 1.1s, slices back 5m0s") {
				t.Fatalf("details %q", r.BlackholeDetails)
			}
		}},
		{"clean restart explains nothing", Input{
			Enqueued:  []string{"a"},
			Handlings: []Handling{h("a", "n1", 0, -1), h("a", "n2", 30, 40)},
			Faults:    []FaultRecord{fault(KindRestart, "n1", 5, 10, 2000)},
		}, func(t *testing.T, r Report) {
			if r.UnexplainedRepeats != 1 || r.ConcurrentDuplicates != 1 {
				t.Fatalf("unexplained %d dups %d", r.UnexplainedRepeats, r.ConcurrentDuplicates)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.check(t, Analyze(c.in)) })
	}
}

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 20; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	s := Summarize(ds)
	if s.N != 20 || s.Min != time.Second || s.Max != 20*time.Second || s.Median != 10500*time.Millisecond || s.P95 != 19*time.Second {
		t.Fatalf("Summarize = %s", s)
	}
	if s := Summarize([]time.Duration{3 * time.Second}); s.Median != 3*time.Second || s.P95 != 3*time.Second {
		t.Fatalf("one sample: %s", s)
	}
	if s := Summarize(nil); s.N != 0 || s.String() != "no samples" {
		t.Fatalf("no samples: %s", s)
	}
}

// TestFormatCounts: the report writes the scraped counters (float64) as %g and the counted log
// lines (int) as %d, sorted by reason.
func TestFormatCounts(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{formatCounts(map[string]float64{"failover": 2, "acquired": 12, "drain": 0.5, "big": 1e21}), "acquired=12 big=1e+21 drain=0.5 failover=2"},
		{formatCounts(map[string]int{"failover": 2, "acquired": 12}), "acquired=12 failover=2"},
		{formatCounts(map[string]float64{}), "none"},
		{formatCounts[int](nil), "none"},
	} {
		if c.got != c.want {
			t.Errorf("formatCounts = %q, want %q", c.got, c.want)
		}
	}
}

func TestScheduleIsDeterministicAndBounded(t *testing.T) {
	p := ScheduleParams{Nodes: 3, Lease: 800 * time.Millisecond, Takeover: 4 * time.Second, GapMin: time.Second, GapMax: 3 * time.Second,
		StallMax: 1400 * time.Millisecond, BlipMax: 1100 * time.Millisecond}
	counts := map[Kind]int{KindKill: 2, KindPause: 3, KindConsulRestart: 1, KindRestart: 2, KindDrain: 2, KindPartition: 2, KindBlackhole: 2,
		KindStall: 2, KindBlip: 2}
	a, b := NewSchedule(7, counts, p), NewSchedule(7, counts, p)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed gave two schedules")
	}
	if reflect.DeepEqual(a, NewSchedule(8, counts, p)) {
		t.Fatal("another seed gave the same schedule")
	}
	got := map[Kind]int{}
	for i, f := range a {
		got[f.Kind]++
		if f.Seq != i || f.Node < 0 || f.Node >= 3 || f.Gap < p.GapMin || f.Gap >= p.GapMax {
			t.Errorf("fault %+v out of bounds", f)
		}
		switch f.Kind {
		case KindKill, KindPartition, KindBlackhole:
			if f.Hold < p.Takeover {
				t.Errorf("%s held %s, shorter than the takeover %s", f.Kind, f.Hold, p.Takeover)
			}
		case KindPause:
			if f.Hold <= p.Lease {
				t.Errorf("pause held %s, not longer than the lease %s", f.Hold, p.Lease)
			}
		case KindStall:
			if f.Hold > p.StallMax || f.Hold < p.StallMax/2 {
				t.Errorf("stall held %s, not within [%s, %s]", f.Hold, p.StallMax/2, p.StallMax)
			}
		case KindBlip:
			if f.Hold > p.BlipMax || f.Hold < p.BlipMax/2 {
				t.Errorf("blip held %s, not within [%s, %s]", f.Hold, p.BlipMax/2, p.BlipMax)
			}
		}
	}
	if !reflect.DeepEqual(got, counts) {
		t.Fatalf("kinds %v, want %v", got, counts)
	}
	rng1, rng2 := NewRand(3), NewRand(3)
	drawn := map[Kind]int{}
	for i := range 200 {
		x, y := NextFault(rng1, i, p), NextFault(rng2, i, p)
		if x != y {
			t.Fatalf("NextFault #%d differs: %+v vs %+v", i, x, y)
		}
		drawn[x.Kind]++
	}
	// Random draws take every kind but blackholes, filesystem cuts (an fscut needs a cluster on
	// per-node mounts), stalls and blips, which a run gets only by count.
	for _, k := range Kinds {
		if n := drawn[k]; (n == 0) != (k == KindBlackhole || k == KindFSCut || k == KindStall || k == KindBlip) {
			t.Errorf("NextFault drew %d faults of kind %s in 200", n, k)
		}
	}
}

func TestParseKinds(t *testing.T) {
	got, err := ParseKinds("kill=2, pause=1,consul-restart=0,partition=3,blackhole=1")
	if err != nil || !reflect.DeepEqual(got, map[Kind]int{KindKill: 2, KindPause: 1, KindConsulRestart: 0, KindPartition: 3, KindBlackhole: 1}) {
		t.Fatalf("ParseKinds = %v, %v", got, err)
	}
	for _, bad := range []string{"kill", "kill=x", "nap=1", "kill=-1"} {
		if _, err := ParseKinds(bad); err == nil {
			t.Errorf("ParseKinds(%q) accepted", bad)
		}
	}
}

func TestParseOwnershipChanges(t *testing.T) {
	metrics := `# HELP qslice_ownership_changes_total Slices acquired or released by this node, by reason.
# TYPE qslice_ownership_changes_total counter
qslice_ownership_changes_total{reason="failback"} 3
qslice_ownership_changes_total{reason="failover"} 2
qslice_ownership_changes_totally{reason="x"} 9
qslice_up 1
`
	got, err := parseOwnershipChanges(strings.NewReader(metrics))
	if err != nil || !reflect.DeepEqual(got, map[string]float64{"failback": 3, "failover": 2}) {
		t.Fatalf("parseOwnershipChanges = %v, %v", got, err)
	}
}

func TestReadNodeLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "n1.1.log")
	log := `{"time":"2027-01-15T08:00:00.5Z","level":"WARN","msg":"lease lapsed: stopped claiming and cancelled running handlers","component":"runner","queue":"in"}
{"time":"2027-01-15T08:00:00.6Z","level":"WARN","msg":"lease lapsed: stopped processing all slices","component":"failover"}
{"time":"2027-01-15T08:00:00.7Z","level":"INFO","msg":"session created","component":"failover","session":"x"}
{"time":"2027-01-15T08:00:01Z","level":"INFO","msg":"slice ownership changed","component":"failover","slice":"in/3","from":"n2","to":"n1","reason":"failover"}
{"time":"2027-01-15T08:00:02Z","level":"ERROR","msg":"something broke","component":"runner"}
panic: not json
`
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	nl, err := ReadNodeLog(p)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2027, 1, 15, 8, 0, 0, 500_000_000, time.UTC)
	if len(nl.Lapses) != 1 || !nl.Lapses[0].Equal(want) {
		t.Errorf("Lapses = %v, want the runner's only, at %v", nl.Lapses, want)
	}
	if nl.Changes["failover"] != 1 || len(nl.ChangeLines) != 1 || nl.ChangeLines[0].Slice != "in/3" || nl.ChangeLines[0].To != "n1" {
		t.Errorf("changes %v %+v", nl.Changes, nl.ChangeLines)
	}
	if len(nl.Sessions) != 1 || !nl.Sessions[0].Equal(want.Add(200*time.Millisecond)) {
		t.Errorf("Sessions = %v, want one at 08:00:00.7", nl.Sessions)
	}
	if nl.Errors != 2 {
		t.Errorf("Errors = %d, want 2 (one ERROR line, one non-JSON line)", nl.Errors)
	}
}

// TestLeftoverExplained: only qslice's own "too many attempts" reason, after handlings the ledger
// saw, explains a message in bad/.
func TestLeftoverExplained(t *testing.T) {
	ours := queue.ReasonInFlightTooOften + " 3 times: the handler never finished it"
	cases := []struct {
		l         Leftover
		handlings int
		want      bool
	}{
		{Leftover{Where: "bad", Reason: ours}, 3, true},
		{Leftover{Where: "bad", Reason: ours}, 1, true},
		{Leftover{Where: "bad", Reason: ours}, 0, false}, // never handled: the faults cannot explain it
		{Leftover{Where: "bad", Reason: "found in flight after a crash and unreadable: bad checksum"}, 2, false},
		{Leftover{Where: "bad", Reason: "unparsable reason file: x"}, 2, false},
		{Leftover{Where: "shunt", Reason: ours}, 2, false},
		{Leftover{Where: "in-flight"}, 2, false},
	}
	for _, c := range cases {
		if got := c.l.Explained(c.handlings); got != c.want {
			t.Errorf("%+v with %d handlings: Explained = %v, want %v", c.l, c.handlings, got, c.want)
		}
	}
}

// TestNodeErrorsAreJudged: an ERROR line fails the run unless a fault of the run, active at that
// time, is listed as causing it.
func TestNodeErrorsAreJudged(t *testing.T) {
	faults := []FaultRecord{fault(KindConsulRestart, "", 1000, 1100, 3000), fault(KindKill, "n2", 50000, 50100, 52000)}
	cases := []struct {
		l    ErrorLine
		want bool
	}{
		{ErrorLine{At: at(2000), Msg: "consul request failing; retrying with backoff"}, true},
		{ErrorLine{At: at(3000).Add(errorSettle - time.Second), Msg: "consul request failing; retrying with backoff"}, true},
		{ErrorLine{At: at(3000).Add(errorSettle + time.Second), Msg: "consul request failing; retrying with backoff"}, false},
		{ErrorLine{At: at(500), Msg: "consul request failing; retrying with backoff"}, false},   // before any fault
		{ErrorLine{At: at(51000), Msg: "consul request failing; retrying with backoff"}, false}, // a kill does not explain it
		// A request that got no answer in time: a loaded machine, expected at any time.
		{ErrorLine{At: at(51000), Msg: "consul request failing; retrying with backoff",
			Line: `{"level":"ERROR","msg":"consul request failing; retrying with backoff","err":"Put \"http://127.0.0.1:1/v1/agent/check/update/x\": context deadline exceeded"}`}, true},
		// A request Consul refused is a bug outside a fault.
		{ErrorLine{At: at(51000), Msg: "consul request failing; retrying with backoff",
			Line: `{"level":"ERROR","msg":"consul request failing; retrying with backoff","err":"unexpected response 404"}`}, false},
		{ErrorLine{At: at(2000), Msg: "claim failed; the file is left in place"}, false},
		{ErrorLine{Line: "panic: runtime error"}, false},
	}
	for _, c := range cases {
		if got := ExpectedError(c.l, faults); got != c.want {
			t.Errorf("%+v: expected = %v, want %v", c.l, got, c.want)
		}
	}
	r := Report{NodeErrors: []string{"n1.log: claim failed"}}
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "claim failed") {
		t.Errorf("Err with an unexplained ERROR line = %v", err)
	}
}

func TestChurn(t *testing.T) {
	f := func(seq int, k Kind, node string, ms, owned int) FaultRecord {
		return FaultRecord{Fault: Fault{Seq: seq, Kind: k}, NodeName: node, At: at(ms), Owned: owned}
	}
	faults := []FaultRecord{
		f(0, KindKill, "n1", 1000, 2),        // session lost (new process): 4 needed
		f(1, KindStall, "n2", 2000, 3),       // none needed: any move is spurious
		f(2, KindPause, "n3", 3000, 3),       // session kept: none needed
		f(3, KindDrain, "n1", 4000, 2),       // 4 needed
		f(4, KindConsulRestart, "", 5000, 0), // none needed
		f(5, KindPartition, "n2", 6000, 3),   // session lost: 6 needed, only 6 made
	}
	mv := func(ms int, slice, from, to, reason string) Move {
		return Move{At: at(ms), Slice: slice, From: from, To: to, Reason: reason}
	}
	moves := []Move{
		mv(10, "in/0", "", "n1", "acquired"), mv(11, "in/1", "", "n2", "acquired"), // boot
		// kill of n1: 2 away, 2 back, and one fail-back too many.
		mv(1100, "in/0", "n1", "n2", "failover"), mv(1100, "in/4", "n1", "n3", "failover"),
		mv(1500, "in/0", "n2", "n3", "failback"), mv(1600, "in/0", "n3", "n1", "failback"), mv(1600, "in/4", "n3", "n1", "failback"),
		// stall of n2: one spurious move.
		mv(2500, "in/1", "n2", "n3", "failback"),
		// drain of n1: 2 + 2.
		mv(4100, "in/0", "n1", "n2", "drain"), mv(4100, "in/4", "n1", "n3", "drain"),
		mv(4500, "in/0", "n2", "n1", "failback"), mv(4500, "in/4", "n3", "n1", "failback"),
		// Consul restart: one spurious move.
		mv(5500, "in/2", "n3", "n1", "failback"),
	}
	sessions := map[string][]time.Time{"n1": {at(5), at(1200)}, "n2": {at(5), at(6500)}, "n3": {at(5)}}
	c := analyzeChurn(faults, moves, sessions)
	if c.Boot != 2 {
		t.Errorf("Boot = %d, want 2", c.Boot)
	}
	wantMoves := map[Kind]int{KindKill: 5, KindStall: 1, KindDrain: 4, KindConsulRestart: 1}
	wantMin := map[Kind]int{KindKill: 4, KindDrain: 4, KindPartition: 6}
	for _, k := range Kinds {
		if c.Moves[k] != wantMoves[k] || c.Min[k] != wantMin[k] {
			t.Errorf("%s: %d moves, %d needed; want %d, %d", k, c.Moves[k], c.Min[k], wantMoves[k], wantMin[k])
		}
	}
	if c.Excess != 3 || c.Spurious != 2 || len(c.Details) != 3 {
		t.Errorf("Excess %d, Spurious %d, %d details; want 3, 2, 3: %q", c.Excess, c.Spurious, len(c.Details), c.Details)
	}
	if !strings.Contains(c.Details[0], "kill") || !strings.Contains(c.Details[0], "5 moves, 4 needed") || !strings.Contains(c.Details[0], "session lost") {
		t.Errorf("details[0] = %q", c.Details[0])
	}
	// Only acquisitions by the logging node are moves.
	nl := NodeLog{ChangeLines: []OwnershipChange{
		{At: at(1), Slice: "in/0", From: "n2", To: "n1", Reason: "failover"},
		{At: at(2), Slice: "in/1", From: "n1", To: "n2", Reason: "failback"}, // our release
		{At: at(3), Slice: "in/2", From: "n1", To: "n1", Reason: "acquired"}, // our own slice again
		{At: at(4), Slice: "in/3", From: "n1", To: "", Reason: "lease_lost"},
		{At: at(5), Slice: "in/4", From: "", To: "n1", Reason: "acquired"},
	}}
	if got := movesFromLog("n1", nl); len(got) != 2 || got[0].Slice != "in/0" || got[1].Slice != "in/4" {
		t.Errorf("movesFromLog = %+v, want in/0 and in/4", got)
	}
}
