package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/datasm"
	"github.com/tessera-kv/tessera/services/replica/internal/sequencer"
	"github.com/tessera-kv/tessera/services/replica/internal/tso"
)

// shardService serves the Shard API for the data shards held here. Requests
// are validated by the gateway; what arrives here is routed and applied.
type shardService struct {
	shardpb.UnsafeShardServer
	r *Replica
}

var _ shardpb.ShardServer = (*shardService)(nil)

func (s *shardService) lookup(id uint64) (*dataShard, error) {
	ds, ok := s.r.dataShard(id)
	if !ok {
		// Not here (placed elsewhere, or the child of a split not started
		// here yet): nothing was done, so the caller asks another store,
		// the leader if known.
		return nil, s.r.notLeader(id, s.r.leaderHint(id))
	}
	return ds, nil
}

// openShard returns the shard's MVCC view once its state machine is open.
func (s *shardService) openShard(id uint64) (*mvcc.Shard, error) {
	ds, err := s.lookup(id)
	if err != nil {
		return nil, err
	}
	sh := ds.shard()
	if sh == nil {
		return nil, status.Errorf(codes.Unavailable, "tessera: shard %d not open yet", id)
	}
	return sh, nil
}

// Range answers a linearizable read with a Raft ReadIndex read (at the
// shard's applied revision) and a serializable one from local state.
func (s *shardService) Range(ctx context.Context, req *shardpb.RangeRequest) (*shardpb.RangeResponse, error) {
	if _, err := s.lookup(req.ShardId); err != nil {
		return nil, err
	}
	rr := &pb.RangeRequest{}
	if err := proto.Unmarshal(req.Request, rr); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: bad range request: %v", err)
	}
	serializable := rr.Serializable
	if req.ClosedRead {
		// Closing the revision made it readable on the leader; a read
		// there needs no ReadIndex (the revision is in the past).
		if err := s.closeRevision(ctx, req.ShardId, rr.Revision); err != nil {
			return nil, err
		}
		serializable = true
	}
	b, term, err := s.read(ctx, req.ShardId, serializable, datasm.RangeQuery{Request: rr, Closed: req.ClosedRead, Generation: req.Generation})
	if err != nil {
		return nil, err
	}
	return &shardpb.RangeResponse{Response: b, RaftTerm: term}, nil
}

// errReadIndexStalled: a ReadIndex did not confirm within its patience
// (it was in flight on a leader that stepped down or handed off, and
// dragonboat never answers those) or was dropped (a new leader not ready):
// nothing was read, so the caller asks again, elsewhere if need be.
var errReadIndexStalled = errors.New("replica: read index not confirmed")

// linearizableRead is dragonboat's SyncRead with the ReadIndex, not the
// query after it, bounded by two election timeouts (at least a second): a
// read must not wait out its caller's whole deadline on a leadership
// that moved, while a long query (a large range) still runs to its end.
func (s *shardService) linearizableRead(ctx context.Context, shardID uint64, q any) (any, error) {
	patience := max(2*electionTimeout(s.r.cfg), time.Second)
	if d, ok := ctx.Deadline(); ok {
		patience = min(patience, time.Until(d))
	}
	if patience < 2*time.Duration(s.r.cfg.RTTMillisecond)*time.Millisecond {
		return nil, dragonboat.ErrTimeoutTooSmall
	}
	rs, err := s.r.nh.ReadIndex(shardID, patience)
	if err != nil {
		return nil, err
	}
	select {
	case res := <-rs.ResultC():
		switch {
		case res.Completed():
			v, err := s.r.nh.ReadLocalNode(rs, q)
			rs.Release()
			return v, err
		case res.Timeout() && ctx.Err() == nil, res.Dropped():
			return nil, errReadIndexStalled
		case res.Terminated():
			return nil, dragonboat.ErrShardClosed
		}
		return nil, dragonboat.ErrTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// read runs a query on the shard's state machine: a Raft ReadIndex read, or
// the local state when serializable. It returns the marshalled answer and
// the shard's Raft term.
func (s *shardService) read(ctx context.Context, shardID uint64, serializable bool, q any) ([]byte, uint64, error) {
	var (
		v   any
		err error
	)
	if serializable {
		v, err = s.r.nh.StaleRead(shardID, q)
	} else {
		rctx, cancel := s.r.withTimeout(ctx)
		v, err = s.linearizableRead(rctx, shardID, q)
		cancel()
	}
	if errors.Is(err, mvcc.ErrWrongShard) {
		return nil, 0, s.r.wrongShard(shardID, err.Error())
	}
	if errors.Is(err, errReadIndexStalled) {
		return nil, 0, s.r.notLeader(shardID, s.r.LeaderOf(shardID))
	}
	if err != nil {
		return nil, 0, toStatus(err)
	}
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, 0, err
	}
	_, term, _, _ := s.r.nh.GetLeaderID(shardID)
	return b, term, nil
}

// Txn sequences a write on the shard leader.
func (s *shardService) Txn(ctx context.Context, req *shardpb.TxnRequest) (*shardpb.TxnResponse, error) {
	ds, err := s.lookup(req.ShardId)
	if err != nil {
		return nil, err
	}
	if req.ReadOnly {
		return s.readTxn(ctx, req)
	}
	if req.Puts && s.r.refusesPuts() {
		return nil, rpctypes.ErrGRPCNoSpace
	}
	term, err := s.r.requireLeader(req.ShardId)
	if err != nil {
		return nil, err
	}
	// The sequencer fills in the entry's revision (the last it tried).
	cmd := &raftcmdpb.DataCommand{Op: &raftcmdpb.DataCommand_Txn{Txn: req.Request}, LeaseEpochs: req.LeaseEpochs, Generation: req.Generation}
	res, err := s.submit(ctx, ds, req.ShardId, cmd)
	if err != nil {
		return nil, err
	}
	return &shardpb.TxnResponse{Response: res.TxnResponse, RaftTerm: term, EntryRevision: cmd.Revision}, nil
}

func (s *shardService) readTxn(ctx context.Context, req *shardpb.TxnRequest) (*shardpb.TxnResponse, error) {
	tr := &pb.TxnRequest{}
	if err := proto.Unmarshal(req.Request, tr); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: bad txn request: %v", err)
	}
	serializable := req.Serializable
	if req.ReadAt > 0 {
		if err := s.closeRevision(ctx, req.ShardId, req.ReadAt); err != nil {
			return nil, err
		}
		serializable = true // a past revision, closed here
	}
	b, term, err := s.read(ctx, req.ShardId, serializable, datasm.TxnQuery{Request: tr, At: req.ReadAt, Generation: req.Generation})
	if err != nil {
		return nil, err
	}
	return &shardpb.TxnResponse{Response: b, RaftTerm: term}, nil
}

// submit sequences an entry on the shard's leader and maps a refused one
// to its error: WrongShard for an entry routed by a stale generation.
func (s *shardService) submit(ctx context.Context, ds *dataShard, shardID uint64, cmd *raftcmdpb.DataCommand) (*raftcmdpb.DataResult, error) {
	res, err := ds.seq.Submit(ctx, cmd)
	if err != nil {
		return nil, s.submitErr(shardID, err)
	}
	if res.Code == raftcmdpb.DataResult_CODE_WRONG_SHARD {
		return nil, s.r.wrongShard(shardID, res.Message)
	}
	if err := resultErr(res); err != nil {
		return nil, err
	}
	return res, nil
}

// submitErr maps a sequencer error. ErrUnavailable means nothing was
// proposed (no revisions, or the entry was dropped before the log took it),
// so the gateway may safely try again: it gets a NotLeader answer.
func (s *shardService) submitErr(shardID uint64, err error) error {
	// ErrShardNotFound: the shard's replica is not started here yet (the
	// child of a split this store just applied); nothing was proposed.
	if errors.Is(err, sequencer.ErrUnavailable) || errors.Is(err, dragonboat.ErrShardNotFound) {
		return s.r.notLeader(shardID, s.r.LeaderOf(shardID))
	}
	return toStatus(err)
}

// Compact applies a compaction through the shard's log.
func (s *shardService) Compact(ctx context.Context, req *shardpb.CompactRequest) (*shardpb.CompactResponse, error) {
	ds, err := s.lookup(req.ShardId)
	if err != nil {
		return nil, err
	}
	term, err := s.r.requireLeader(req.ShardId)
	if err != nil {
		return nil, err
	}
	res, err := s.r.compact(ctx, ds, req.ShardId, req.Revision, req.ClusterChecked)
	if res == nil && err != nil {
		return nil, s.submitErr(req.ShardId, err)
	}
	if err != nil {
		return nil, err
	}
	return &shardpb.CompactResponse{Revision: res.Revision, RaftTerm: term}, nil
}

// compact proposes a shard's compaction at rev (checked against the
// cluster's revision by the caller).
func (r *Replica) compact(ctx context.Context, ds *dataShard, shardID uint64, rev int64, clusterChecked bool) (*raftcmdpb.DataResult, error) {
	res, err := ds.seq.Submit(ctx, &raftcmdpb.DataCommand{Op: &raftcmdpb.DataCommand_Compact{Compact: &raftcmdpb.Compact{Revision: rev, ClusterChecked: clusterChecked}}})
	if err != nil {
		return nil, err
	}
	return res, resultErr(res)
}

// Compact records the cluster's compaction revision through the meta
// log; etcd's ErrCompacted at or below the one recorded.
func (m *metaService) Compact(ctx context.Context, req *metapb.CompactRequest) (*metapb.CompactResponse, error) {
	if req.Revision <= 0 {
		return nil, status.Error(codes.InvalidArgument, "tessera: a compaction needs a revision")
	}
	res, err := m.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_CompactCluster{CompactCluster: &raftcmdpb.CompactCluster{Revision: req.Revision}}})
	if err != nil {
		return nil, toStatus(err)
	}
	if res.Value == 0 {
		return nil, rpctypes.ErrGRPCCompacted
	}
	return &metapb.CompactResponse{}, nil
}

// Status reports this replica's view of a shard.
func (s *shardService) Status(ctx context.Context, req *shardpb.StatusRequest) (*shardpb.StatusResponse, error) {
	sh, err := s.openShard(req.ShardId)
	if err != nil {
		return nil, err
	}
	st := sh.State()
	if req.Linearizable {
		rctx, cancel := s.r.withTimeout(ctx)
		v, err := s.r.nh.SyncRead(rctx, req.ShardId, datasm.StateQuery{})
		cancel()
		if err != nil {
			return nil, toStatus(err)
		}
		st = v.(mvcc.State)
	}
	leader, term, valid, _ := s.r.nh.GetLeaderID(req.ShardId)
	if !valid {
		leader = 0
	}
	return &shardpb.StatusResponse{LeaderStoreId: leader, RaftTerm: term, AppliedRevision: st.Revision,
		CompactRevision: st.CompactRevision, AppliedIndex: st.AppliedIndex, DbSize: s.r.used.bytes(time.Now()), Quota: s.r.cfg.QuotaBytes}, nil
}

// metaService serves the shard map and, on the meta leader, revisions.
type metaService struct {
	metapb.UnsafeMetaServer
	r *Replica
}

var _ metapb.MetaServer = (*metaService)(nil)

func (m *metaService) GetShardMap(context.Context, *metapb.GetShardMapRequest) (*metapb.GetShardMapResponse, error) {
	st, err := m.r.metaState()
	if err != nil {
		return nil, toStatus(err)
	}
	leaders := map[uint64]uint64{MetaShardID: m.r.LeaderOf(MetaShardID)}
	for _, d := range st.ShardMap.Shards {
		leaders[d.Id] = m.r.leaderHint(d.Id)
	}
	return &metapb.GetShardMapResponse{ShardMap: st.ShardMap, Leaders: leaders}, nil
}

func (m *metaService) AllocateRevisions(ctx context.Context, req *metapb.AllocateRevisionsRequest) (*metapb.AllocateRevisionsResponse, error) {
	// A count of 0 serves nothing: the answer is the next revision the
	// oracle will serve (every revision served so far is below it).
	if req.Count > 1<<16 {
		return nil, status.Errorf(codes.InvalidArgument, "tessera: cannot allocate %d revisions", req.Count)
	}
	first, err := m.r.oracle.Allocate(ctx, int64(req.Count))
	if errors.Is(err, tso.ErrNotLeader) {
		return nil, m.r.notLeader(MetaShardID, m.r.LeaderOf(MetaShardID))
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &metapb.AllocateRevisionsResponse{First: first, Count: req.Count}, nil
}

// ShardState returns the local state of a data shard (tests and admin).
func (r *Replica) ShardState(id uint64) (mvcc.State, error) {
	ds, ok := r.dataShard(id)
	if !ok || ds.shard() == nil {
		return mvcc.State{}, fmt.Errorf("replica: shard %d not open here", id)
	}
	return ds.shard().State(), nil
}
