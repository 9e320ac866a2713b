package exporters

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// TracingEnabled reports whether the standard OpenTelemetry environment asks for traces to be
// exported: OTEL_TRACES_EXPORTER set to something other than "none", or an OTLP endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, and OTEL_SDK_DISABLED
// not "true". getenv is os.Getenv in production.
func TracingEnabled(getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); {
	case exp == "none":
		return false
	case exp != "":
		return true
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// NewTracerProvider returns the tracer provider the standard OTEL_* environment describes, and
// its shutdown (flushes pending spans; call it once, with a deadline, when the agent stops).
//
// With nothing configured (see TracingEnabled) it is a no-op provider: no exporter is created,
// nothing is dialled, spans cost next to nothing. Otherwise the exporter comes from
// go.opentelemetry.io/contrib/exporters/autoexport: OTEL_TRACES_EXPORTER=otlp (the default when
// only an endpoint is set; protocol from OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, http/protobuf by
// default), console, or none. Sampling follows OTEL_TRACES_SAMPLER(_ARG) (parent-based,
// always-on by default); the resource carries service.name = serviceName and service.version =
// version, which OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override.
func NewTracerProvider(ctx context.Context, serviceName, version string) (trace.TracerProvider, func(context.Context) error, error) {
	nop := func(context.Context) error { return nil }
	if !TracingEnabled(os.Getenv) {
		return noop.NewTracerProvider(), nop, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("create trace exporter from OTEL_* environment: %w", err)
	}
	if autoexport.IsNoneSpanExporter(exp) {
		return noop.NewTracerProvider(), nop, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(serviceName), semconv.ServiceVersion(version)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(), // last: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil { // includes a malformed OTEL_RESOURCE_ATTRIBUTES: a configuration error

		_ = exp.Shutdown(ctx)
		return nil, nil, fmt.Errorf("build trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}
