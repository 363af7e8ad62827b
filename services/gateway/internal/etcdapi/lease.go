package etcdapi

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Lease is etcd's Lease service. Leases live in the meta shard: every call
// goes to the meta leader; TimeToLive's keys come from the data shards.
type Lease struct {
	pb.UnsafeLeaseServer
	router *router.Router
	hdr    Header
}

var _ pb.LeaseServer = (*Lease)(nil)

// NewLease returns the Lease service.
func NewLease(r *router.Router, h Header) *Lease { return &Lease{router: r, hdr: h} }

// call sends one lease request to the meta leader and decodes the answer
// into resp.
func (s *Lease) call(ctx context.Context, mutating bool, req *metapb.LeaseRequest, resp proto.Message) error {
	_, err := s.callEpoch(ctx, mutating, req, resp)
	return err
}

// callEpoch is call, returning the lease's epoch too (for TimeToLive).
func (s *Lease) callEpoch(ctx context.Context, mutating bool, req *metapb.LeaseRequest, resp proto.Message) (uint64, error) {
	var out *metapb.LeaseResponse
	err := s.router.CallMeta(ctx, mutating, func(ctx context.Context, c metapb.MetaClient) (err error) {
		out, err = c.Lease(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	if err := proto.Unmarshal(out.Response, resp); err != nil {
		return 0, status.Errorf(codes.Internal, "tessera: bad lease response: %v", err)
	}
	return out.Epoch, nil
}

func marshal(m proto.Message) ([]byte, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return b, nil
}

func (s *Lease) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	b, err := marshal(r)
	if err != nil {
		return nil, err
	}
	resp := &pb.LeaseGrantResponse{}
	if err := s.call(ctx, true, &metapb.LeaseRequest{Op: &metapb.LeaseRequest_Grant{Grant: b}}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.hdr.fill(resp.Header, 0)
	return resp, nil
}

func (s *Lease) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	b, err := marshal(r)
	if err != nil {
		return nil, err
	}
	resp := &pb.LeaseRevokeResponse{}
	if err := s.call(ctx, true, &metapb.LeaseRequest{Op: &metapb.LeaseRequest_Revoke{Revoke: b}}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.hdr.fill(resp.Header, 0)
	return resp, nil
}

// LeaseKeepAlive renews leases as the client asks, one answer per request.
// An unknown lease is answered with TTL 0, as etcd does.
func (s *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b, err := marshal(r)
		if err != nil {
			return err
		}
		resp := &pb.LeaseKeepAliveResponse{}
		err = s.call(ctx, false, &metapb.LeaseRequest{Op: &metapb.LeaseRequest_KeepAlive{KeepAlive: b}}, resp)
		switch {
		case errors.Is(err, rpctypes.ErrGRPCLeaseNotFound):
			resp = &pb.LeaseKeepAliveResponse{ID: r.ID}
		case err != nil:
			return err
		}
		resp.Header = s.hdr.fill(resp.Header, 0)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (s *Lease) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	b, err := marshal(r)
	if err != nil {
		return nil, err
	}
	resp := &pb.LeaseTimeToLiveResponse{}
	err = s.call(ctx, false, &metapb.LeaseRequest{Op: &metapb.LeaseRequest_TimeToLive{TimeToLive: b}}, resp)
	if errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
		// etcd answers an unknown or revoked lease with TTL -1, no error.
		return &pb.LeaseTimeToLiveResponse{Header: s.hdr.fill(nil, 0), ID: r.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, err
	}
	if r.Keys {
		if resp.Keys, err = s.leaseKeys(ctx, r.ID); err != nil {
			return nil, err
		}
	}
	resp.Header = s.hdr.fill(resp.Header, 0)
	return resp, nil
}

// leaseKeys gathers the lease's keys from every data shard, in key order.
func (s *Lease) leaseKeys(ctx context.Context, id int64) ([][]byte, error) {
	shards, err := s.router.All(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	var keys [][]byte
	for _, d := range shards {
		var out *shardpb.LeaseKeysResponse
		err := s.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			out, err = c.LeaseKeys(ctx, &shardpb.LeaseKeysRequest{ShardId: d.Id, LeaseId: id})
			return err
		})
		if err != nil {
			return nil, err
		}
		keys = append(keys, out.Keys...)
	}
	return keys, nil
}

func (s *Lease) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	b, err := marshal(r)
	if err != nil {
		return nil, err
	}
	resp := &pb.LeaseLeasesResponse{}
	if err := s.call(ctx, false, &metapb.LeaseRequest{Op: &metapb.LeaseRequest_Leases{Leases: b}}, resp); err != nil {
		return nil, err
	}
	resp.Header = s.hdr.fill(resp.Header, 0)
	return resp, nil
}

// exists checks that a lease is live before a put attaches a key to it.
// epoch checks that the lease is alive and returns its epoch, which puts
// attached to it carry to the shards (a shard refuses them once it has
// revoked the lease at that epoch).
func (s *Lease) epoch(ctx context.Context, id int64) (uint64, error) {
	return s.callEpoch(ctx, false, &metapb.LeaseRequest{Op: &metapb.LeaseRequest_TimeToLive{TimeToLive: mustMarshal(&pb.LeaseTimeToLiveRequest{ID: id})}},
		&pb.LeaseTimeToLiveResponse{})
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err) // a request built here always marshals
	}
	return b
}

// LeaseKeys lists a lease's keys, for auth's lease checks (none for an
// unknown lease).
func (s *Lease) LeaseKeys(ctx context.Context, id int64) ([][]byte, error) {
	return s.leaseKeys(ctx, id)
}

// LeaseIDs lists the live leases, for auth's lease checks.
func (s *Lease) LeaseIDs(ctx context.Context) ([]int64, error) {
	resp, err := s.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(resp.Leases))
	for i, l := range resp.Leases {
		ids[i] = l.ID
	}
	return ids, nil
}
