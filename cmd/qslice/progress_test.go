package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/clock"
)

func TestProgressLine(t *testing.T) {
	var b bytes.Buffer
	clk := clock.NewFake(time.Unix(0, 0))
	p := &progressLine{w: &b, clk: clk}
	p.Update("scanned %d names", 1000)
	p.Update("scanned %d names", 2000) // too soon: dropped
	clk.Advance(progressEvery)
	p.Update("scanned %d", 3000) // shorter: the rest of the old line is blanked
	p.Done("scanned %d names in all", 3500)
	want := "\rscanned 1000 names" + "\rscanned 3000      " + "\rscanned 3500 names in all\n"
	if got := b.String(); got != want {
		t.Errorf("progress wrote %q, want %q", got, want)
	}

	b.Reset()
	p = &progressLine{w: &b, clk: clk}
	p.Update("scanning: %d", 7)
	p.Done("")
	if want := "\rscanning: 7" + "\r           \r"; b.String() != want {
		t.Errorf("Done(\"\") wrote %q, want %q (the line erased)", b.String(), want)
	}

	var nothing bytes.Buffer
	q := &progressLine{w: &nothing, clk: clock.System{}}
	q.Done("")
	var nilLine *progressLine
	nilLine.Update("x")
	nilLine.Done("y")
	if nothing.Len() != 0 {
		t.Errorf("a progress line that showed nothing wrote %q on Done", nothing.String())
	}
	if newProgress(&b) != nil {
		t.Error("newProgress on a buffer (not a terminal) must return nil: scripts stay quiet")
	}
}
