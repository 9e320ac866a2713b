// Package queuetest helps tests build queue file names that land in a chosen slice.
package queuetest

import (
	"fmt"
	"math/big"

	"github.com/qslice/qslice/runner/queue"
)

// DigestIn returns the SHA-1 digest, as 40 hex digits, at offset k from the first digest of slice
// i of n: a name that lands in a chosen slice.
func DigestIn(i, n int, k int64) string {
	lo, _ := queue.SliceBounds(i, n)
	return fmt.Sprintf("%040x", lo.Add(lo, big.NewInt(k)))
}
