package replica

import (
	"context"
	"errors"
	"time"

	"github.com/lni/dragonboat/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/sequencer"
)

// toStatus maps an internal error to the gRPC status a gateway passes on:
// etcd's own errors where etcd has one.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mvcc.ErrCompacted):
		return rpctypes.ErrGRPCCompacted
	case errors.Is(err, mvcc.ErrFutureRev):
		return rpctypes.ErrGRPCFutureRev
	case errors.Is(err, mvcc.ErrKeyNotFound):
		return rpctypes.ErrGRPCKeyNotFound
	case errors.Is(err, sequencer.ErrTimeout), errors.Is(err, dragonboat.ErrTimeout), errors.Is(err, dragonboat.ErrTimeoutTooSmall),
		errors.Is(err, sequencer.ErrIndeterminate), errors.Is(err, dragonboat.ErrAborted):
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, dragonboat.ErrPayloadTooBig):
		return rpctypes.ErrGRPCRequestTooLarge
	case errors.Is(err, sequencer.ErrBusy), errors.Is(err, dragonboat.ErrSystemBusy):
		return rpctypes.ErrGRPCRequestTooManyRequests
	case errors.Is(err, mvcc.ErrStateGone):
		return status.Error(codes.Unavailable, "tessera: this replica no longer has the shard's state at that revision (it installed a snapshot since); ask another")
	case errors.Is(err, dragonboat.ErrShardNotFound):
		return status.Error(codes.Unavailable, "tessera: the shard's replica is not started on this store yet; ask another")
	case errors.Is(err, mvcc.ErrRestoring):
		return status.Error(codes.Unavailable, "tessera: replica is installing a snapshot of the shard; ask another")
	case errors.Is(err, sequencer.ErrUnavailable), errors.Is(err, dragonboat.ErrShardNotReady),
		errors.Is(err, sequencer.ErrStopped),
		errors.Is(err, dragonboat.ErrShardClosed), errors.Is(err, dragonboat.ErrClosed):
		return rpctypes.ErrGRPCNoLeader
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

// resultErr maps a state machine result code to an error.
func resultErr(res *raftcmdpb.DataResult) error {
	switch res.Code {
	case raftcmdpb.DataResult_CODE_OK:
		return nil
	case raftcmdpb.DataResult_CODE_COMPACTED:
		return rpctypes.ErrGRPCCompacted
	case raftcmdpb.DataResult_CODE_FUTURE_REVISION:
		return rpctypes.ErrGRPCFutureRev
	case raftcmdpb.DataResult_CODE_KEY_NOT_FOUND:
		return rpctypes.ErrGRPCKeyNotFound
	case raftcmdpb.DataResult_CODE_LEASE_NOT_FOUND:
		return rpctypes.ErrGRPCLeaseNotFound
	case raftcmdpb.DataResult_CODE_TOO_LARGE:
		return status.Errorf(codes.InvalidArgument, "etcdserver: key is too large (max %d bytes)", mvcc.MaxKeyBytes)
	}
	return status.Errorf(codes.InvalidArgument, "tessera: entry rejected: %s %s", res.Code, res.Message)
}

// notLeader builds the routing error a gateway uses to find the leader.
func (r *Replica) notLeader(shardID, leader uint64) error {
	st := status.New(codes.Unavailable, "etcdserver: not leader")
	if leader == 0 {
		st = status.New(codes.Unavailable, "etcdserver: no leader")
	}
	d, err := st.WithDetails(&shardpb.NotLeader{ShardId: shardID, LeaderStoreId: leader, LeaderApiAddress: r.storeAddress(leader)})
	if err != nil {
		return st.Err()
	}
	return d.Err()
}

// requireLeader returns the shard's Raft term if this store leads it.
func (r *Replica) requireLeader(shardID uint64) (uint64, error) {
	id, term, valid, err := r.nh.GetLeaderID(shardID)
	if errors.Is(err, dragonboat.ErrShardNotFound) {
		// Not started here yet (the child of a split just applied):
		// nothing was proposed, so the gateway tries again.
		return 0, r.notLeader(shardID, 0)
	}
	if err != nil {
		return 0, toStatus(err)
	}
	if !valid || id != r.cfg.StoreID {
		if !valid {
			id = 0
		}
		return 0, r.notLeader(shardID, id)
	}
	return term, nil
}

func electionBackoff(c Config) time.Duration { return electionTimeout(c) / 2 }

// electionTimeout is the Raft election timeout of every shard.
func electionTimeout(c Config) time.Duration {
	return time.Duration(c.RTTMillisecond*c.ElectionRTT) * time.Millisecond
}
