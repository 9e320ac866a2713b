package main

import (
	"fmt"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/qslice/qslice/internal/clock"
)

// progressLine rewrites one line of a terminal with the state of long work, at most every
// progressEvery, and ends it on Done. A nil *progressLine is valid and prints nothing: commands
// create one only when their output goes to a terminal (see interactive), so scripts stay quiet.
type progressLine struct {
	w     io.Writer
	clk   clock.Clock
	mu    sync.Mutex
	last  time.Time
	width int // of the last line, to blank what a shorter one leaves behind
}

const progressEvery = 200 * time.Millisecond

// newProgress returns a progress line on w, or nil when w is not a terminal.
func newProgress(w io.Writer) *progressLine {
	if !interactive(w) {
		return nil
	}
	return &progressLine{w: w, clk: clock.System{}}
}

// Update shows the formatted state unless the previous one is younger than progressEvery.
func (p *progressLine) Update(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clk.Now()
	if !p.last.IsZero() && now.Sub(p.last) < progressEvery {
		return
	}
	p.last = now
	p.print(fmt.Sprintf(format, args...))
}

// Done ends the progress line: with a format, it shows that final state and moves to the next
// line; with "", it erases the line so the command's own output starts clean.
func (p *progressLine) Done(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if format == "" {
		if p.width > 0 {
			fmt.Fprintf(p.w, "\r%*s\r", p.width, "")
		}
		return
	}
	p.print(fmt.Sprintf(format, args...))
	fmt.Fprintln(p.w)
}

func (p *progressLine) print(s string) {
	n := utf8.RuneCountInString(s) // terminal columns, near enough
	pad := max(p.width-n, 0)
	p.width = n
	fmt.Fprintf(p.w, "\r%s%*s", s, pad, "")
}
