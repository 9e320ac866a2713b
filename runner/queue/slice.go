package queue

import (
	"fmt"
	"math/big"
	"math/bits"
)

// MaxSlices is the largest slice count qslice accepts. The slice math is exact for any count up to 2^31;
// the bound keeps label sets and per-slice state small.
const MaxSlices = 65536

// ValidateSlices reports whether n is a usable slice count.
func ValidateSlices(n int) error {
	if n < 1 || n > MaxSlices {
		return fmt.Errorf("slice count %d: must be between 1 and %d", n, MaxSlices)
	}
	return nil
}

// SliceOf returns the slice (0 <= i < n) that digest d belongs to: the unique i with
// floor(2^160*i/n) <= d < floor(2^160*(i+1)/n). n must be in [1, 2^31].
//
// Derivation: for an integer d, floor(x) <= d iff x < d+1, and d < floor(y) iff d+1 <= y, so d is in
// slice i iff 2^160*i < n*(d+1) <= 2^160*(i+1), that is i = floor((n*(d+1) - 1) / 2^160).
// The product is computed in 64-bit limbs; no rounding anywhere.
func SliceOf(d Digest, n int) int {
	if n <= 1 {
		return 0
	}
	// d as three limbs, most significant first: d2 (32 bits), d1, d0.
	d2 := uint64(d[0])<<24 | uint64(d[1])<<16 | uint64(d[2])<<8 | uint64(d[3])
	d1 := be64(d[4:12])
	d0 := be64(d[12:20])
	// d+1 (may carry into a 161st bit, held in d2's 33rd bit).
	var c uint64
	d0, c = bits.Add64(d0, 1, 0)
	d1, c = bits.Add64(d1, 0, c)
	d2 += c
	// p = n*(d+1) - 1, as limbs p2:p1:p0 (p2 < 2^(33+32)).
	m := uint64(n)
	h0, p0 := bits.Mul64(d0, m)
	h1, l1 := bits.Mul64(d1, m)
	p1, c := bits.Add64(l1, h0, 0)
	p2 := d2*m + h1 + c
	var b uint64
	p0, b = bits.Sub64(p0, 1, 0)
	p1, b = bits.Sub64(p1, 0, b)
	p2 -= b
	// floor(p / 2^160): p's bits from 160 up; 160 = 128 + 32, so p2 >> 32.
	_ = p1
	return int(p2 >> 32)
}

func be64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

var two160 = new(big.Int).Lsh(big.NewInt(1), 160)

// SliceBounds returns slice i of n as the half-open range [lo, hi) of digests as integers.
func SliceBounds(i, n int) (lo, hi *big.Int) {
	lo = new(big.Int).Mul(two160, big.NewInt(int64(i)))
	lo.Quo(lo, big.NewInt(int64(n)))
	hi = new(big.Int).Mul(two160, big.NewInt(int64(i+1)))
	hi.Quo(hi, big.NewInt(int64(n)))
	return lo, hi
}
