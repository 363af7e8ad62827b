package gateway

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errDraining ends the streams of a gateway that shuts down: Unavailable,
// so etcd clients re-create their watches and keep-alives on another.
var errDraining = status.Error(codes.Unavailable, "tessera: this gateway is shutting down; reconnect to another one")

// longLived are the streams a client keeps open for as long as it runs:
// a draining gateway ends them at once instead of waiting for them.
var longLived = map[string]bool{
	"/etcdserverpb.Watch/Watch":          true,
	"/etcdserverpb.Lease/LeaseKeepAlive": true,
}

// drainStreams ends long-lived streams when the gateway starts draining.
func (g *Gateway) drainStreams(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !longLived[info.FullMethod] {
		return handler(srv, ss)
	}
	if g.draining.Err() != nil {
		return errDraining
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	stop := context.AfterFunc(g.draining, cancel)
	defer stop()
	err := handler(srv, ctxStream{ServerStream: ss, ctx: ctx})
	if g.draining.Err() != nil && ss.Context().Err() == nil {
		return errDraining
	}
	return err
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// Shutdown drains the gateway, then closes it. It leaves the member list
// first (clients stop choosing it), stops accepting connections, ends
// watch and keep-alive streams with Unavailable (clients move them to
// another gateway), and lets unary calls in flight finish, all within
// ctx's deadline; whatever is left then is cut.
func (g *Gateway) Shutdown(ctx context.Context) {
	began := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if err := g.members.Deregister(dctx); err != nil {
		g.log.Warn("gateway deregistration failed; clients drop it when its registration expires", "err", err)
	}
	cancel()
	g.stopDraining()
	done := make(chan struct{})
	go func() {
		for _, hs := range g.https {
			hs.Shutdown(ctx)
		}
		g.grpcSrv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		g.log.Warn("gateway drain timed out; cutting the calls still running")
	}
	g.Close()
	g.log.Info("gateway drained", "took", time.Since(began).Round(time.Millisecond))
}
