package queue

import (
	"crypto/sha1"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

var nameSeeds = []string{
	"1700000000.5+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1700000000+da4b9237bacccdf19c0760cab7aec4a8359010b0.bak",
	"1795911416.9866881+9ace5823a9b7e0f252ecf3e6d89cb26b4ec6fc28.psv",
	"1700000000.5+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck.tmp",
	"1700000000.5+DA4B9237BACCCDF19C0760CAB7AEC4A8359010B0.pck",
	"1700000000.5+da4b9237bacccdf19c0760cab7aec4a8359010b.pck",
	"1700000000.5+da4b9237bacccdf19c0760cab7aec4a8359010b0g.pck",
	"1700000000.5+da4b9237bacccdf19c0760cab7aec4a8359010bg.pck",
	"-1.0+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"inf+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"NaN+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1e9+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"0x1p3+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1+2+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1700000000.5da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	".pck", "", "README", "x.why.json", "1_000+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1700000000.123456789012345678901234567890123+da4b9237bacccdf19c0760cab7aec4a8359010b0.bak",
	"." + "+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck", "1..2+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	strings.Repeat("9", 400) + "+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"0001.50+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck", "1.5++da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1.5+da4b9237bacccdf19c0760cab7aec4a8359010b0+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
	"1.5e3+da4b9237bacccdf19c0760cab7aec4a8359010b0.pck",
}

// parseName must accept exactly what ParseName accepts, with the same results (it calls it,
// after a shortcut for foreign suffixes).
func checkClassifyNameAgrees(t *testing.T, s string) {
	k, when, d := ClassifyName([]byte(s))
	n, err := ParseName(s)
	if err != nil {
		if k != KindForeign {
			t.Fatalf("ClassifyName(%q) = %v, but ParseName rejects it: %v", s, k, err)
		}
		return
	}
	wantK := map[string]Kind{SuffixReady: KindReady, SuffixInFlight: KindInFlight, SuffixBad: KindBad}[n.Suffix]
	if k != wantK || when != n.When || d != n.Digest {
		t.Fatalf("ClassifyName(%q) = %v %v %x, ParseName = %+v", s, k, when, d, n)
	}
}

func TestClassifyNameAgrees(t *testing.T) {
	for _, s := range nameSeeds {
		checkClassifyNameAgrees(t, s)
	}
	// Deterministic mutations of well-formed names: one byte replaced, inserted or removed.
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("0123456789abcdefABCDEF.+-eExp_ \x00/")
	for range 100_000 {
		b := []byte(nameSeeds[rng.IntN(3)])
		i := rng.IntN(len(b))
		switch rng.IntN(3) {
		case 0:
			b[i] = alphabet[rng.IntN(len(alphabet))]
		case 1:
			b = append(b[:i], append([]byte{alphabet[rng.IntN(len(alphabet))]}, b[i:]...)...)
		case 2:
			b = append(b[:i], b[i+1:]...)
		}
		checkClassifyNameAgrees(t, string(b))
	}
}

func FuzzClassifyNameAgrees(f *testing.F) {
	for _, s := range nameSeeds {
		f.Add(s)
	}
	f.Fuzz(checkClassifyNameAgrees)
}

// Many different names, as in a real directory: with a single name the branch predictor would
// learn its digits and hide the cost of branchy validation.
func BenchmarkClassifyName(b *testing.B) {
	names := make([][]byte, 4096)
	for i := range names {
		names[i] = []byte(fmt.Sprintf("%d.%06d+%x.pck", 1700000000+i, i*7919%1000000, sha1.Sum([]byte(strconv.Itoa(i)))))
	}
	b.Run("probe", func(b *testing.B) {
		i := 0
		for b.Loop() {
			_, _, d := ClassifyName(names[i%len(names)])
			_ = SliceOf(d, 64)
			i++
		}
	})
	b.Run("ParseName", func(b *testing.B) {
		strs := make([]string, len(names))
		for i, n := range names {
			strs[i] = string(n)
		}
		i := 0
		for b.Loop() {
			n, _ := ParseName(strs[i%len(strs)])
			_ = SliceOf(n.Digest, 64)
			i++
		}
	})
}
