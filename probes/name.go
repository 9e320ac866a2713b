package probes

import "github.com/qslice/qslice/runner/queue"

// The probe classifies names with the queue package's allocation-free classifier.
type kind = queue.Kind

const (
	kindForeign  = queue.KindForeign
	kindReady    = queue.KindReady
	kindInFlight = queue.KindInFlight
	kindBad      = queue.KindBad
)

func parseName(b []byte) (kind, float64, queue.Digest) { return queue.ClassifyName(b) }
