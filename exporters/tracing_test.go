package exporters

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

var otelVars = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
	"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
}

// clearOTEL unsets every OTEL_* variable these tests depend on, for the duration of the test.
func clearOTEL(t *testing.T) {
	for _, v := range otelVars {
		t.Setenv(v, "") // registers the restore
		os.Unsetenv(v)
	}
}

func TestTracingEnabled(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none"}, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "console"}, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, false},
	} {
		if got := TracingEnabled(func(k string) string { return c.env[k] }); got != c.want {
			t.Errorf("TracingEnabled(%v) = %v, want %v", c.env, got, c.want)
		}
	}
}

func TestTracerProviderDefaultIsNoop(t *testing.T) {
	clearOTEL(t)
	tp, shutdown, err := NewTracerProvider(context.Background(), "qslice", "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tp.(noop.TracerProvider); !ok {
		t.Fatalf("provider is %T, want a no-op one (nothing exported, nothing dialled)", tp)
	}
	_, span := tp.Tracer("t").Start(context.Background(), "x")
	if span.IsRecording() {
		t.Error("span is recording")
	}
	span.End()
	if err := shutdown(context.Background()); err != nil {
		t.Error(err)
	}
}

// The console exporter writes to the process' standard output, so the span is made in a child
// process (this test binary, running consoleHelper) whose output the test reads.
func TestTracerProviderConsole(t *testing.T) {
	if os.Getenv("QSLICE_TRACING_HELPER") == "1" {
		consoleHelper(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTracerProviderConsole$")
	cmd.Env = append(os.Environ(), "QSLICE_TRACING_HELPER=1", "OTEL_TRACES_EXPORTER=console",
		"OTEL_EXPORTER_OTLP_ENDPOINT=", "OTEL_SDK_DISABLED=", "OTEL_SERVICE_NAME=", "OTEL_RESOURCE_ATTRIBUTES=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, want := range []string{`"Name":"handle message"`, `"SpanKind":5`, "qslice-test", "9.9.9"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("console output lacks %q:\n%s", want, out)
		}
	}
}

func consoleHelper(t *testing.T) {
	tp, shutdown, err := NewTracerProvider(context.Background(), "qslice-test", "9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("t").Start(context.Background(), "handle message", trace.WithSpanKind(trace.SpanKindConsumer))
	if !span.IsRecording() {
		t.Error("span not recording")
	}
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// With only an OTLP endpoint set, spans go there over OTLP/HTTP.
func TestTracerProviderOTLPEndpoint(t *testing.T) {
	clearOTEL(t)
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/v1/traces" {
			posts.Add(1)
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	tp, shutdown, err := NewTracerProvider(context.Background(), "qslice", "test")
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("t").Start(context.Background(), "x")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if posts.Load() == 0 {
		t.Error("no span reached the OTLP endpoint")
	}
}
