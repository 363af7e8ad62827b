package gateway

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/telemetry"
)

// requestMetrics counts client requests and times them, by gRPC method and
// status code (the REST gateway's calls are counted as the gRPC calls they
// become).
type requestMetrics struct {
	requests metric.Int64Counter
	duration metric.Float64Histogram
}

func newRequestMetrics() (*requestMetrics, error) {
	m := telemetry.Meter("tessera/gateway")
	requests, err := m.Int64Counter("tessera.gateway.requests", metric.WithDescription("etcd API calls, by method and status code"))
	if err != nil {
		return nil, err
	}
	duration, err := m.Float64Histogram("tessera.gateway.request.duration", metric.WithUnit("s"),
		metric.WithDescription("etcd API call latency (streams: their lifetime)"))
	if err != nil {
		return nil, err
	}
	return &requestMetrics{requests: requests, duration: duration}, nil
}

func (m *requestMetrics) record(ctx context.Context, method string, start time.Time, err error) {
	m.requests.Add(ctx, 1, metric.WithAttributes(attribute.String("method", method), attribute.String("code", status.Code(err).String())))
	m.duration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(attribute.String("method", method)))
}

func (m *requestMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.record(ctx, info.FullMethod, start, err)
	return resp, err
}

func (m *requestMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	m.record(ss.Context(), info.FullMethod, start, err)
	return err
}
