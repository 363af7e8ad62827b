package replica

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
)

// RegisterGateway records a gateway's registration through the meta log.
func (m *metaService) RegisterGateway(ctx context.Context, req *metapb.RegisterGatewayRequest) (*metapb.RegisterGatewayResponse, error) {
	g := req.GetGateway()
	if g == nil || g.MemberId == 0 || len(g.ClientUrls) > 16 || len(g.Name) > 256 {
		return nil, status.Error(codes.InvalidArgument, "tessera: a gateway registration needs a member ID, a name of at most 256 bytes and at most 16 client URLs")
	}
	if _, err := m.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_RegisterGateway{RegisterGateway: g}}); err != nil {
		return nil, toStatus(err)
	}
	return &metapb.RegisterGatewayResponse{}, nil
}

// ListGateways returns every registration after a ReadIndex of the meta
// shard (etcd's member list is linearizable).
func (m *metaService) ListGateways(ctx context.Context, _ *metapb.ListGatewaysRequest) (*metapb.ListGatewaysResponse, error) {
	rctx, cancel := m.r.withTimeout(ctx)
	defer cancel()
	v, err := m.r.nh.SyncRead(rctx, MetaShardID, metasm.GatewaysQuery{})
	if err != nil {
		return nil, toStatus(err)
	}
	return &metapb.ListGatewaysResponse{Gateways: v.([]*metapb.Gateway)}, nil
}
