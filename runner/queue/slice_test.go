package queue

import (
	"math/big"
	"math/rand/v2"
	"strconv"
	"testing"
)

// refSliceOf is the reference for SliceOf in big.Int arithmetic: i = floor((n*(d+1) - 1) / 2^160).
func refSliceOf(d Digest, n int) int {
	z := new(big.Int).SetBytes(d[:])
	z.Add(z, big.NewInt(1))
	z.Mul(z, big.NewInt(int64(n)))
	z.Sub(z, big.NewInt(1))
	z.Rsh(z, 160)
	return int(z.Int64())
}

func digestOf(z *big.Int) Digest {
	if z.Sign() < 0 || z.BitLen() > 160 {
		panic("digest out of range: " + z.String())
	}
	var d Digest
	z.FillBytes(d[:])
	return d
}

func digestInt(d Digest) *big.Int { return new(big.Int).SetBytes(d[:]) }

func randDigest(r *rand.Rand) Digest {
	var d Digest
	for i := range d {
		d[i] = byte(r.Uint32())
	}
	return d
}

var (
	digestZero = Digest{}
	digestMax  = Digest{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// checkIn fails unless digest d lies in slice want of n according to SliceBounds, SliceOf and the
// reference formula, and in no neighbouring slice according to SliceBounds.
func checkIn(t *testing.T, d Digest, n, want int) {
	t.Helper()
	z := digestInt(d)
	if got := SliceOf(d, n); got != want {
		t.Fatalf("SliceOf(%s, %d) = %d, want %d", d, n, got, want)
	}
	if got := refSliceOf(d, n); got != want {
		t.Fatalf("reference slice of %s for n=%d is %d, want %d", d, n, got, want)
	}
	lo, hi := SliceBounds(want, n)
	if z.Cmp(lo) < 0 || z.Cmp(hi) >= 0 {
		t.Fatalf("digest %s not in slice %d of %d: bounds [%x, %x)", d, want, n, lo, hi)
	}
	for _, j := range []int{want - 1, want + 1} {
		if j < 0 || j >= n {
			continue
		}
		lo, hi := SliceBounds(j, n)
		if z.Cmp(lo) >= 0 && z.Cmp(hi) < 0 {
			t.Fatalf("digest %s is in slice %d of %d and also in slice %d: bounds [%x, %x)", d, want, n, j, lo, hi)
		}
	}
}

// sliceCounts returns every n in 1..1024, a dense sample of larger n, and every n near MaxSlices.
func sliceCounts(r *rand.Rand, short bool) []int {
	var ns []int
	for n := 1; n <= 1024; n++ {
		ns = append(ns, n)
	}
	step := 7
	if short {
		step = 97
	}
	for n := 1025; n < MaxSlices-64; n += step {
		ns = append(ns, n)
	}
	for k := 0; k < 200; k++ {
		ns = append(ns, 1025+r.IntN(MaxSlices-1025))
	}
	for _, n := range []int{2048, 4096, 8192, 16384, 32768, 65521 /* prime */, 3 * 7 * 11 * 13 * 23} {
		ns = append(ns, n)
	}
	for n := MaxSlices - 64; n <= MaxSlices; n++ {
		ns = append(ns, n)
	}
	return ns
}

// TestSliceOfProperty: for random digests and many n, SliceOf agrees with the big.Int reference and
// names the one slice of SliceBounds that holds the digest.
func TestSliceOfProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ns := sliceCounts(r, testing.Short())
	perN := 8
	checks := 0
	for _, n := range ns {
		for k := 0; k < perN; k++ {
			d := randDigest(r)
			switch k {
			case 0: // small digests: the high limb is zero
				copy(d[:12], make([]byte, 12))
			case 1: // large digests: the carry of d+1 is close
				for j := 0; j < 12; j++ {
					d[j] = 0xff
				}
			}
			i := SliceOf(d, n)
			if i < 0 || i >= n {
				t.Fatalf("SliceOf(%s, %d) = %d, out of range", d, n, i)
			}
			checkIn(t, d, n, i)
			checks++
		}
	}
	t.Logf("%d digests checked over %d slice counts", checks, len(ns))
}

// TestSliceOfAllCountsReference compares the limb arithmetic with the reference for every n in
// 1..MaxSlices (and a few beyond, up to the documented 2^31).
func TestSliceOfAllCountsReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ns := make([]int, 0, MaxSlices+8)
	for n := 1; n <= MaxSlices; n++ {
		ns = append(ns, n)
	}
	ns = append(ns, MaxSlices+1, 1<<20, 1<<30-1, 1<<31-1, 1<<31)
	for _, n := range ns {
		for _, d := range []Digest{digestZero, digestMax, randDigest(r), randDigest(r)} {
			if got, want := SliceOf(d, n), refSliceOf(d, n); got != want {
				t.Fatalf("SliceOf(%s, %d) = %d, reference says %d", d, n, got, want)
			}
		}
	}
}

func TestSliceOfEdgeDigests(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range sliceCounts(r, true) {
		checkIn(t, digestZero, n, 0)
		checkIn(t, digestMax, n, n-1)
	}
}

// TestSliceBoundsTile: slice 0 starts at 0, the last ends at 2^160, each ends where the next starts,
// and none is empty, so the slices partition the digest space.
func TestSliceBoundsTile(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 7, 64, 100, 1000, 4097, 65521, MaxSlices} {
		prevHi := big.NewInt(0)
		for i := 0; i < n; i++ {
			lo, hi := SliceBounds(i, n)
			if lo.Cmp(prevHi) != 0 {
				t.Fatalf("n=%d: slice %d starts at %x, previous ended at %x", n, i, lo, prevHi)
			}
			if hi.Cmp(lo) <= 0 {
				t.Fatalf("n=%d: slice %d is empty: [%x, %x)", n, i, lo, hi)
			}
			prevHi = hi
		}
		if prevHi.Cmp(two160) != 0 {
			t.Fatalf("n=%d: last slice ends at %x, want 2^160", n, prevHi)
		}
	}
}

// boundaryIndexes returns the slices whose boundaries TestSliceOfBoundaries checks for n: all of them
// for small n and for n = 65535, 65536; the first, last, middle and random ones otherwise.
func boundaryIndexes(r *rand.Rand, n int) []int {
	if n <= 300 || n >= MaxSlices-1 {
		is := make([]int, n)
		for i := range is {
			is[i] = i
		}
		return is
	}
	is := []int{0, 1, 2, n / 3, n / 2, n - 2, n - 1}
	for k := 0; k < 40; k++ {
		is = append(is, r.IntN(n))
	}
	return is
}

// TestSliceOfBoundaries checks the boundary digests themselves: lo_i is in slice i, lo_i - 1 in slice
// i-1, hi_i - 1 in slice i (and hi_i, when it is a digest, in slice i+1).
func TestSliceOfBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	ns := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 31, 32, 33, 63, 64, 100, 127, 128, 255, 256, 257,
		1000, 1023, 1024, 1025, 4095, 4096, 10007, 32767, 32768, 65521, MaxSlices - 1, MaxSlices}
	if testing.Short() {
		ns = ns[:len(ns)-2]
	}
	one := big.NewInt(1)
	checks := 0
	for _, n := range ns {
		for _, i := range boundaryIndexes(r, n) {
			lo, hi := SliceBounds(i, n)
			checkIn(t, digestOf(lo), n, i)
			checkIn(t, digestOf(new(big.Int).Sub(hi, one)), n, i)
			if i > 0 {
				checkIn(t, digestOf(new(big.Int).Sub(lo, one)), n, i-1)
			}
			if i < n-1 {
				checkIn(t, digestOf(hi), n, i+1)
			}
			checks++
		}
	}
	t.Logf("boundaries of %d slices checked", checks)
}

func TestValidateSlices(t *testing.T) {
	for _, n := range []int{1, 2, 3, 1024, MaxSlices} {
		if err := ValidateSlices(n); err != nil {
			t.Errorf("ValidateSlices(%d) = %v, want nil", n, err)
		}
	}
	for _, n := range []int{-1, 0, MaxSlices + 1, 1 << 31} {
		if err := ValidateSlices(n); err == nil {
			t.Errorf("ValidateSlices(%d) = nil, want an error", n)
		}
	}
}

var sinkInt int

func BenchmarkSliceOf(b *testing.B) {
	r := rand.New(rand.NewPCG(9, 10))
	ds := make([]Digest, 1024)
	for i := range ds {
		ds[i] = randDigest(r)
	}
	for _, n := range []int{16, MaxSlices} {
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) {
			s := 0
			i := 0
			for b.Loop() {
				s += SliceOf(ds[i&1023], n)
				i++
			}
			sinkInt = s
		})
	}
	b.Run("reference-big.Int", func(b *testing.B) {
		s := 0
		i := 0
		for b.Loop() {
			s += refSliceOf(ds[i&1023], MaxSlices)
			i++
		}
		sinkInt = s
	})
}
