package gateway

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/services/gateway/internal/fanout"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// adminServer is Tessera's Admin API (tessera shard list): root's once auth
// is on (the gate's default rule for calls it does not know).
type adminServer struct {
	adminpb.UnimplementedAdminServer
	fan    *fanout.Reader
	router *router.Router
}

// maxSplitKeyBytes bounds a split key: shard bounds are written with every
// entry's state record, so they stay short (Kubernetes prefixes are tens
// of bytes).
const maxSplitKeyBytes = 1024

// SplitShard splits the shard holding the key at it: the meta shard's
// stores drive the split, and the router learns both new descriptors.
func (a *adminServer) SplitShard(ctx context.Context, req *adminpb.SplitShardRequest) (*adminpb.SplitShardResponse, error) {
	switch {
	case len(req.SplitKey) == 0:
		return nil, status.Error(codes.InvalidArgument, "tessera: a split key is required")
	case len(req.SplitKey) > maxSplitKeyBytes:
		// Both bounds travel in every state record the shards write.
		return nil, status.Errorf(codes.InvalidArgument, "tessera: a split key is at most %d bytes", maxSplitKeyBytes)
	}
	var resp *metapb.SplitShardResponse
	err := a.router.Rerouting(ctx, func() error {
		shards, err := a.router.Shards(ctx, req.SplitKey, nil)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if len(shards) != 1 {
			return status.Errorf(codes.Unavailable, "tessera: no shard owns key %q", req.SplitKey)
		}
		d := shards[0]
		if string(d.StartKey) == string(req.SplitKey) {
			return status.Errorf(codes.AlreadyExists, "tessera: shard %d already starts at %q", d.Id, req.SplitKey)
		}
		return a.router.CallMeta(ctx, true, func(ctx context.Context, c metapb.MetaClient) (err error) {
			resp, err = c.SplitShard(ctx, &metapb.SplitShardRequest{ShardId: d.Id, Generation: d.Generation, SplitKey: req.SplitKey})
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	a.router.Install(resp.Left, resp.Right)
	_ = a.router.Refresh(ctx, time.Now())
	return &adminpb.SplitShardResponse{Left: resp.Left, Right: resp.Right}, nil
}

// ListShards describes every data shard, each after a ReadIndex (so a
// write acknowledged before the call shows in its revision).
func (a *adminServer) ListShards(ctx context.Context, _ *adminpb.ListShardsRequest) (*adminpb.ListShardsResponse, error) {
	shards, states, err := a.fan.States(ctx, true)
	if err != nil {
		return nil, err
	}
	sizes := a.shardSizes(ctx)
	resp := &adminpb.ListShardsResponse{}
	for i, d := range shards {
		st := states[i]
		size := sizes[[2]uint64{st.LeaderStoreId, d.Id}]
		if size == 0 {
			size = sizes[[2]uint64{0, d.Id}]
		}
		resp.Shards = append(resp.Shards, &adminpb.ShardStatus{Shard: d, LeaderStoreId: st.LeaderStoreId,
			Revision: st.Revision, ClosedRevision: st.ClosedRevision, CompactRevision: st.CompactRevision, RaftTerm: st.RaftTerm,
			ApproximateBytes: size})
		resp.Revision = max(resp.Revision, st.Revision)
	}
	return resp, nil
}

// shardSizes are the shard sizes the stores last reported to the meta
// leader, by (store, shard) and, under store 0, the largest report of
// each shard (nil if the meta leader cannot say within a second).
func (a *adminServer) shardSizes(ctx context.Context) map[[2]uint64]int64 {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	stores, err := a.router.Stores(ctx)
	if err != nil {
		return nil
	}
	out := map[[2]uint64]int64{}
	for _, st := range stores {
		for id, n := range st.ShardBytes {
			out[[2]uint64{st.Store.GetId(), id}] = n
			out[[2]uint64{0, id}] = max(out[[2]uint64{0, id}], n)
		}
	}
	return out
}

// ListStores is the meta leader's view of every store: liveness, labels,
// the shards each holds and leads.
func (a *adminServer) ListStores(ctx context.Context, _ *adminpb.ListStoresRequest) (*adminpb.ListStoresResponse, error) {
	stores, err := a.router.Stores(ctx)
	if err != nil {
		return nil, err
	}
	return &adminpb.ListStoresResponse{Stores: stores}, nil
}
