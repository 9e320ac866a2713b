package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/qslice/qslice/runner"
)

// oddStrings are strings encoding/json escapes in every way it can: quotes, backslashes, control
// characters, HTML characters, invalid UTF-8, U+2028/U+2029, multi-byte runes.
var oddStrings = []string{"", "plain", `"quoted" \back\slash`, "\x00\x01\b\f\n\r\t\x1f\x7f", "<a href='x'>&amp;</a>",
	"\xff\xfe invalid \xc3", "line\u2028sep\u2029", "héllo wörld ✓ 𝄞", "list-a@example.org", strings.Repeat("ab\"", 50)}

// TestAppendHeaderIsJSONMarshal: the hand-written header encoder writes exactly what
// encoding/json.Marshal writes, for headers with every field set or zero and every kind of string.
func TestAppendHeaderIsJSONMarshal(t *testing.T) {
	rnd := rand.New(rand.NewPCG(13, 13))
	str := func() string { return oddStrings[rnd.IntN(len(oddStrings))] }
	for i := range 2000 {
		h := &Header{Type: TypeMessage, ID: rnd.Uint64() >> rnd.IntN(64), Queue: str(), Slice: rnd.IntN(70000), Slices: rnd.IntN(70000),
			MessageID: str(), Enqueued: str(), Attempts: rnd.IntN(5), Retry: rnd.IntN(5), Lock: str()}
		if i%2 == 0 {
			h.LeaseDeadline, h.FencingToken, h.Traceparent = str(), rnd.Uint64()>>rnd.IntN(64), str()
		}
		if i%3 == 0 {
			h.Meta = map[string]string{}
			for range rnd.IntN(4) {
				h.Meta[str()] = str()
			}
		}
		want, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendHeader(nil, h); !bytes.Equal(got, want) {
			t.Fatalf("header %+v:\nappendHeader %s\njson.Marshal %s", h, got, want)
		}
	}
}

// TestParseDoneAgreesWithJSON: the fast path for done answers takes exactly the answers
// encoding/json decodes to the same done, and leaves every other form to it.
func TestParseDoneAgreesWithJSON(t *testing.T) {
	cases := []string{`{"type":"done","id":7}`, `{"type":"done","id":0}`, `{"type":"done","id":18446744073709551615}`,
		`{"type":"done","id":9999999999999999999}`, `{"type":"done","id":007}`, `{"type":"done","id":-1}`, `{"type":"done","id":1.5}`,
		`{"type":"done","id":1e3}`, `{"type":"done","id":}`, `{"type":"done","id":"7"}`, `{"type":"done","id":7 }`,
		`{"type":"done", "id":7}`, `{"type":"done","id":7,"x":1}`, `{"type":"done","id":7}}`, `{"type":"retry","id":7}`}
	for _, c := range cases {
		id, fast := parseDone([]byte(c))
		var a Answer
		slowErr := json.Unmarshal([]byte(c), &a)
		if fast && (slowErr != nil || a.Type != TypeDone || a.ID == nil || *a.ID != id) {
			t.Errorf("%s: fast path took id %d; encoding/json: %+v, %v", c, id, a, slowErr)
		}
		got, err := parseAnswer([]byte(c))
		if slowErr == nil && a.ID != nil && (err != nil || got.Type != a.Type || *got.ID != *a.ID) {
			t.Errorf("%s: parseAnswer %+v, %v; encoding/json %+v", c, got, err, a)
		}
	}
	if id, ok := parseDone([]byte(`{"type":"done","id":42}`)); !ok || id != 42 {
		t.Errorf("the libraries' done answer not taken by the fast path: %d, %v", id, ok)
	}
}

// TestTraceparentAsThePropagatorInjectsIt: the header's traceparent is what
// propagation.TraceContext injects into a map (TRACEPARENT of exec handlers), sampled or not.
func TestTraceparentAsThePropagatorInjectsIt(t *testing.T) {
	for _, flags := range []trace.TraceFlags{0, trace.FlagsSampled, 0xff} {
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{0x4b, 0xf9, 1, 2, 3}, SpanID: trace.SpanID{0, 0xf0, 0x67, 9}, TraceFlags: flags})
		ctx := trace.ContextWithSpanContext(context.Background(), sc)
		carrier := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, carrier)
		if got, want := header(ctx, &runner.Message{Queue: "in"}).Traceparent, carrier.Get("traceparent"); got != want || want == "" {
			t.Errorf("flags %02x: %q, the propagator injects %q", byte(flags), got, want)
		}
	}
	if h := header(context.Background(), &runner.Message{Queue: "in"}); h.Traceparent != "" {
		t.Errorf("traceparent %q without a span", h.Traceparent)
	}
}
