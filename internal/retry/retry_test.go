package retry

import (
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

func TestPolicyDoublesCapsAndStops(t *testing.T) {
	fc := clock.NewFake(time.Unix(1000, 0))
	b := New(Policy{Initial: 100 * time.Millisecond, Max: 350 * time.Millisecond, MaxElapsed: time.Second}, fc)
	var got []time.Duration
	for {
		d := b.NextBackOff()
		if d == Stop {
			break
		}
		got = append(got, d)
		fc.Advance(d)
		if len(got) > 10 {
			t.Fatalf("never stopped: %v", got)
		}
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 350 * time.Millisecond, 350 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("pauses = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pauses = %v, want %v", got, want)
		}
	}
}

func TestPolicyJitterStaysInBounds(t *testing.T) {
	b := New(Policy{Initial: time.Second, Max: time.Second, Jitter: 0.5}, nil)
	for i := 0; i < 200; i++ {
		if d := b.NextBackOff(); d < 500*time.Millisecond || d > 1500*time.Millisecond {
			t.Fatalf("pause %v outside [0.5s, 1.5s]", d)
		}
	}
}
