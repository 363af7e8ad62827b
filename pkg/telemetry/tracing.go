package telemetry

import (
	"context"
	"os"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

var tracing atomic.Bool

// InitTracing exports traces with OTLP over gRPC when the standard
// OpenTelemetry environment asks for it (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_TRACES_SAMPLER and its _ARG
// choose the sampling), and is off otherwise. Call it before any server or
// connection is made; the returned function flushes and stops the export.
func InitTracing(ctx context.Context, service string) (func(context.Context) error, error) {
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, err
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	tracing.Store(true)
	return tp.Shutdown, nil
}

// Tracer is a named tracer of the process's provider (a no-op when tracing
// is off).
func Tracer(name string) trace.Tracer { return otel.Tracer(name) }

// ServerTracing is the gRPC server option that traces calls and continues
// the caller's trace, or nothing when tracing is off (it costs nothing
// then). Its RPC metrics are off: the gateway counts calls itself.
func ServerTracing() []grpc.ServerOption {
	if !tracing.Load() {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithMeterProvider(noop.NewMeterProvider())))}
}

// ClientTracing is the dial option that traces calls and passes the trace
// on to the server, or nothing when tracing is off.
func ClientTracing() []grpc.DialOption {
	if !tracing.Load() {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithMeterProvider(noop.NewMeterProvider())))}
}
