package etcdapi

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/streammeta"
	"github.com/tessera-kv/tessera/pkg/wirecodec"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/authgate"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Watchers are the connections to the watcher tier; streams are spread
// over them and move on to the next one when a watcher fails.
type Watchers struct {
	conns []*grpc.ClientConn
	next  atomic.Uint64
}

// NewWatchers wraps connections to watcher processes.
func NewWatchers(conns []*grpc.ClientConn) *Watchers { return &Watchers{conns: conns} }

// open starts an upstream stream on the next watcher that accepts one.
func (w *Watchers) open(ctx context.Context) (pb.Watch_WatchClient, error) {
	if len(w.conns) == 0 {
		return nil, status.Error(codes.Unavailable, "tessera: no watcher configured")
	}
	var lastErr error
	first := w.next.Add(1)
	for i := range w.conns {
		c := w.conns[(first+uint64(i))%uint64(len(w.conns))]
		up, err := pb.NewWatchClient(c).Watch(ctx, grpc.WaitForReady(false), grpc.ForceCodecV2(wirecodec.New()))
		if err == nil {
			return up, nil
		}
		lastErr = err
	}
	return nil, status.Errorf(codes.Unavailable, "tessera: no watcher reachable: %v", lastErr)
}

// Watch is etcd's Watch service: each client stream is proxied to one
// watcher stream, which implements etcd's watch semantics. If the watcher
// stream breaks, the client's stream ends with Unavailable and etcd clients
// resume their watches from the last revision they received.
type Watch struct {
	pb.UnsafeWatchServer
	watchers *Watchers
	router   *router.Router
	gate     *authgate.Gate
	hdr      Header

	// The last leader check, shared by every require-leader stream so that
	// their number does not multiply the checks.
	leaderMu      sync.Mutex
	leaderChecked time.Time
	leaderErr     error
}

// leaderCheckInterval is how often require-leader streams re-check, and how
// long one check's answer is reused; leaderLostAfter checks in a row without
// a leader end such streams, as etcd ends them when its member loses the
// leader.
const (
	leaderCheckInterval = time.Second
	leaderLostAfter     = 3
)

var _ pb.WatchServer = (*Watch)(nil)

// NewWatch returns the Watch service.
func NewWatch(w *Watchers, r *router.Router, g *authgate.Gate, h Header) *Watch {
	return &Watch{watchers: w, router: r, gate: g, hdr: h}
}

func (s *Watch) Watch(stream pb.Watch_WatchServer) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	needLeader := requireLeader(md)
	if needLeader {
		if err := s.leaderStatus(); err != nil {
			return err
		}
	}
	out := md.Copy()
	streammeta.SetIdentity(out, s.hdr.ClusterID, s.hdr.MemberID)
	up, err := s.watchers.open(metadata.NewOutgoingContext(ctx, out))
	if err != nil {
		return err
	}
	errc := make(chan error, 3) // receiver, sender, leader monitor
	var sendMu sync.Mutex       // the stream has two senders: refusals and the watcher's responses
	go func() {
		for {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				up.CloseSend() // the stream goes on: responses still flow
				return
			}
			if c := req.GetCreateRequest(); err == nil && c != nil {
				aerr := s.gate.CheckWatch(ctx, c.Key, c.RangeEnd)
				if status.Code(aerr) == codes.Unavailable {
					errc <- aerr // no decision (the auth store is out of reach): the client re-creates its watches
					return
				}
				if aerr != nil {
					// etcd's refusal: a watch created and cancelled at once.
					sendMu.Lock()
					err = stream.Send(&pb.WatchResponse{Header: s.hdr.fill(nil, 0), WatchId: clientv3InvalidWatchID,
						Created: true, Canceled: true, CancelReason: aerr.Error()})
					sendMu.Unlock()
					if err != nil {
						errc <- err
						return
					}
					continue
				}
			}
			if err == nil {
				err = up.Send(req)
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() {
		// Responses are forwarded in wire form, never decoded here: the
		// watcher already wrote this gateway's IDs into their headers.
		for {
			var f wirecodec.Frame
			err := up.RecvMsg(&f)
			if err == nil {
				sendMu.Lock()
				err = stream.SendMsg(&f)
				sendMu.Unlock()
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	if needLeader {
		go s.monitorLeader(ctx, errc)
	}
	err = <-errc
	if errors.Is(err, rpctypes.ErrGRPCNoLeader) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Canceled && st.Code() != codes.Unknown {
		return err // the watcher's own answer (etcd errors, Unavailable)
	}
	// Anything else means the watcher stream broke: Unavailable tells etcd
	// clients to re-create their watches.
	return status.Errorf(codes.Unavailable, "tessera: watch stream to the watcher tier lost: %v", err)
}

// clientv3InvalidWatchID is the watch ID etcd gives a refused watch.
const clientv3InvalidWatchID = -1

// requireLeader reports whether the client asked for etcd's require-leader
// behaviour (clientv3.WithRequireLeader).
func requireLeader(md metadata.MD) bool {
	for _, v := range md.Get(rpctypes.MetadataRequireLeaderKey) {
		if v == rpctypes.MetadataHasLeader {
			return true
		}
	}
	return false
}

// monitorLeader ends a require-leader stream with etcd's no-leader error
// once the cluster has had no leader for leaderLostAfter checks in a row.
func (s *Watch) monitorLeader(ctx context.Context, errc chan<- error) {
	t := time.NewTicker(leaderCheckInterval)
	defer t.Stop()
	misses := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.leaderStatus() == nil {
			misses = 0
			continue
		}
		if misses++; misses >= leaderLostAfter {
			errc <- rpctypes.ErrGRPCNoLeader
			return
		}
	}
}

// leaderStatus is checkLeaders, reusing an answer younger than the check
// interval.
func (s *Watch) leaderStatus() error {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	if time.Since(s.leaderChecked) < leaderCheckInterval/2 {
		return s.leaderErr
	}
	// Not the stream's context: the answer is shared with other streams.
	cctx, cancel := context.WithTimeout(context.Background(), leaderCheckInterval)
	defer cancel()
	s.leaderErr = s.checkLeaders(cctx)
	s.leaderChecked = time.Now()
	return s.leaderErr
}

// checkLeaders fails with etcd's no-leader error unless every data shard
// has a leader.
func (s *Watch) checkLeaders(ctx context.Context) error {
	shards, err := s.router.All(ctx)
	if err != nil || len(shards) == 0 {
		return rpctypes.ErrGRPCNoLeader
	}
	for _, d := range shards {
		var st *shardpb.StatusResponse
		err := s.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			st, err = c.Status(ctx, &shardpb.StatusRequest{ShardId: d.Id})
			return err
		})
		if err == nil && st.LeaderStoreId != 0 {
			continue
		}
		// The store asked may be the one cut off from the others: the shard
		// has a leader if any of its replicas knows one.
		if !s.anyReplicaKnowsLeader(ctx, d.Id) {
			return rpctypes.ErrGRPCNoLeader
		}
	}
	return nil
}

func (s *Watch) anyReplicaKnowsLeader(ctx context.Context, shardID uint64) bool {
	for _, addr := range s.router.Replicas(shardID) {
		var st *shardpb.StatusResponse
		err := s.router.CallStore(ctx, addr, func(ctx context.Context, c grpc.ClientConnInterface) (err error) {
			st, err = shardpb.NewShardClient(c).Status(ctx, &shardpb.StatusRequest{ShardId: shardID})
			return err
		})
		if err == nil && st.LeaderStoreId != 0 {
			return true
		}
	}
	return false
}
