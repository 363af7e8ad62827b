package gateway

import (
	"context"

	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/fanout"
)

// adminServer is Tessera's Admin API (tessera shard list): root's once auth
// is on (the gate's default rule for calls it does not know).
type adminServer struct {
	adminpb.UnimplementedAdminServer
	fan *fanout.Reader
}

// ListShards describes every data shard, each after a ReadIndex (so a
// write acknowledged before the call shows in its revision).
func (a *adminServer) ListShards(ctx context.Context, _ *adminpb.ListShardsRequest) (*adminpb.ListShardsResponse, error) {
	shards, states, err := a.fan.States(ctx, true)
	if err != nil {
		return nil, err
	}
	resp := &adminpb.ListShardsResponse{}
	for i, d := range shards {
		st := states[i]
		resp.Shards = append(resp.Shards, &adminpb.ShardStatus{Shard: d, LeaderStoreId: st.LeaderStoreId,
			Revision: st.Revision, ClosedRevision: st.ClosedRevision, CompactRevision: st.CompactRevision, RaftTerm: st.RaftTerm})
		resp.Revision = max(resp.Revision, st.Revision)
	}
	return resp, nil
}
