package etcdapi

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Version is the etcd API version Tessera implements; kube-apiserver reads
// it to decide which features (watch progress requests) it may use.
const Version = "3.7.0"

// Maintenance is etcd's Maintenance service. Status is served here; the
// other calls (alarms, defragment, hashes, snapshot, move-leader) are not
// built yet and answer Unimplemented.
type Maintenance struct {
	pb.UnimplementedMaintenanceServer
	router *router.Router
	hdr    Header
}

// NewMaintenance returns the Maintenance service.
func NewMaintenance(r *router.Router, h Header) *Maintenance {
	return &Maintenance{router: r, hdr: h}
}

// Status reports the version and the first data shard's Raft position.
func (m *Maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	shards, err := m.router.All(ctx)
	if err != nil || len(shards) == 0 {
		return nil, status.Error(codes.Unavailable, "etcdserver: no leader")
	}
	var st *shardpb.StatusResponse
	err = m.router.Call(ctx, shards[0], false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
		st, err = c.Status(ctx, &shardpb.StatusRequest{ShardId: shards[0].Id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return &pb.StatusResponse{
		Header:           m.hdr.fill(&pb.ResponseHeader{Revision: st.AppliedRevision}, st.RaftTerm),
		Version:          Version,
		Leader:           m.hdr.MemberID,
		RaftIndex:        st.AppliedIndex,
		RaftTerm:         st.RaftTerm,
		RaftAppliedIndex: st.AppliedIndex,
		StorageVersion:   "3.6.0",
	}, nil
}
