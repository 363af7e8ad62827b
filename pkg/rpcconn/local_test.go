package rpcconn

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// failingHealth answers Check with a plain error, as a handler may.
type failingHealth struct {
	healthpb.UnimplementedHealthServer
	err error
}

func (f failingHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, f.err
}

// remoteOnly stands for the real connection: it answers what Local does
// not (here: everything, with a marker error).
type remoteOnly struct{}

var errRemote = errors.New("sent to the remote connection")

func (remoteOnly) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return errRemote
}
func (remoteOnly) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errRemote
}

// A unary call through Local reaches the registered service in-process
// with gRPC's semantics: the answer, status errors as they are, other
// errors as codes gRPC would give them, a cancelled context refused.
// Streams go to the remote connection.
func TestLocalCallsInProcess(t *testing.T) {
	srv := health.NewServer()
	srv.SetServingStatus("a", healthpb.HealthCheckResponse_SERVING)
	l := NewLocal()
	healthpb.RegisterHealthServer(l, srv)
	c := healthpb.NewHealthClient(l.Conn(remoteOnly{}))
	ctx := context.Background()

	resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check(a) = %v, %v", resp, err)
	}
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "b"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check(b): %v, want NotFound", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Check(cctx, &healthpb.HealthCheckRequest{Service: "a"}); status.Code(err) != codes.Canceled {
		t.Fatalf("Check with a cancelled context: %v, want Canceled", err)
	}
	if _, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: "a"}); !errors.Is(err, errRemote) {
		t.Fatalf("a stream went to %v, want the remote connection", err)
	}

	l = NewLocal()
	healthpb.RegisterHealthServer(l, failingHealth{err: errors.New("disk on fire")})
	c = healthpb.NewHealthClient(l.Conn(remoteOnly{}))
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unknown || status.Convert(err).Message() != "disk on fire" {
		t.Fatalf("plain error: %v, want Unknown: disk on fire", err)
	}
	l = NewLocal()
	healthpb.RegisterHealthServer(l, failingHealth{err: context.DeadlineExceeded})
	c = healthpb.NewHealthClient(l.Conn(remoteOnly{}))
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline error: %v, want DeadlineExceeded", err)
	}
}

// The service gets a copy of the request and the caller a copy of the
// answer, as over the wire.
func TestLocalCopiesMessages(t *testing.T) {
	var seen *healthpb.HealthCheckRequest
	l := NewLocal()
	healthpb.RegisterHealthServer(l, recordingHealth{seen: &seen})
	req := &healthpb.HealthCheckRequest{Service: "x"}
	if _, err := healthpb.NewHealthClient(l.Conn(remoteOnly{})).Check(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if seen == req {
		t.Fatal("the service got the caller's own message")
	}
	if seen.Service != "x" {
		t.Fatalf("the service got %q", seen.Service)
	}
}

type recordingHealth struct {
	healthpb.UnimplementedHealthServer
	seen **healthpb.HealthCheckRequest
}

func (r recordingHealth) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	*r.seen = req
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}
