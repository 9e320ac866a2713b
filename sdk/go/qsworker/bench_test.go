package qsworker

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"testing"
	"time"
)

const helloFrame = `{"type":"hello","client":"qslice","versions":[1],"queue":"in","worker":0,"max_in_flight":16}`

// messageHeader is a message header as qslice writes it (runner/worker's appendHeader): every
// field set, meta when withMeta. Consecutive ids give distinct message ids, times and trace ids.
func messageHeader(id uint64, withMeta bool) []byte {
	t := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC).Add(time.Duration(id) * time.Microsecond)
	b := fmt.Appendf(nil, `{"type":"message","id":%d,"queue":"in","slice":%d,"slices":4,"message_id":"%d.%06d+5f0c%036x.pck",`+
		`"enqueued":"%s","attempts":0,"retry":0,"lock":"","lease_deadline":"%s","fencing_token":4711,`+
		`"traceparent":"00-4bf92f3577b34da6a3ce929d%08x-00f067aa0ba902b7-01"`,
		id, id%4, t.Unix(), t.Nanosecond()/1000, id, t.Format(time.RFC3339Nano), t.Add(15*time.Second).Format(time.RFC3339Nano), id)
	if withMeta {
		b = append(b, `,"meta":{"list":"a@example.org","sender":"\u003cbounces@example.org\u003e"}`...)
	}
	return append(b, '}')
}

// appendTestFrame appends a frame as qslice writes it.
func appendTestFrame(dst []byte, hdr, body []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(hdr)), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, '\n')
	dst = append(dst, hdr...)
	return append(dst, body...)
}

// replay is qslice's side of the pipe in memory: the hello frame, then n message frames cycling
// through a prepared set, handed out at most 64 KiB (a pipe's buffer) per Read.
type replay struct {
	hello, frames []byte
	ends          []int // ends[i]: the end of frame i in frames
	n, sent       int
	off           int // in the frame set, or in hello while it is being read
	helloDone     bool
}

func newReplay(withMeta bool, body []byte) *replay {
	r := &replay{hello: appendTestFrame(nil, []byte(helloFrame), nil)}
	for i := range 256 {
		r.frames = appendTestFrame(r.frames, messageHeader(uint64(i+1), withMeta), body)
		r.ends = append(r.ends, len(r.frames))
	}
	return r
}

func (r *replay) reset(n int) { r.n, r.sent, r.off, r.helloDone = n, 0, 0, false }

func (r *replay) Read(p []byte) (int, error) {
	const pipeBuf = 64 << 10
	p = p[:min(len(p), pipeBuf)]
	if !r.helloDone {
		c := copy(p, r.hello[r.off:])
		if r.off += c; r.off == len(r.hello) {
			r.helloDone, r.off = true, 0
		}
		return c, nil
	}
	total := 0
	for total < len(p) && r.sent < r.n {
		i := r.sent % len(r.ends)
		c := copy(p[total:], r.frames[r.off:r.ends[i]])
		total += c
		if r.off += c; r.off == r.ends[i] {
			r.sent++
			if r.off == len(r.frames) {
				r.off = 0
			}
		}
	}
	if total == 0 {
		return 0, io.EOF
	}
	return total, nil
}

// countingWriter counts the frames written to it (each answer frame holds one newline).
type countingWriter struct{ frames, bytes int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.frames += bytes.Count(p, []byte{'\n'})
	w.bytes += len(p)
	return len(p), nil
}

// BenchmarkServe runs b.N messages through Serve in process: qslice's frames come from memory, a
// no-op handler answers done, the answers go to a counter. Reported per message: ns/op,
// allocs/op, B/op.
//
//	go test -run '^$' -bench Serve -benchmem ./sdk/go/qsworker/
func BenchmarkServe(b *testing.B) {
	for _, c := range []struct {
		name     string
		withMeta bool
		body     []byte
	}{{"plain", false, []byte("hello")}, {"meta_4KiB", true, bytes.Repeat([]byte("x"), 4096)}} {
		b.Run(c.name, func(b *testing.B) {
			r, w := newReplay(c.withMeta, c.body), &countingWriter{}
			noop := func(*Message) error { return nil }
			b.ReportAllocs()
			b.ResetTimer()
			r.reset(b.N)
			if err := Serve(r, w, noop); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if w.frames != b.N+1 {
				b.Fatalf("%d frames answered, want ready and %d answers", w.frames, b.N)
			}
		})
	}
}
