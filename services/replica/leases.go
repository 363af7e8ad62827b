package replica

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lni/dragonboat/v4"
	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/retry"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/datasm"
	"github.com/tessera-kv/tessera/services/replica/internal/lessor"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
)

// leaseStore is the lessor's replicated side: the meta shard's log for
// grants and drops, and the data shards' leaders for key deletion.
type leaseStore struct {
	r *Replica
	*metaLog
}

var _ lessor.Store = leaseStore{}

func (s leaseStore) Leases(ctx context.Context) (map[int64]lessor.Lease, error) {
	ctx, cancel := s.r.withTimeout(ctx)
	defer cancel()
	v, err := s.r.nh.SyncRead(ctx, MetaShardID, metasm.StateQuery{})
	if err != nil {
		return nil, err
	}
	out := map[int64]lessor.Lease{}
	for id, l := range v.(*metapb.MetaState).Leases {
		out[id] = lessor.Lease{TTL: l.Ttl, Epoch: l.Epoch, Revoking: l.Revoking, Remaining: l.RemainingTtl}
	}
	return out, nil
}

func (s leaseStore) Grant(ctx context.Context, id, ttl int64) (int64, uint64, error) {
	if s.r.refusesPuts() {
		return 0, 0, rpctypes.ErrGRPCNoSpace // etcd's quota covers lease grants too
	}
	res, err := s.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_GrantLease{GrantLease: &raftcmdpb.GrantLease{Id: id, Ttl: ttl}}})
	if err != nil {
		return 0, 0, err
	}
	if len(res.Data) != 8 {
		return 0, 0, fmt.Errorf("replica: lease grant result without its epoch")
	}
	return int64(res.Value), binary.BigEndian.Uint64(res.Data), nil
}

func (s leaseStore) StartRevoke(ctx context.Context, ids []int64) error {
	_, err := s.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_StartRevoke{StartRevoke: &raftcmdpb.StartRevoke{Ids: ids}}})
	return err
}

func (s leaseStore) Drop(ctx context.Context, ids []int64) error {
	_, err := s.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_DropLease{DropLease: &raftcmdpb.DropLease{Ids: ids}}})
	return err
}

func (s leaseStore) Checkpoint(ctx context.Context, ids, remaining []int64) error {
	_, err := s.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_CheckpointLeases{
		CheckpointLeases: &raftcmdpb.CheckpointLeases{Ids: ids, RemainingTtls: remaining}}})
	return err
}

// DeleteKeys revokes the leases on every data shard, through each shard's
// leader (one revision per shard); each shard then refuses puts to them at
// these epochs.
func (s leaseStore) DeleteKeys(ctx context.Context, ids []int64, epochs []uint64) (int64, error) {
	st, err := s.r.metaState()
	if err != nil {
		return 0, err
	}
	var rev int64
	queue := append([]*metapb.ShardDescriptor(nil), st.ShardMap.Shards...)
	seen := map[uint64]bool{}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if seen[d.Id] {
			continue
		}
		seen[d.Id] = true
		var resp *shardpb.RevokeLeaseResponse
		err := s.r.callShardLeader(ctx, d.Id, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			resp, err = c.RevokeLease(ctx, &shardpb.RevokeLeaseRequest{ShardId: d.Id, LeaseIds: ids, Epochs: epochs})
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("replica: revoke %d lease(s) on shard %d: %w", len(ids), d.Id, err)
		}
		rev = max(rev, resp.Revision)
		queue = append(queue, resp.Splits...)
	}
	return rev, nil
}

// proposeMeta proposes a meta command and returns its result. While
// the meta shard has no leader (just after start, during an election) the
// proposal is not taken at all, so it is tried again until the timeout.
func (r *Replica) proposeMeta(ctx context.Context, cmd *raftcmdpb.MetaCommand) (sm.Result, error) {
	b, err := proto.Marshal(cmd)
	if err != nil {
		return sm.Result{}, err
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	for {
		res, err := r.nh.SyncPropose(ctx, r.nh.GetNoOPSession(MetaShardID), b)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, dragonboat.ErrShardNotReady) && !errors.Is(err, dragonboat.ErrSystemBusy) {
			return sm.Result{}, err
		}
		if serr := retry.Sleep(ctx, electionBackoff(r.cfg)/4); serr != nil {
			return sm.Result{}, err
		}
	}
}

// callShardLeader calls fn on the store leading shardID (see callLeader).
func (r *Replica) callShardLeader(ctx context.Context, shardID uint64, fn func(context.Context, shardpb.ShardClient) error) error {
	return r.callLeader(ctx, shardID, func(ctx context.Context, c grpc.ClientConnInterface) error { return fn(ctx, shardpb.NewShardClient(c)) })
}

// callMetaLeader calls fn on the meta shard's leader.
func (r *Replica) callMetaLeader(ctx context.Context, fn func(context.Context, metapb.MetaClient) error) error {
	return r.callLeader(ctx, MetaShardID, func(ctx context.Context, c grpc.ClientConnInterface) error { return fn(ctx, metapb.NewMetaClient(c)) })
}

// callLeader calls fn on the store leading shardID: the one leaderHint
// names, else each store holding the shard in turn, following NotLeader
// answers, for a few rounds.
func (r *Replica) callLeader(ctx context.Context, shardID uint64, fn func(context.Context, grpc.ClientConnInterface) error) error {
	var lastErr error
	target := r.leaderHint(shardID)
	for attempt := 0; attempt < 10; attempt++ {
		if target == 0 {
			if rs := r.replicasOf(shardID); len(rs) > 0 {
				target = rs[attempt%len(rs)]
			}
		}
		addr := r.storeAddress(target)
		if target == 0 || addr == "" {
			lastErr = rpctypes.ErrGRPCNoLeader
		} else if conn, err := r.revs.conn(addr); err != nil {
			lastErr = err
		} else if lastErr = fn(ctx, conn); lastErr == nil {
			return nil
		} else if c := status.Code(lastErr); c != codes.Unavailable && !(c == codes.DeadlineExceeded && ctx.Err() == nil) {
			return lastErr
		}
		next := followNotLeader(lastErr)
		if next == 0 || next == target {
			// No better idea, or the named leader is not serving yet:
			// give an election a moment.
			if err := retry.Sleep(ctx, electionBackoff(r.cfg)); err != nil {
				return err
			}
			if next == 0 {
				next = r.leaderHint(shardID)
			}
		}
		target = next
	}
	return lastErr
}

// RevokeLease deletes the shard's keys of leases through the shard's log.
func (s *shardService) RevokeLease(ctx context.Context, req *shardpb.RevokeLeaseRequest) (*shardpb.RevokeLeaseResponse, error) {
	ds, err := s.lookup(req.ShardId)
	if err != nil {
		return nil, err
	}
	if _, err := s.r.requireLeader(req.ShardId); err != nil {
		return nil, err
	}
	res, err := ds.seq.Submit(ctx, &raftcmdpb.DataCommand{Op: &raftcmdpb.DataCommand_RevokeLease{RevokeLease: &raftcmdpb.RevokeLease{LeaseIds: req.LeaseIds, Epochs: req.Epochs}}})
	if err != nil {
		return nil, s.submitErr(req.ShardId, err)
	}
	if err := resultErr(res); err != nil {
		return nil, err
	}
	out := &shardpb.RevokeLeaseResponse{Revision: res.Revision}
	var tr pb.TxnResponse
	if err := proto.Unmarshal(res.TxnResponse, &tr); err == nil && len(tr.Responses) == 1 {
		out.Deleted = tr.Responses[0].GetResponseDeleteRange().GetDeleted()
	}
	if descs := s.r.descriptorsOf(req.ShardId); len(descs) > 1 {
		out.Splits = descs[1:]
	}
	return out, nil
}

// LeaseKeys lists the shard's keys of a lease after a ReadIndex.
func (s *shardService) LeaseKeys(ctx context.Context, req *shardpb.LeaseKeysRequest) (*shardpb.LeaseKeysResponse, error) {
	if _, err := s.lookup(req.ShardId); err != nil {
		return nil, err
	}
	rctx, cancel := s.r.withTimeout(ctx)
	defer cancel()
	v, err := s.r.nh.SyncRead(rctx, req.ShardId, datasm.LeaseKeysQuery{Lease: req.LeaseId})
	if err != nil {
		return nil, toStatus(err)
	}
	return &shardpb.LeaseKeysResponse{Keys: v.([][]byte)}, nil
}

// Lease serves etcd's lease calls on the meta leader.
func (m *metaService) Lease(ctx context.Context, req *metapb.LeaseRequest) (*metapb.LeaseResponse, error) {
	resp, err := m.lease(ctx, req)
	if err != nil {
		return nil, m.leaseErr(err)
	}
	out := &metapb.LeaseResponse{}
	if e, ok := resp.(epochOf); ok {
		resp, out.Epoch = e.Message, e.epoch
	}
	if out.Response, err = proto.Marshal(resp); err != nil {
		return nil, err
	}
	return out, nil
}

// epochOf is an answer about a lease with the lease's epoch beside it.
type epochOf struct {
	proto.Message
	epoch uint64
}

func (m *metaService) lease(ctx context.Context, req *metapb.LeaseRequest) (proto.Message, error) {
	l := m.r.lessor
	hdr := func(rev int64) *pb.ResponseHeader {
		if rev == 0 {
			rev = m.r.currentRevision()
		}
		return &pb.ResponseHeader{Revision: rev}
	}
	switch op := req.Op.(type) {
	case *metapb.LeaseRequest_Grant:
		var r pb.LeaseGrantRequest
		if err := proto.Unmarshal(op.Grant, &r); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		id, ttl, err := l.Grant(ctx, r.ID, r.TTL)
		if err != nil {
			return nil, err
		}
		return &pb.LeaseGrantResponse{Header: hdr(0), ID: id, TTL: ttl}, nil
	case *metapb.LeaseRequest_Revoke:
		var r pb.LeaseRevokeRequest
		if err := proto.Unmarshal(op.Revoke, &r); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		rev, err := l.Revoke(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		return &pb.LeaseRevokeResponse{Header: hdr(rev)}, nil
	case *metapb.LeaseRequest_KeepAlive:
		var r pb.LeaseKeepAliveRequest
		if err := proto.Unmarshal(op.KeepAlive, &r); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		ttl, err := l.KeepAlive(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		return &pb.LeaseKeepAliveResponse{Header: hdr(0), ID: r.ID, TTL: ttl}, nil
	case *metapb.LeaseRequest_TimeToLive:
		var r pb.LeaseTimeToLiveRequest
		if err := proto.Unmarshal(op.TimeToLive, &r); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		granted, left, epoch, err := l.TimeToLive(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		return epochOf{&pb.LeaseTimeToLiveResponse{Header: hdr(0), ID: r.ID, TTL: left, GrantedTTL: granted}, epoch}, nil
	case *metapb.LeaseRequest_Leases:
		ids, err := l.Leases(ctx)
		if err != nil {
			return nil, err
		}
		out := &pb.LeaseLeasesResponse{Header: hdr(0)}
		for _, id := range ids {
			out.Leases = append(out.Leases, &pb.LeaseStatus{ID: id})
		}
		return out, nil
	}
	return nil, status.Error(codes.InvalidArgument, "tessera: empty lease request")
}

func (m *metaService) leaseErr(err error) error {
	switch {
	case errors.Is(err, lessor.ErrNotLeader):
		return m.r.notLeader(MetaShardID, m.r.LeaderOf(MetaShardID))
	case errors.Is(err, lessor.ErrNotFound):
		return rpctypes.ErrGRPCLeaseNotFound
	case errors.Is(err, lessor.ErrExists):
		return rpctypes.ErrGRPCLeaseExist
	case errors.Is(err, lessor.ErrTTLTooLarge):
		return rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	return toStatus(err)
}

// currentRevision is the highest applied revision of the data shards held
// here (what etcd puts in lease responses' headers).
func (r *Replica) currentRevision() int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var rev int64
	for _, ds := range r.shards {
		if sh := ds.shard(); sh != nil {
			rev = max(rev, sh.State().Revision)
		}
	}
	return rev
}
