package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/qslice/qslice/internal/testenv"
	"math/big"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Mailman 3.3 (mailman/core/switchboard.py), quoted literally:
//
//	shamax = int('0xffffffffffffffffffffffffffffffffffffffff', 16)
//	...
//	    assert (numslices & (numslices - 1)) == 0, ('Not a power of 2: {}'.format(numslices))
//	    ...
//	    if numslices != 1:
//	        self._lower = ((shamax + 1) * slice) / numslices
//	        self._upper = (((shamax + 1) * (slice + 1)) / numslices) - 1
//	...
//	    when, digest = filebase.split('+', 1)
//	    if lower is None or (lower <= int(digest, 16) <= upper):
//
// In Python 3, "/" is true division: int / int is the float nearest to the exact quotient (ties to
// even), "float - 1" is a float subtraction, and "int <= float" compares exact values. Mailman 2.1
// has the same lines but ran on Python 2, where "/" of two longs is floor division: that is the
// integer formula below.

var shamaxPlus1 = two160

// mailman3Bounds returns Mailman 3's float bounds of slice i of n.
func mailman3Bounds(i, n int) (lower, upper float64) {
	div := func(k int) float64 {
		q := new(big.Rat).SetFrac(new(big.Int).Mul(shamaxPlus1, big.NewInt(int64(k))), big.NewInt(int64(n)))
		f, _ := q.Float64() // nearest float64, ties to even, like Python's int / int
		return f
	}
	return div(i), div(i+1) - 1
}

// mailman3In reports whether Mailman 3's switchboard for slice i of n lists digest d.
func mailman3In(d Digest, i, n int) bool {
	if n == 1 {
		return true // lower is None
	}
	lower, upper := mailman3Bounds(i, n)
	return mailman3Within(digestFloat(d), lower, upper)
}

// digestFloat returns d as an exact big.Float (the precision grows to the integer's length).
func digestFloat(d Digest) *big.Float { return new(big.Float).SetInt(digestInt(d)) }

// mailman3Within is Python's "lower <= int(digest, 16) <= upper" for float bounds: exact comparison.
func mailman3Within(z *big.Float, lower, upper float64) bool {
	return big.NewFloat(lower).Cmp(z) <= 0 && z.Cmp(big.NewFloat(upper)) <= 0
}

// mailman3Slices returns every slice of n whose Mailman 3 switchboard lists d. candidates limits the
// search (nil: all n slices).
func mailman3Slices(d Digest, n int, candidates []int) []int {
	if candidates == nil {
		candidates = make([]int, n)
		for i := range candidates {
			candidates[i] = i
		}
	}
	var in []int
	for _, i := range candidates {
		if i >= 0 && i < n && mailman3In(d, i, n) {
			in = append(in, i)
		}
	}
	return in
}

// mailmanIntIn is the same switchboard formula in integer arithmetic (Mailman 2.1, or Mailman 3 with
// "//"): lower = (shamax+1)*i // n, upper = (shamax+1)*(i+1) // n - 1, inclusive.
func mailmanIntIn(d Digest, i, n int) bool {
	lower := new(big.Int).Mul(shamaxPlus1, big.NewInt(int64(i)))
	lower.Quo(lower, big.NewInt(int64(n)))
	upper := new(big.Int).Mul(shamaxPlus1, big.NewInt(int64(i+1)))
	upper.Quo(upper, big.NewInt(int64(n)))
	upper.Sub(upper, big.NewInt(1))
	z := digestInt(d)
	return lower.Cmp(z) <= 0 && z.Cmp(upper) <= 0
}

func neighbours(i int) []int { return []int{i - 2, i - 1, i, i + 1, i + 2} }

// onPow2Boundary reports whether d is exactly the lower bound of a slice i > 0 of n = 2^k: its
// 160-k low bits are zero and it is not zero.
func onPow2Boundary(d Digest, n int) bool {
	if n == 1 {
		return false
	}
	z := digestInt(d)
	k := big.NewInt(int64(n)).BitLen() - 1
	return z.Sign() != 0 && z.TrailingZeroBits() >= uint(160-k)
}

// TestMailmanPowersOfTwoAwayFromBoundaries: for n = 2^k, every digest that is not exactly on a slice
// boundary is in the same single slice for Mailman 3 and for qslice.
func TestMailmanPowersOfTwoAwayFromBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for k := 0; k <= 16; k++ {
		n := 1 << k
		for j := 0; j < 300; j++ {
			d := randDigest(r)
			if onPow2Boundary(d, n) {
				continue // probability 2^(k-160)
			}
			want := SliceOf(d, n)
			var cands []int
			if n > 64 {
				cands = neighbours(want)
			}
			if got := mailman3Slices(d, n, cands); !slices.Equal(got, []int{want}) {
				t.Fatalf("n=%d digest %s: Mailman 3 slices %v, qslice slice %d", n, d, got, want)
			}
			if !mailmanIntIn(d, want, n) {
				t.Fatalf("n=%d digest %s: integer Mailman formula does not put it in slice %d", n, d, want)
			}
		}
	}
}

// TestMailmanPowersOfTwoAtBoundaries: around every checked boundary the assignments agree, except on
// the boundary digest itself, lo_i = 2^160*i/n with 0 < i < n: Mailman 3's float upper bound of slice
// i-1 loses its "- 1" to rounding (2^160*i/n - 1 rounds back to 2^160*i/n), so Mailman 3 lists that
// one digest in both slices i-1 and i, while qslice (and the integer formula) put it in slice i only.
func TestMailmanPowersOfTwoAtBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	one := big.NewInt(1)
	for k := 0; k <= 16; k++ {
		n := 1 << k
		is := boundaryIndexes(r, n)
		if n > 1024 {
			is = []int{0, 1, n/2 - 1, n / 2, n - 1}
			for j := 0; j < 64; j++ {
				is = append(is, r.IntN(n))
			}
		}
		for _, i := range is {
			lo, hi := SliceBounds(i, n)
			type boundaryCase struct {
				z       *big.Int
				qslice  int   // SliceOf
				mailman []int // Mailman 3's slices
			}
			cases := []boundaryCase{
				{new(big.Int).Add(lo, one), i, []int{i}},
				{new(big.Int).Sub(hi, one), i, []int{i}},
			}
			if i == 0 {
				cases = append(cases, boundaryCase{lo, 0, []int{0}})
			} else {
				cases = append(cases,
					boundaryCase{new(big.Int).Sub(lo, one), i - 1, []int{i - 1}},
					boundaryCase{lo, i, []int{i - 1, i}}) // the one difference
			}
			for _, c := range cases {
				d := digestOf(c.z)
				if got := SliceOf(d, n); got != c.qslice {
					t.Fatalf("n=%d i=%d digest %s: SliceOf = %d, want %d", n, i, d, got, c.qslice)
				}
				var cands []int
				if n > 64 {
					cands = neighbours(c.qslice)
				}
				if got := mailman3Slices(d, n, cands); !slices.Equal(got, c.mailman) {
					t.Fatalf("n=%d i=%d digest %s: Mailman 3 slices %v, want %v", n, i, d, got, c.mailman)
				}
				for _, j := range neighbours(c.qslice) {
					if j >= 0 && j < n && mailmanIntIn(d, j, n) != (j == c.qslice) {
						t.Fatalf("n=%d digest %s: integer Mailman formula says in slice %d = %v, qslice says slice %d", n, d, j, !(j == c.qslice), c.qslice)
					}
				}
			}
		}
	}
}

// TestMailmanIntegerFormulaEveryN: the integer form of the switchboard formula is exactly qslice's
// slicing for every n, boundaries included (its inclusive upper bound is qslice's hi - 1).
func TestMailmanIntegerFormulaEveryN(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	one := big.NewInt(1)
	for _, n := range sliceCounts(r, true) {
		is := []int{0, n - 1, r.IntN(n)}
		for _, i := range is {
			lo, hi := SliceBounds(i, n)
			ds := []Digest{randDigest(r), digestOf(lo), digestOf(new(big.Int).Sub(hi, one))}
			if i > 0 {
				ds = append(ds, digestOf(new(big.Int).Sub(lo, one)))
			}
			for _, d := range ds {
				want := SliceOf(d, n)
				for _, j := range neighbours(want) {
					if j >= 0 && j < n && mailmanIntIn(d, j, n) != (j == want) {
						t.Fatalf("n=%d digest %s: integer formula puts it in slice %d = %v, SliceOf = %d", n, d, j, j != want, want)
					}
				}
			}
		}
	}
}

// TestMailmanFloatFormulaOtherN documents what the literal Mailman 3 formula would do for counts that
// are not powers of two (Mailman itself refuses them): it agrees with qslice on random digests, but
// its bounds are rounded to 53 bits, so a band of digests next to each boundary (up to about
// 2^(160-53) wide) lands in a different slice. qslice's exact slicing has no such band.
func TestMailmanFloatFormulaOtherN(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	for _, n := range []int{3, 5, 6, 7, 12, 100, 1000, 65535} {
		for j := 0; j < 200; j++ {
			d := randDigest(r)
			want := SliceOf(d, n)
			if got := mailman3Slices(d, n, neighbours(want)); !slices.Equal(got, []int{want}) {
				t.Fatalf("n=%d random digest %s: Mailman 3 formula slices %v, qslice %d", n, d, got, want)
			}
		}
	}
	// n = 3: float(2^160/3) is below floor(2^160/3), so the digest just above that float is in
	// Mailman's slice 1 but in qslice's slice 0.
	lower1, _ := mailman3Bounds(1, 3)
	lo1, _ := SliceBounds(1, 3)
	zf, _ := big.NewFloat(lower1).Int(nil)
	if zf.Cmp(lo1) >= 0 {
		t.Fatalf("expected float(2^160/3) = %x below floor(2^160/3) = %x", zf, lo1)
	}
	d := digestOf(zf.Add(zf, big.NewInt(1)))
	if got, mm := SliceOf(d, 3), mailman3Slices(d, 3, nil); got != 0 || !slices.Equal(mm, []int{1}) {
		t.Fatalf("digest %s: qslice slice %d (want 0), Mailman 3 formula %v (want [1])", d, got, mm)
	}
}

// runPython runs script with python, request as JSON on stdin, and decodes its JSON stdout into resp.
func runPython(t *testing.T, python, script string, request, resp any) {
	t.Helper()
	in, err := json.Marshal(request)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", script)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", python, err, stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), resp); err != nil {
		t.Fatalf("decode python output: %v\n%s", err, stdout.String())
	}
}

const mailmanScript = `
import email, json, sys
from mailman.core.switchboard import Switchboard
req = json.load(sys.stdin)
out = {"queries": []}
for q in req["queries"]:
    out["queries"].append([Switchboard("in", q["dir"], slice=i, numslices=q["n"]).files for i in q["slices"]])
out["listing"] = Switchboard("in", req["listdir"]).files
sb = Switchboard("in", req["enqdir"])
msg = email.message_from_string("From: a@example.com\nTo: b@example.com\nSubject: t\n\nbody\n")
out["enqueued"] = [sb.enqueue(msg, listid="test.example.com") for _ in range(req["enqcount"])]
json.dump(out, sys.stdout)
`

type mailmanQuery struct {
	Dir    string `json:"dir"`
	N      int    `json:"n"`
	Slices []int  `json:"slices"`
}

// TestMailmanSwitchboardPython cross-checks against the real Mailman 3 code, run by python3:
// slice membership of a few thousand digests (random and on boundaries), FIFO order of names that
// qslice wrote, and names that Mailman wrote.
func TestMailmanSwitchboardPython(t *testing.T) {
	python := pythonWith("mailman.core.switchboard")
	if python == "" {
		t.Skip("no python3 with Mailman 3 (Debian package mailman3) found; set QSLICE_PYTHON to one")
	}
	r := rand.New(rand.NewPCG(19, 20))
	base := t.TempDir()
	one := big.NewInt(1)

	// writeDigests creates one empty "<when>+<digest>.pck" per distinct digest in a new directory.
	writeDigests := func(name string, ds []Digest) (string, map[string]Digest) {
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		files := map[string]Digest{}
		seen := map[Digest]bool{}
		for _, d := range ds {
			if seen[d] {
				continue
			}
			seen[d] = true
			fb := FormatWhen(time.Unix(1_700_000_000+int64(len(files)), 0)) + "+" + d.String()
			if err := os.WriteFile(filepath.Join(dir, fb+SuffixReady), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			files[fb] = d
		}
		return dir, files
	}
	boundaryDigests := func(n int, is []int) []Digest {
		var ds []Digest
		for _, i := range is {
			lo, hi := SliceBounds(i, n)
			ds = append(ds, digestOf(lo), digestOf(new(big.Int).Sub(hi, one)))
			if i > 0 {
				ds = append(ds, digestOf(new(big.Int).Sub(lo, one)))
			}
		}
		return ds
	}

	// Small counts: every slice of every n is listed, on 2000 random digests plus boundaries.
	var small []Digest
	for j := 0; j < 2000; j++ {
		small = append(small, randDigest(r))
	}
	small = append(small, digestZero, digestMax)
	for _, n := range []int{2, 4, 8, 16, 256} {
		small = append(small, boundaryDigests(n, boundaryIndexes(r, n))...)
	}
	smallDir, smallFiles := writeDigests("small", small)
	var queries []mailmanQuery
	for _, n := range []int{1, 2, 4, 8, 16, 256} {
		q := mailmanQuery{Dir: smallDir, N: n}
		for i := 0; i < n; i++ {
			if n < 256 || i < 24 || i >= n-24 || i%16 == 0 { // for 256: a sample, to keep Python quick
				q.Slices = append(q.Slices, i)
			}
		}
		queries = append(queries, q)
	}
	// n = 65536: a smaller directory; only the slices around each digest's own are listed.
	var large []Digest
	for j := 0; j < 200; j++ {
		large = append(large, randDigest(r))
	}
	large = append(large, boundaryDigests(MaxSlices, []int{0, 1, 2, 1000, 32767, 32768, 65534, 65535})...)
	largeDir, largeFiles := writeDigests("large", large)
	q := mailmanQuery{Dir: largeDir, N: MaxSlices}
	seen := map[int]bool{}
	for _, d := range largeFiles {
		for _, i := range []int{SliceOf(d, MaxSlices) - 1, SliceOf(d, MaxSlices), SliceOf(d, MaxSlices) + 1} {
			if i >= 0 && i < MaxSlices && !seen[i] {
				seen[i] = true
				q.Slices = append(q.Slices, i)
			}
		}
	}
	sort.Ints(q.Slices)
	queries = append(queries, q)

	// FIFO order of names written by qslice.
	d := NewDir(filepath.Join(base, "fifo", "in"), "", "")
	if err := d.Ensure(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var ours []Name
	for _, off := range []time.Duration{3 * time.Second, 0, 999 * time.Millisecond, 1001 * time.Millisecond, 10 * time.Microsecond, -time.Hour, 5 * time.Second} {
		n, err := d.Enqueue(Meta{}, []byte("x"), t0.Add(off))
		if err != nil {
			t.Fatal(err)
		}
		ours = append(ours, n)
	}
	sort.Slice(ours, func(a, b int) bool { return ours[a].When < ours[b].When })

	enqDir := filepath.Join(base, "mailman")
	if err := os.Mkdir(enqDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Queries  [][][]string `json:"queries"`
		Listing  []string     `json:"listing"`
		Enqueued []string     `json:"enqueued"`
	}
	runPython(t, python, mailmanScript, map[string]any{
		"queries": queries, "listdir": d.Path, "enqdir": enqDir, "enqcount": 50,
	}, &resp)

	// Slice membership.
	checked, onBoundary := 0, 0
	zs := map[Digest]*big.Float{}
	for _, files := range []map[string]Digest{smallFiles, largeFiles} {
		for _, dg := range files {
			zs[dg] = digestFloat(dg)
		}
	}
	for qi, q := range queries {
		files := smallFiles
		if q.Dir == largeDir {
			files = largeFiles
		}
		for si, i := range q.Slices {
			listed := map[string]bool{}
			for _, fb := range resp.Queries[qi][si] {
				listed[fb] = true
			}
			lower, upper := mailman3Bounds(i, q.N)
			for fb, dg := range files {
				if q.Dir == largeDir && (i < SliceOf(dg, q.N)-1 || i > SliceOf(dg, q.N)+1) {
					continue
				}
				checked++
				model := q.N == 1 || mailman3Within(zs[dg], lower, upper)
				if listed[fb] != model {
					t.Fatalf("n=%d slice %d digest %s: real Mailman lists it = %v, the Go model of Mailman says %v", q.N, i, dg, listed[fb], model)
				}
				ours := SliceOf(dg, q.N) == i
				switch {
				case ours && !listed[fb]:
					t.Fatalf("n=%d: digest %s is in qslice's slice %d but not in Mailman's", q.N, dg, i)
				case !ours && listed[fb]:
					// Only a digest exactly on the upper boundary of slice i may be in Mailman's slice i
					// as well as in qslice's slice i+1.
					_, hi := SliceBounds(i, q.N)
					if digestInt(dg).Cmp(hi) != 0 || SliceOf(dg, q.N) != i+1 {
						t.Fatalf("n=%d: Mailman lists digest %s in slice %d, qslice has it in %d", q.N, dg, i, SliceOf(dg, q.N))
					}
					onBoundary++
				}
			}
		}
	}
	t.Logf("%d (slice, digest) pairs checked against Mailman; %d boundary digests listed in two Mailman slices", checked, onBoundary)
	if onBoundary == 0 {
		t.Errorf("expected boundary digests to show Mailman 3's double listing")
	}

	// Mailman reads qslice's names in the same FIFO order.
	var want []string
	for _, n := range ours {
		want = append(want, n.Base)
	}
	if !slices.Equal(resp.Listing, want) {
		t.Errorf("Mailman's FIFO order of qslice names:\n got %v\nwant %v", resp.Listing, want)
	}

	// qslice parses names that Mailman wrote and refuses their pickles as corrupt.
	if len(resp.Enqueued) != 50 {
		t.Fatalf("Mailman enqueued %d messages, want 50", len(resp.Enqueued))
	}
	for _, fb := range resp.Enqueued {
		n, err := ParseName(fb + SuffixReady)
		if err != nil {
			t.Fatalf("parse Mailman's name: %v", err)
		}
		when, hexDigest, _ := strings.Cut(fb, "+")
		wantWhen, _ := strconv.ParseFloat(when, 64)
		if n.Base != fb || n.Suffix != SuffixReady || n.Digest.String() != hexDigest || n.When != wantWhen {
			t.Errorf("ParseName(%s.pck) = %+v", fb, n)
		}
		data, err := os.ReadFile(filepath.Join(enqDir, fb+SuffixReady))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := Decode(data); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Decode(Mailman file %s) = %v, want ErrCorrupt", fb, err)
		}
	}
}

// pythonWith returns a python3 that can import module, or "" (the caller skips).
func pythonWith(module string) string {
	p, _ := testenv.Python(module)
	return p
}
