package queue

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const hex40 = "0123456789abcdef0123456789abcdef01234567"

func TestParseNameValid(t *testing.T) {
	for _, c := range []struct {
		file   string
		when   float64
		suffix string
	}{
		{"1700000000.1234567+" + hex40 + ".pck", 1700000000.1234567, SuffixReady},
		{"1700000000.1234567+" + hex40 + ".bak", 1700000000.1234567, SuffixInFlight},
		{"1700000000.1234567+" + hex40 + ".psv", 1700000000.1234567, SuffixBad},
		{"1700000000.0+" + hex40 + ".pck", 1700000000, SuffixReady},
		{"1700000000+" + hex40 + ".pck", 1700000000, SuffixReady}, // Python's float() takes it too
		{"0.0+" + hex40 + ".pck", 0, SuffixReady},
		{"1e-05+" + hex40 + ".pck", 1e-05, SuffixReady},                                                      // repr of a time 10µs after the epoch
		{"1795911373.6062799+fe3308eadd2fc82b3b1fe689d40aff89ddf87737.pck", 1795911373.6062799, SuffixReady}, // written by Mailman 3.3.8
	} {
		n, err := ParseName(c.file)
		if err != nil {
			t.Errorf("ParseName(%q): %v", c.file, err)
			continue
		}
		base := strings.TrimSuffix(c.file, c.suffix)
		if n.Base != base || n.When != c.when || n.Suffix != c.suffix || n.Digest.String() != base[len(base)-DigestLen:] {
			t.Errorf("ParseName(%q) = %+v, want base %q when %v suffix %q", c.file, n, base, c.when, c.suffix)
		}
		if n.FileName(c.suffix) != c.file {
			t.Errorf("FileName(%q) = %q, want %q", c.suffix, n.FileName(c.suffix), c.file)
		}
	}
}

// Mailman reads only names ending in ".pck" (os.path.splitext), so temporary files ".pck.tmp" and
// anything else are not queue files.
func TestParseNameForeign(t *testing.T) {
	for _, file := range []string{
		"1700000000.5+" + hex40 + ".pck.tmp",
		"1700000000.5+" + hex40 + ".bak.tmp",
		"1700000000.5+" + hex40 + ".why.json",
		"1700000000.5+" + hex40 + ".why.json.tmp",
		"1700000000.5+" + hex40 + ".PCK",
		"1700000000.5+" + hex40 + ".pck~",
		"1700000000.5+" + hex40 + ".pckx",
		"1700000000.5+" + hex40 + ".psv.gz",
		"1700000000.5+" + hex40,
		"README", "", ".", "pck",
	} {
		_, err := ParseName(file)
		if !errors.Is(err, ErrForeign) {
			t.Errorf("ParseName(%q) = %v, want ErrForeign", file, err)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(file)) {
			t.Errorf("ParseName(%q): error %q does not name the file", file, err)
		}
	}
}

func TestParseNameMalformed(t *testing.T) {
	for _, c := range []struct{ file, msg string }{
		{"1700000000.5" + hex40 + ".pck", "malformed queue file name"},
		{".pck", "malformed queue file name"},
		{"abc+" + hex40 + ".pck", `malformed time "abc"`},
		{"+" + hex40 + ".bak", `malformed time ""`},
		{"inf+" + hex40 + ".pck", "malformed time"},
		{"nan+" + hex40 + ".pck", "malformed time"},
		{"-1.5+" + hex40 + ".pck", "malformed time"},
		{" 1.5+" + hex40 + ".pck", "malformed time"},
		{"0x1p30+" + hex40 + ".pck", `malformed time "0x1p30"`}, // Go parses hex floats, Python does not
		{"1_0.5+" + hex40 + ".pck", "malformed time"},
		{"1e+09+" + hex40 + ".pck", `malformed time "1e"`}, // Mailman splits at the first '+'
		{"1.5+" + strings.ToUpper(hex40) + ".pck", "malformed digest"},
		{"1.5+" + hex40[:39] + ".pck", "malformed digest"},
		{"1.5+" + hex40 + "8.pck", "malformed digest"},
		{"1.5+" + hex40[:39] + "g.psv", "malformed digest"},
		{"1.5+" + hex40[:20] + "+" + hex40[21:] + ".pck", "malformed digest"},
	} {
		_, err := ParseName(c.file)
		if err == nil || errors.Is(err, ErrForeign) {
			t.Errorf("ParseName(%q) = %v, want a malformed-name error", c.file, err)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(c.file)) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseName(%q) error %q: want the quoted file name and %q", c.file, err, c.msg)
		}
	}
}

func TestParseNameTestdataMailman(t *testing.T) {
	ents, err := os.ReadDir(filepath.Join("testdata", "mailman"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) == 0 {
		t.Fatal("no files in testdata/mailman")
	}
	for _, e := range ents {
		n, err := ParseName(e.Name())
		if err != nil {
			t.Errorf("file written by Mailman: %v", err)
			continue
		}
		if n.Time().Year() < 2020 {
			t.Errorf("%s: time %v", e.Name(), n.Time())
		}
	}
}

// TestFormatWhenTable: values checked by hand against python3's repr(ns / 1e9).
func TestFormatWhenTable(t *testing.T) {
	for _, c := range []struct {
		ns   int64
		want string
	}{
		{1700000000_000000000, "1700000000.0"},
		{1700000000_123456789, "1700000000.1234567"},
		{1795911373_606279900, "1795911373.6062799"},
		{0, "0.0"},
		{1_500000000, "1.5"},
		{100000, "0.0001"},
		{99999, "9.9999e-05"},
		{10000, "1e-05"},
		{15000, "1.5e-05"},
		{-1_000000000, "-1.0"},
		{999999999_999999999, "1000000000.0"}, // (double)ns rounds up first, as in Python
		{999999999_900000000, "999999999.9"},
		{1 << 62, "4611686018.427388"},
	} {
		if got := FormatWhen(time.Unix(0, c.ns)); got != c.want {
			t.Errorf("FormatWhen(%d ns) = %q, want %q", c.ns, got, c.want)
		}
	}
}

// TestFormatWhenPythonRepr compares FormatWhen with python3's repr(ns / 1e9) on random times: Python's
// time.time() is computed the same way, (double)ns / 1e9, so Mailman writes the same string.
func TestFormatWhenPythonRepr(t *testing.T) {
	python := pythonWith("sys")
	if python == "" {
		t.Skip("no python3 found; set QSLICE_PYTHON to one")
	}
	r := rand.New(rand.NewPCG(21, 22))
	var ns []int64
	for range 1000 {
		ns = append(ns, 1_600_000_000_000_000_000+r.Int64N(200_000_000_000_000_000)) // 2020..2026
	}
	for range 300 {
		ns = append(ns, r.Int64()) // anywhere in 1678..2262
		ns = append(ns, -r.Int64())
		ns = append(ns, r.Int64N(1_000_000)) // the first millisecond: exponent notation
		ns = append(ns, r.Int64N(1_000_000_000)*1_000_000_000)
	}
	ns = append(ns, 0, 1, -1, 99_999, 100_000, 100_001, math.MaxInt64, math.MinInt64)
	var got []string
	for _, v := range ns {
		got = append(got, FormatWhen(time.Unix(0, v)))
	}
	var want []string
	runPython(t, python, `
import json, sys
json.dump([repr(n / 1e9) for n in json.load(sys.stdin)], sys.stdout)
`, ns, &want)
	if len(want) != len(ns) {
		t.Fatalf("python returned %d values for %d", len(want), len(ns))
	}
	bad := 0
	for i := range ns {
		if got[i] != want[i] {
			t.Errorf("FormatWhen(%d ns) = %q, python repr %q", ns[i], got[i], want[i])
			if bad++; bad > 10 {
				t.FailNow()
			}
		}
	}
}

// TestOrderByWhen: the queue is processed oldest first by the numeric time in the name; sorting the
// names as strings would be wrong.
func TestOrderByWhen(t *testing.T) {
	whens := []string{"1700000000.1", "999999999.9", "1700000000.05", "1700000000.0999", "1700000001.0", "1e-05", "1700000000.1000001"}
	var names []Name
	for _, w := range whens {
		n, err := ParseName(w + "+" + hex40 + SuffixReady)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return names[i].When < names[j].When })
	var got []string
	for _, n := range names {
		got = append(got, strings.TrimSuffix(n.Base, "+"+hex40))
	}
	want := []string{"1e-05", "999999999.9", "1700000000.05", "1700000000.0999", "1700000000.1", "1700000000.1000001", "1700000001.0"}
	if !slices.Equal(got, want) {
		t.Fatalf("order by When: %v, want %v", got, want)
	}
	for i := 1; i < len(names); i++ {
		if !names[i-1].Time().Before(names[i].Time()) {
			t.Errorf("Time() of %s is not before %s", names[i-1].Base, names[i].Base)
		}
	}
	if ss := slices.Sorted(slices.Values(whens)); slices.Equal(ss, want) {
		t.Fatalf("test is too weak: string order equals time order")
	}
}

// TestFormatWhenMonotonic: later times never get smaller names, times 1µs apart get distinct ones,
// and Name.Time() is within a microsecond of the enqueue time.
func TestFormatWhenMonotonic(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	t0 := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	prev := -1.0
	for range 20000 {
		t0 = t0.Add(time.Microsecond + time.Duration(r.Int64N(int64(100*24*time.Hour))))
		n, err := ParseName(FormatWhen(t0) + "+" + hex40 + SuffixReady)
		if err != nil {
			t.Fatal(err)
		}
		if n.When <= prev {
			t.Fatalf("%v: When %v not after previous %v", t0, n.When, prev)
		}
		prev = n.When
		if d := n.Time().Sub(t0).Abs(); d > time.Microsecond {
			t.Fatalf("%v: Time() = %v, off by %v", t0, n.Time(), d)
		}
		if age := n.Age(t0.Add(time.Minute)); (age - time.Minute).Abs() > time.Microsecond {
			t.Fatalf("Age a minute later = %v", age)
		}
		if t0.Year() > 2200 {
			break
		}
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{
		"1700000000.1234567+" + hex40 + ".pck", "1700000000.5+" + hex40 + ".bak", "1e-05+" + hex40 + ".psv",
		"1700000000.5+" + hex40 + ".pck.tmp", "+.pck", "0x1p3+" + hex40 + ".pck", "1e+09+" + hex40 + ".bak",
		"nan+" + hex40 + ".psv", "", ".pck", "1.5+" + strings.ToUpper(hex40) + ".pck",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file string) {
		n, err := ParseName(file)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(file)) {
				t.Fatalf("error %q does not name the file %q", err, file)
			}
			return
		}
		if n.Base+n.Suffix != file || n.FileName(n.Suffix) != file {
			t.Fatalf("ParseName(%q) = %+v: does not rebuild the name", file, n)
		}
		when, digest, ok := strings.Cut(n.Base, "+")
		if !ok || digest != n.Digest.String() || len(digest) != DigestLen {
			t.Fatalf("ParseName(%q): digest %s, base %q", file, n.Digest, n.Base)
		}
		if math.IsNaN(n.When) || math.IsInf(n.When, 0) || n.When < 0 || strings.ContainsAny(when, "xXpP_ ") {
			t.Fatalf("ParseName(%q): accepted time %q = %v", file, when, n.When)
		}
		for _, suf := range []string{SuffixReady, SuffixInFlight, SuffixBad} {
			m, err := ParseName(n.FileName(suf))
			if err != nil || m.Base != n.Base || m.When != n.When || m.Digest != n.Digest || m.Suffix != suf {
				t.Fatalf("ParseName(%q) = %+v, %v; want %+v with suffix %s", n.FileName(suf), m, err, n, suf)
			}
		}
		if _, err := ParseName(n.FileName(SuffixTemp)); !errors.Is(err, ErrForeign) {
			t.Fatalf("temporary name %q: %v, want ErrForeign", n.FileName(SuffixTemp), err)
		}
	})
}

// FuzzNameRoundTrip: a name built like Enqueue builds it parses back to the same time and digest;
// times before 1970 give names that ParseName rejects.
func FuzzNameRoundTrip(f *testing.F) {
	f.Add(int64(1700000000_123456789), []byte("digest"), uint8(0))
	f.Add(int64(0), []byte{}, uint8(1))
	f.Add(int64(12345), []byte{0xff, 0xff}, uint8(2))
	f.Add(int64(-1), []byte{1}, uint8(0))
	f.Add(int64(math.MaxInt64), []byte{0}, uint8(2))
	f.Fuzz(func(t *testing.T, ns int64, db []byte, which uint8) {
		var d Digest
		copy(d[:], db)
		suffix := []string{SuffixReady, SuffixInFlight, SuffixBad}[int(which)%3]
		tm := time.Unix(0, ns)
		file := FormatWhen(tm) + "+" + d.String() + suffix
		n, err := ParseName(file)
		if ns < 0 {
			if err == nil {
				t.Fatalf("ParseName(%q) accepted a time before 1970", file)
			}
			return
		}
		if err != nil {
			t.Fatalf("ParseName(%q): %v", file, err)
		}
		if n.Digest != d || n.Suffix != suffix || n.When != float64(ns)/1e9 {
			t.Fatalf("ParseName(%q) = %+v, want digest %s when %v", file, n, d, float64(ns)/1e9)
		}
		// float64 keeps 53 bits: about 1µs of a time in 2262.
		if diff := n.Time().Sub(tm).Abs(); diff > 2*time.Microsecond {
			t.Fatalf("ParseName(%q).Time() = %v, %v away from %v", file, n.Time(), diff, tm)
		}
	})
}

func TestDigestString(t *testing.T) {
	d := Digest{0x01, 0xab}
	if got := d.String(); got != "01ab"+strings.Repeat("0", 36) {
		t.Fatalf("Digest.String() = %q", got)
	}
}
