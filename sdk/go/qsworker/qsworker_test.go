package qsworker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// oddStrings are strings encoding/json escapes in every way it can: quotes, backslashes, control
// characters, HTML characters, invalid UTF-8, U+2028/U+2029, multi-byte runes.
var oddStrings = []string{"", "plain", `"quoted" \back\slash`, "\x00\x01\b\f\n\r\t\x1f\x7f", "<a href='x'>&amp;</a>",
	"\xff\xfe invalid \xc3", "line\u2028sep\u2029", "héllo wörld ✓ 𝄞", "list-a@example.org", strings.Repeat("ab\"", 50)}

// answerByMap is how this library wrote answers before it wrote them without encoding/json: the
// reference for the bytes on the wire.
func answerByMap(id uint64, err error) []byte {
	if err == nil {
		return fmt.Appendf(nil, `{"type":"done","id":%d}`, id)
	}
	var re *RetryError
	a := map[string]any{"id": id}
	if errors.As(err, &re) {
		a["type"], a["reason"] = "retry", re.Reason
		if re.Delay > 0 {
			a["delay"] = re.Delay.Seconds()
		}
	} else {
		a["type"], a["reason"] = "fail", err.Error()
	}
	b, _ := json.Marshal(a)
	return b
}

// TestAnswerIsJSONMarshal: every answer, done, retry (with every kind of delay, wrapped or not)
// and fail, is byte for byte what encoding/json made of it.
func TestAnswerIsJSONMarshal(t *testing.T) {
	delays := []time.Duration{0, -time.Second, 1, 999, time.Microsecond, 1234567, time.Second, 1500 * time.Millisecond,
		30 * time.Second, 24 * time.Hour, 1<<63 - 1}
	var errs []error
	errs = append(errs, nil)
	for _, s := range oddStrings {
		errs = append(errs, errors.New(s), fmt.Errorf("wrapped: %w", errors.New(s)))
		for _, d := range delays {
			errs = append(errs, Retry(d, s), fmt.Errorf("wrapped: %w", Retry(d, s)))
		}
	}
	for _, id := range []uint64{0, 7, 1<<64 - 1} {
		for _, err := range errs {
			if got, want := appendAnswer(nil, id, err), answerByMap(id, err); !bytes.Equal(got, want) {
				t.Errorf("answer to %d, %v:\n got %s\nwant %s", id, err, got, want)
			}
		}
	}
}

// TestParseLine: the allocation-free path for "<n> <n>\n" and the general one agree, and the
// general one still takes what it took before.
func TestParseLine(t *testing.T) {
	for _, c := range []struct {
		line string
		h, b int
		ok   bool
	}{
		{"12 34\n", 12, 34, true}, {"0 0\n", 0, 0, true}, {"007 1\n", 7, 1, true},
		{"123456789012345678 1\n", 123456789012345678, 1, true}, {"1234567890123456789 2\n", 1234567890123456789, 2, true},
		{" 12\t34 \r\n", 12, 34, true}, {"+1 2\n", 1, 2, true},
		{"12 34", 12, 34, true}, {"12\n", 0, 0, false}, {"1 2 3\n", 0, 0, false}, {"-1 2\n", 0, 0, false},
		{"a 2\n", 0, 0, false}, {"99999999999999999999 1\n", 0, 0, false}, {"\n", 0, 0, false},
	} {
		h, b, err := parseLine([]byte(c.line))
		if (err == nil) != c.ok || h != c.h || b != c.b {
			t.Errorf("parseLine(%q) = %d, %d, %v; want %d, %d, ok %v", c.line, h, b, err, c.h, c.b, c.ok)
		}
	}
}

// decodeHeaders are headers the decoder must take as encoding/json does, or leave to it.
var decodeHeaders = []string{
	`{"type":"message","id":7,"queue":"in","slice":2,"slices":4,"message_id":"1700000000.123456+5f0c.pck","enqueued":"2023-11-14T22:13:20.123456Z","attempts":0,"retry":0,"lock":"list-a","lease_deadline":"2026-12-06T10:00:14.2Z","fencing_token":4711,"traceparent":"00-4bf9-00f0-01","meta":{"list":"a@example.org"}}`,
	` { "type" : "message" , "id" : 18446744073709551615 , "meta" : { } } `,
	"\t\r\n{\"type\":\"message\"}\n",
	`{"type":"message","id":18446744073709551616}`,
	`{"type":"message","id":-1}`, `{"type":"message","slice":-1}`, `{"type":"message","slice":-0}`,
	`{"type":"message","slice":9223372036854775807}`, `{"type":"message","slice":9223372036854775808}`,
	`{"type":"message","id":1.0}`, `{"type":"message","id":1e3}`, `{"type":"message","id":01}`, `{"type":"message","id":"7"}`,
	`{"type":"message","id":null,"queue":null,"meta":null}`, `{"type":"message","queue":"a","queue":null}`,
	`{"type":"message","queue":"a","queue":"b"}`, `{"type":"message","queue":true}`, `{"type":"message","queue":5}`,
	`{"type":"message","meta":{"a":"1"},"meta":{"b":"2","a":"3"}}`, `{"type":"message","meta":{"a":"1"},"meta":null}`,
	`{"type":"message","meta":null,"meta":{}}`, `{"type":"message","meta":{"a":null}}`, `{"type":"message","meta":{"a":1}}`,
	`{"type":"message","meta":[]}`, `{"type":"message","meta":"x"}`,
	`{"type":"message","Queue":"a"}`, `{"type":"message","QUEUE":"a"}`, `{"type":"message","ſlice":3}`, `{"type":"message","\u0069d":3}`,
	`{"type":"message","body":"x","-":1,"Body":2}`,
	`{"type":"message","future":{"a":[1,-2.5e+3,0.1,true,false,null,"x\"y",{"b":{}}],"c":[]},"id":3}`,
	`{"type":"message","future":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
	`{"type":"message","future":01}`, `{"type":"message","future":1.}`, `{"type":"message","future":.5}`, `{"type":"message","future":1e}`,
	`{"type":"message","future":-}`, `{"type":"message","future":tru}`, `{"type":"message","future":nul}`, `{"type":"message","future":'x'}`,
	`{"type":"message","queue":"\u003cq\u003e \/ \b\f\n\r\t \u00e9 \ud834\udd1e \ud834 \udd1e \ud834\u0041 \uD834\uDD1E"}`,
	`{"type":"message","queue":"\x"}`, `{"type":"message","queue":"\u12"}`, `{"type":"message","queue":"\'"}`,
	"{\"type\":\"message\",\"queue\":\"a\x01b\"}", "{\"type\":\"message\",\"queue\":\"\xff\xfe\xc3 é \xed\xa0\x80\"}",
	"{\"type\":\"message\",\"meta\":{\"k\xff\":\"v\\u2028\"}}",
	`{"type":"message",}`, `{"type":"message"`, `{"type":"message"} x`, `{"type":"message"}{}`, `{"type" "message"}`,
	`{"type":"message","queue":"a}`, `{}`, ``, `[]`, `null`, `{"type":"hello","versions":[1]}`, `{"id":1,"type":"message"}`,
}

// checkDecode compares the decoder with encoding/json on one header: whatever the decoder takes
// must be what encoding/json makes of it, field by field (a nil map is not an empty one).
func checkDecode(t *testing.T, hdr []byte) (fast bool) {
	t.Helper()
	var got, want Message
	fast = newDecoder().decode(hdr, &got)
	err := json.Unmarshal(hdr, &want)
	if fast && (err != nil || !reflect.DeepEqual(got, want)) {
		t.Errorf("header %q:\ndecoder      %#v\nencoding/json %#v, %v", hdr, got, want, err)
	}
	return fast
}

// TestDecoderAgreesWithJSON: on headers of every shape, and on random headers as qslice and
// encoding/json write them with every kind of string, the decoder gives what encoding/json gives
// or leaves the header to it; it takes every header qslice writes.
func TestDecoderAgreesWithJSON(t *testing.T) {
	for _, h := range decodeHeaders {
		checkDecode(t, []byte(h))
	}
	for _, h := range decodeHeaders[:3] {
		if !checkDecode(t, []byte(h)) {
			t.Errorf("header %s left to encoding/json", h)
		}
	}
	for i := range uint64(100) {
		if h := messageHeader(i, i%2 == 0); !checkDecode(t, h) {
			t.Errorf("qslice's header %s left to encoding/json", h)
		}
	}
	rnd := rand.New(rand.NewPCG(14, 8))
	str := func() string { return oddStrings[rnd.IntN(len(oddStrings))] }
	for i := range 2000 {
		m := Message{Type: "message", ID: rnd.Uint64() >> rnd.IntN(64), Queue: str(), Slice: rnd.IntN(70000), Slices: rnd.IntN(70000),
			MessageID: str(), Enqueued: str(), Attempts: rnd.IntN(5), Retry: rnd.IntN(5), Lock: str(), LeaseDeadline: str(),
			FencingToken: rnd.Uint64() >> rnd.IntN(64), Traceparent: str()}
		if i%3 != 0 {
			m.Meta = map[string]string{}
			for range rnd.IntN(4) {
				m.Meta[str()] = str()
			}
		}
		hdr, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !checkDecode(t, hdr) {
			t.Errorf("header %s left to encoding/json", hdr)
		}
	}
}

// FuzzDecoder: on any input, what the decoder takes is what encoding/json makes of it.
//
//	go test -run '^$' -fuzz FuzzDecoder -fuzztime 1m ./sdk/go/qsworker/
func FuzzDecoder(f *testing.F) {
	for _, h := range decodeHeaders {
		f.Add([]byte(h))
	}
	f.Add(messageHeader(1, true))
	f.Fuzz(func(t *testing.T, hdr []byte) { checkDecode(t, hdr) })
}

// TestServeWire runs messages of every kind through Serve: the handler sees each header as
// encoding/json decodes it and its body byte for byte (empty, large, larger than the kept buffer);
// the answers on the wire are byte for byte those of the earlier library (answerByMap); messages
// and their strings kept by the handler stay intact after later messages.
func TestServeWire(t *testing.T) {
	type msg struct {
		hdr  []byte
		body []byte
		err  error
	}
	var msgs []msg
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range uint64(300) {
		body := make([]byte, []int{0, 5, 4096, 70000, maxKeptBody + 1}[rnd.IntN(5)])
		for j := range body {
			body[j] = byte(rnd.Uint32())
		}
		var err error
		switch i % 5 {
		case 1:
			err = Retry(time.Duration(rnd.Int64N(int64(time.Hour))), oddStrings[i%uint64(len(oddStrings))])
		case 2:
			err = Retry(0, "busy")
		case 3:
			err = fmt.Errorf("deliver %d: %w", i, errors.New(oddStrings[i%uint64(len(oddStrings))]))
		}
		hdr := messageHeader(i+1, i%2 == 0)
		if i%7 == 0 {
			hdr = fmt.Appendf(nil, `{"id":%d, "type":"message","Queue":"in","future":[1,2]}`, i+1) // left to encoding/json
		}
		msgs = append(msgs, msg{hdr, body, err})
	}
	var in, want bytes.Buffer
	in.Write(appendTestFrame(nil, []byte(helloFrame), nil))
	want.Write(appendTestFrame(nil, []byte(`{"type":"ready","version":1}`), nil))
	for i, m := range msgs {
		in.Write(appendTestFrame(nil, m.hdr, m.body))
		want.Write(appendTestFrame(nil, answerByMap(uint64(i+1), m.err), nil))
	}
	var out bytes.Buffer
	var kept []*Message
	n := 0
	err := Serve(&in, &out, func(m *Message) error {
		var exp Message
		if err := json.Unmarshal(msgs[n].hdr, &exp); err != nil {
			t.Fatal(err)
		}
		exp.Body = msgs[n].body
		if m.Body == nil || !reflect.DeepEqual(*m, exp) {
			t.Errorf("message %d: handler got %+v, want %+v", n, *m, exp)
		}
		kept = append(kept, m)
		n++
		return msgs[n-1].err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Errorf("answers differ from the earlier library's:\n got %.2000q\nwant %.2000q", out.Bytes(), want.Bytes())
	}
	for i, m := range kept {
		var exp Message
		json.Unmarshal(msgs[i].hdr, &exp)
		m.Body = nil
		if !reflect.DeepEqual(*m, exp) {
			t.Errorf("message %d changed after its handler returned: %+v, want %+v", i, *m, exp)
		}
	}
}

// TestServeErrors: garbage and broken streams end Serve with the errors they always did.
func TestServeErrors(t *testing.T) {
	frame := func(hdr, body string) string { return string(appendTestFrame(nil, []byte(hdr), []byte(body))) }
	hello := frame(helloFrame, "")
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{hello, ""},
		{"3 0\n{}x", `expected a hello offering version 1, got "{}x"`},
		{hello + "hello\n", `bad frame header line "hello\n"`},
		{hello + "5 0\n{\"ty", "read frame header: unexpected EOF"},
		{hello + "2 5\n{}ab", "read frame body: unexpected EOF"},
		{hello + "2 0", "read frame header line: EOF"},
		{hello + frame(`{"type":"hello"}`, ""), `unexpected frame type "hello"`},
		{hello + frame(`{"type":"message"}`, "") + frame(`{"type":1}`, ""), `message header "{\"type\":1}": json: cannot unmarshal number`},
	} {
		err := Serve(strings.NewReader(c.in), &bytes.Buffer{}, func(*Message) error { return nil })
		if got := fmt.Sprint(err); c.want == "" && err != nil || c.want != "" && !strings.HasPrefix(got, c.want) {
			t.Errorf("input %q: %v, want %q", c.in, err, c.want)
		}
	}
}

// TestServeAllocations: in the steady state a message costs the library two allocations, the
// *Message and one string of its new values, whatever its answer; one when its header repeats
// every string (so nothing of the library's own, frames, buffers and answers, allocates).
// Measured as the difference between streams of 2,000 and 1,000 messages, so that the start-up
// (buffers, the hello) cancels out.
func TestServeAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector (its sync.Pool drops items at random)")
	}
	// No collection while measuring: one empties the sync.Pools (fmt's, for the ready frame) and
	// the next use allocates, and more of them fall in the longer stream; its background workers
	// are goroutines allocated at the first. Both made this fail about 1 run in 20.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	repeating := func(id uint64, _ bool) []byte {
		return fmt.Appendf(nil, `{"type":"message","id":%d,"queue":"in","slice":1,"slices":4,"lock":"l","meta":null}`, id)
	}
	for _, c := range []struct {
		name   string
		header func(uint64, bool) []byte
		err    error
		want   float64
	}{
		{"done", messageHeader, nil, 2},
		{"retry", messageHeader, Retry(1500*time.Millisecond, "busy <now>"), 2},
		{"repeating", repeating, nil, 1},
	} {
		r := newReplay(false, []byte("payload"))
		r.frames, r.ends = nil, nil
		for i := range uint64(256) {
			r.frames = appendTestFrame(r.frames, c.header(i+1, false), []byte("payload"))
			r.ends = append(r.ends, len(r.frames))
		}
		handle := func(*Message) error { return c.err }
		allocs := func(n int) float64 {
			return testing.AllocsPerRun(3, func() {
				r.reset(n)
				if err := Serve(r, &countingWriter{}, handle); err != nil {
					t.Fatal(err)
				}
			})
		}
		if per := (allocs(2000) - allocs(1000)) / 1000; per > c.want {
			t.Errorf("%s: %.3f allocations per message, want at most %v", c.name, per, c.want)
		}
	}
}
