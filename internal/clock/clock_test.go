package clock

import (
	"context"
	"testing"
	"time"
)

func TestFakeFiresDueTimersOnly(t *testing.T) {
	c := NewFake(time.Unix(100, 0))
	a, b := c.NewTimer(time.Second), c.NewTimer(3*time.Second)
	stopped := c.NewTimer(time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop must report true once, for a pending timer")
	}
	c.Advance(time.Second)
	select {
	case at := <-a.C():
		if !at.Equal(time.Unix(101, 0)) {
			t.Errorf("fired at %v, want the fake now", at)
		}
	default:
		t.Fatal("a due timer did not fire")
	}
	select {
	case <-b.C():
		t.Fatal("a timer fired early")
	case <-stopped.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	if p := c.Pending(); len(p) != 1 || p[0] != 3*time.Second {
		t.Errorf("pending %v, want [3s]", p)
	}
	if !Sleep(context.Background(), c, 0) {
		t.Error("Sleep(0) on the fake must return at once, having waited")
	}
}

func TestOffsetShiftsNowNotDurations(t *testing.T) {
	o := Offset{D: -time.Hour}
	before := time.Now()
	got := o.Now()
	if d := before.Sub(got); d < time.Hour-time.Second || d > time.Hour+time.Second {
		t.Errorf("Offset{-1h}.Now() is %v before time.Now(), want about 1h", d)
	}
	start := time.Now()
	<-o.NewTimer(10 * time.Millisecond).C()
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("a 10ms timer of an offset clock took %v", el)
	}
}
