package sim

import (
	"testing"

	"github.com/qslice/qslice/failover"
)

func TestScopedTry(t *testing.T) {
	failed := 0
	for seed := uint64(1); seed <= 20; seed++ {
		r := Run(Config{Seed: seed, Faults: 6, Layout: failover.LayoutScoped})
		if r.Failed() {
			failed++
			if failed <= 3 {
				t.Errorf("%s", r.Report())
			}
		}
	}
	t.Logf("failed %d", failed)
}
