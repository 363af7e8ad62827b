package replica

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/shardpb"
)

// maintenanceGate lets one expensive maintenance call (defragment, backup,
// hash) run at a time on a store: each reads or rewrites the whole store,
// Badger's Flatten and value-log GC are not meant to run twice at once, and
// a client looping them must not starve the store. A call waits its turn as
// long as its context lets it.
type maintenanceGate chan struct{}

func newMaintenanceGate() maintenanceGate { return make(maintenanceGate, 1) }

// enter waits for the gate; the returned func leaves it.
func (g maintenanceGate) enter(ctx context.Context, store uint64, what string) (func(), error) {
	select {
	case g <- struct{}{}:
		return func() { <-g }, nil
	case <-ctx.Done():
		return nil, status.Errorf(status.FromContextError(ctx.Err()).Code(),
			"tessera: %s on store %d gave up waiting for another defragment, snapshot or hash to finish", what, store)
	}
}

// HashKV hashes this replica's copy of the shard from its applied state.
func (s *shardService) HashKV(ctx context.Context, req *shardpb.HashKVRequest) (*shardpb.HashKVResponse, error) {
	sh, err := s.openShard(req.ShardId)
	if err != nil {
		return nil, err
	}
	leave, err := s.r.maintenance.enter(ctx, s.r.cfg.StoreID, "HashKV")
	if err != nil {
		return nil, err
	}
	defer leave()
	h, compacted, rev, err := sh.HashKV(req.Revision)
	if err != nil {
		return nil, toStatus(err)
	}
	return &shardpb.HashKVResponse{Hash: h, CompactRevision: compacted, HashRevision: rev}, nil
}

// Defragment compacts this store's Badger files.
func (s *shardService) Defragment(ctx context.Context, _ *shardpb.DefragmentRequest) (*shardpb.DefragmentResponse, error) {
	leave, err := s.r.maintenance.enter(ctx, s.r.cfg.StoreID, "Defragment")
	if err != nil {
		return nil, err
	}
	defer leave()
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
