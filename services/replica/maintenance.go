package replica

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/shardpb"
)

// HashKV hashes this replica's copy of the shard from its applied state.
func (s *shardService) HashKV(_ context.Context, req *shardpb.HashKVRequest) (*shardpb.HashKVResponse, error) {
	sh, err := s.openShard(req.ShardId)
	if err != nil {
		return nil, err
	}
	h, compacted, rev, err := sh.HashKV(req.Revision)
	if err != nil {
		return nil, toStatus(err)
	}
	return &shardpb.HashKVResponse{Hash: h, CompactRevision: compacted, HashRevision: rev}, nil
}

// Defragment compacts this store's Badger files.
func (s *shardService) Defragment(context.Context, *shardpb.DefragmentRequest) (*shardpb.DefragmentResponse, error) {
	before, after, err := s.r.store.Defragment()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "tessera: defragment store %d: %v", s.r.cfg.StoreID, err)
	}
	s.r.log.Info("defragmented", "before", before, "after", after)
	return &shardpb.DefragmentResponse{SizeBefore: before, SizeAfter: after}, nil
}

// TransferLeader hands a shard's leadership to another replica; it must
// reach the current leader.
func (s *shardService) TransferLeader(_ context.Context, req *shardpb.TransferLeaderRequest) (*shardpb.TransferLeaderResponse, error) {
	if _, err := s.r.requireLeader(req.ShardId); err != nil {
		return nil, err
	}
	if err := s.r.nh.RequestLeaderTransfer(req.ShardId, req.TargetStoreId); err != nil {
		return nil, toStatus(err)
	}
	return &shardpb.TransferLeaderResponse{}, nil
}
