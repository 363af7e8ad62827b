package watcher

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/streammeta"
	"github.com/tessera-kv/tessera/services/watcher/internal/watchcache"
)

// watchServer is etcd's Watch service over the watch cache. Gateways proxy
// client streams to it one to one.
type watchServer struct {
	pb.UnsafeWatchServer
	cache         *watchcache.Cache
	responsesSent atomic.Int64
	// maxResponseBytes bounds the events merged into one message.
	maxResponseBytes int
}

var _ pb.WatchServer = (*watchServer)(nil)

// Watch runs one stream: a receive loop turns requests into cache calls, a
// send loop drains the stream's outbox. As in etcd, the client closing its
// send side does not end the stream (the REST gateway sends one create
// request and then closes); the stream ends with the client's context.
func (s *watchServer) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ws := s.cache.NewStream(ctx, identity(ctx))
	defer ws.Close()

	errc := make(chan error, 2)
	go func() {
		for {
			rs, err := ws.Next(ctx)
			if err != nil {
				errc <- err
				return
			}
			// Events shared by a group go out as encoded once; a lagging
			// client's backlog goes out in fewer, larger messages.
			frames, err := watchcache.Frames(rs, s.maxResponseBytes)
			if err != nil {
				errc <- err
				return
			}
			for _, f := range frames {
				if err := stream.SendMsg(f); err != nil {
					errc <- err
					return
				}
				s.responsesSent.Add(1)
			}
		}
	}()
	go func() {
		for {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				errc <- err
				return
			}
			switch u := req.RequestUnion.(type) {
			case *pb.WatchRequest_CreateRequest:
				if u.CreateRequest != nil {
					err = ws.Create(ctx, u.CreateRequest)
				}
			case *pb.WatchRequest_CancelRequest:
				if u.CancelRequest != nil {
					err = ws.Cancel(ctx, u.CancelRequest.WatchId)
				}
			case *pb.WatchRequest_ProgressRequest:
				if u.ProgressRequest != nil {
					ws.RequestProgress()
				}
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		if _, ok := status.FromError(err); ok || ctx.Err() != nil {
			return err
		}
		return status.Error(codes.Unavailable, err.Error())
	case <-ctx.Done():
		return ctx.Err()
	}
}

func identity(ctx context.Context) watchcache.Identity {
	md, _ := metadata.FromIncomingContext(ctx)
	c, m := streammeta.Identity(md)
	return watchcache.Identity{ClusterID: c, MemberID: m}
}
