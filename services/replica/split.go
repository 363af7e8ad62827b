package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lni/dragonboat/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/pkg/retry"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/datasm"
	"github.com/tessera-kv/tessera/services/replica/internal/sequencer"
)

// A split runs in three steps, each safe to repeat:
//
//  1. the meta shard hands out the child's ID;
//  2. the parent shard applies a Split entry: from its revision on, the
//     parent owns the left half and the child (whose state record the
//     entry writes on every replica) the right; every store of the parent
//     then starts the child's Raft group over the same Badger keys;
//  3. the meta shard installs both descriptors, generation-checked.
//
// The parent's log is the authority: a request routed by the parent's old
// descriptor is refused with WrongShard and the descriptors the parent
// knows, so gateways route correctly before step 3 lands, and a split
// whose step 3 was lost is finished by the next request for it (or by
// repeating it).

// SplitShard splits a data shard at a key, driving the steps above from
// this store.
func (m *metaService) SplitShard(ctx context.Context, req *metapb.SplitShardRequest) (*metapb.SplitShardResponse, error) {
	st, err := m.r.metaState()
	if err != nil {
		return nil, toStatus(err)
	}
	var parent *metapb.ShardDescriptor
	for _, d := range st.ShardMap.Shards {
		if d.Id == req.ShardId {
			parent = d
		}
	}
	switch {
	case parent == nil:
		return nil, status.Errorf(codes.NotFound, "tessera: no data shard %d", req.ShardId)
	case req.Generation != 0 && req.Generation < parent.Generation:
		return nil, m.r.wrongShard(parent.Id, fmt.Sprintf("generation %d, not %d", parent.Generation, req.Generation))
	case !strictlyInside(req.SplitKey, parent):
		return nil, status.Errorf(codes.InvalidArgument, "tessera: split key %q is not strictly inside shard %d [%q, %q)", req.SplitKey, parent.Id, parent.StartKey, parent.EndKey)
	}
	res, err := m.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_AllocateShardId{AllocateShardId: &raftcmdpb.AllocateShardID{}}})
	if err != nil {
		return nil, toStatus(err)
	}
	if res.Value == 0 {
		return nil, status.Error(codes.Internal, "tessera: the meta shard allocated no shard ID")
	}
	var out *shardpb.SplitResponse
	err = m.r.callShardLeader(ctx, parent.Id, func(ctx context.Context, c shardpb.ShardClient) (err error) {
		// Bounded per store: a leader cut off from this store would hold
		// the call until the caller gives up, while a new one is elected
		// elsewhere. A repeat of a split that applied meanwhile returns
		// it again.
		ctx, cancel := context.WithTimeout(ctx, splitAttemptTimeout)
		defer cancel()
		// A caller that learned a newer generation from the shard itself
		// knows better than a meta map that has not recorded a split yet.
		out, err = c.Split(ctx, &shardpb.SplitRequest{ShardId: parent.Id, SplitKey: req.SplitKey, ChildId: res.Value, Generation: max(req.Generation, parent.Generation)})
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := m.r.installShards(ctx, out.Left, out.Right); err != nil {
		return nil, err
	}
	return &metapb.SplitShardResponse{Left: out.Left, Right: out.Right}, nil
}

// splitAttemptTimeout bounds one store's answer to a Split: the entry's
// proposal and the child's first election take well under a second.
const splitAttemptTimeout = 4 * time.Second

func strictlyInside(key []byte, d *metapb.ShardDescriptor) bool {
	return bytes.Compare(key, d.StartKey) > 0 && (len(d.EndKey) == 0 || bytes.Compare(key, d.EndKey) < 0)
}

// installShards records descriptors a data shard applied in the meta
// shard's map (step 3).
func (r *Replica) installShards(ctx context.Context, ds ...*metapb.ShardDescriptor) error {
	_, err := r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_UpdateShards{UpdateShards: &raftcmdpb.UpdateShards{Shards: ds}}})
	return toStatus(err)
}

// Split proposes the split entry on the parent's leader (step 2).
func (s *shardService) Split(ctx context.Context, req *shardpb.SplitRequest) (*shardpb.SplitResponse, error) {
	ds, err := s.lookup(req.ShardId)
	if err != nil {
		return nil, err
	}
	if _, err := s.r.requireLeader(req.ShardId); err != nil {
		return nil, err
	}
	replicas := s.r.replicasOf(req.ShardId)
	if len(replicas) == 0 {
		return nil, status.Errorf(codes.Unavailable, "tessera: the stores of shard %d are not known here yet; try again", req.ShardId)
	}
	cmd := &raftcmdpb.DataCommand{Op: &raftcmdpb.DataCommand_Split{Split: &raftcmdpb.Split{
		SplitKey: req.SplitKey, ChildId: req.ChildId, Generation: req.Generation, Replicas: childReplicas(replicas, req.ChildId)}}}
	if _, err := s.submit(ctx, ds, req.ShardId, cmd); err != nil {
		return nil, err
	}
	// Applied here (the proposal returns once it applied on this store).
	descs := s.r.descriptorsOf(req.ShardId)
	for _, d := range descs[1:] {
		if d.Id == req.ChildId {
			// Done once the child serves: its group has a leader.
			if err := s.r.awaitLeader(ctx, d.Id); err != nil {
				return nil, err
			}
			return &shardpb.SplitResponse{Left: descs[0], Right: d}, nil
		}
	}
	return nil, status.Errorf(codes.Internal, "tessera: shard %d applied the split but has no record of shard %d", req.ShardId, req.ChildId)
}

// awaitLeader waits, up to the proposal timeout, until a shard hosted
// here knows its leader.
func (r *Replica) awaitLeader(ctx context.Context, shardID uint64) error {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	for r.LeaderOf(shardID) == 0 {
		if err := retry.Sleep(ctx, 20*time.Millisecond); err != nil {
			return status.Errorf(codes.Unavailable, "tessera: shard %d has no leader yet: %v", shardID, err)
		}
	}
	return nil
}

// replicasOf lists the stores of a shard, its preferred leader first: as
// the local meta map has them; for a split's child the map lacks yet, its
// parent's rotated as the split entry had them (childReplicas); else this
// store's Raft view of the shard's members. The meta shard is on every
// store of the initial cluster.
func (r *Replica) replicasOf(shardID uint64) []uint64 {
	st, _ := r.metaState()
	return r.replicasIn(st, shardID)
}

// replicasIn is replicasOf from a meta state already read (nil: none).
func (r *Replica) replicasIn(st *metapb.MetaState, shardID uint64) []uint64 {
	return r.replicasFrom(st, shardID, 0)
}

func (r *Replica) replicasFrom(st *metapb.MetaState, shardID uint64, depth int) []uint64 {
	if shardID == MetaShardID {
		out := make([]uint64, len(r.cfg.Cluster))
		for i, m := range r.cfg.Cluster {
			out[i] = m.ID
		}
		return out
	}
	if st != nil {
		for _, d := range st.ShardMap.Shards {
			if d.Id == shardID {
				return append([]uint64(nil), d.Replicas...)
			}
		}
	}
	if ds, ok := r.dataShard(shardID); ok && ds.shard() != nil && depth < 64 {
		if p := ds.shard().Bounds().Parent; p != 0 && p != shardID {
			if rs := r.replicasFrom(st, p, depth+1); len(rs) > 0 {
				return childReplicas(rs, shardID)
			}
		}
	}
	return r.raftMembers(shardID)
}

// raftMembers is this store's view of a shard's Raft members, by ID (nil
// if the shard is not started here).
func (r *Replica) raftMembers(shardID uint64) []uint64 {
	info := r.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
	for _, si := range info.ShardInfoList {
		if si.ShardID == shardID {
			out := make([]uint64, 0, len(si.Replicas))
			for id := range si.Replicas {
				out = append(out, id)
			}
			slices.Sort(out)
			return out
		}
	}
	return nil
}

// descriptorsOf describes a shard as its local replica has applied it,
// then each shard split from it, in split order.
func (r *Replica) descriptorsOf(shardID uint64) []*metapb.ShardDescriptor {
	st, _ := r.metaState()
	return r.descriptorsIn(st, shardID)
}

// descriptorsIn is descriptorsOf with replicas from a meta state already
// read.
func (r *Replica) descriptorsIn(st *metapb.MetaState, shardID uint64) []*metapb.ShardDescriptor {
	ds, ok := r.dataShard(shardID)
	if !ok || ds.shard() == nil {
		return nil
	}
	sh := ds.shard()
	replicas := r.replicasIn(st, shardID)
	out := []*metapb.ShardDescriptor{descriptor(shardID, sh.Bounds(), replicas)}
	splits, err := sh.Splits(0)
	if err != nil {
		r.log.Warn("read split records", "shard", shardID, "err", err)
	}
	for _, sp := range splits {
		out = append(out, descriptor(sp.ChildID, sp.Child, childReplicas(replicas, sp.ChildID)))
	}
	return out
}

func descriptor(id uint64, b mvcc.Bounds, replicas []uint64) *metapb.ShardDescriptor {
	return &metapb.ShardDescriptor{Id: id, StartKey: b.Start, EndKey: b.End, Generation: b.Generation,
		Replicas: replicas, SplitRevision: b.SplitRevision, ParentId: b.Parent}
}

// wrongShard is the routing error for a request routed by a stale
// descriptor: it carries what this store knows of the shard and the shards
// split from it.
func (r *Replica) wrongShard(shardID uint64, msg string) error {
	st := status.Newf(codes.FailedPrecondition, "tessera: shard %d changed since the request was routed (%s); route it again", shardID, msg)
	d, err := st.WithDetails(&shardpb.WrongShard{Descriptors: r.descriptorsOf(shardID)})
	if err != nil {
		return st.Err()
	}
	return d.Err()
}

// startShard starts a data shard's replica on this store, from its state
// record in the store if it has one (its bounds win over start and end).
func (r *Replica) startShard(id uint64, start, end []byte, replicas []uint64) error {
	r.mu.Lock()
	if _, ok := r.shards[id]; ok {
		r.mu.Unlock()
		return nil
	}
	ds := &dataShard{id: id}
	r.shards[id] = ds
	r.mu.Unlock()
	initial := map[uint64]dragonboat.Target{}
	for _, m := range r.cfg.Cluster {
		for _, id := range replicas {
			if m.ID == id {
				initial[m.ID] = m.RaftAddress
			}
		}
	}
	hooks := datasm.Hooks{
		Opened: func(sh *mvcc.Shard) {
			ds.mu.Lock()
			ds.mvcc = sh
			ds.mu.Unlock()
		},
		Restored: func() { r.snapshotsRestored.Add(1) },
		Split:    r.splitApplied,
		Logger:   r.log,
	}
	ds.seq = sequencer.New(r.nh, id, r.revs, r.cfg.ProposalTimeout, r.log)
	if err := r.nh.StartOnDiskReplica(initial, false, datasm.Factory(r.store, start, end, hooks), r.shardConfig(id, 10000)); err != nil &&
		!errors.Is(err, dragonboat.ErrShardAlreadyExist) {
		ds.seq.Stop()
		r.mu.Lock()
		delete(r.shards, id)
		r.mu.Unlock()
		return fmt.Errorf("replica: start shard %d: %w", id, err)
	}
	return nil
}

// splitApplied starts the child of a split the parent just applied here.
// It runs on the parent's apply goroutine, so the start (which waits for
// dragonboat) goes on its own.
func (r *Replica) splitApplied(_, right mvcc.Bounds, childID uint64, replicas []uint64) {
	if _, ok := r.dataShard(childID); ok {
		return // a replayed split of a child already running
	}
	// Not r.wg: this runs on an apply goroutine, which may still apply
	// while Close waits on r.wg; children is waited for after the
	// NodeHost closed, when nothing applies any more.
	r.children.Add(1)
	go func() {
		defer r.children.Done()
		select {
		case <-r.stopc:
			return
		default:
		}
		if err := r.startShard(childID, right.Start, right.End, replicas); err != nil {
			r.log.Error("start the child of a split", "shard", childID, "err", err)
			return
		}
		r.log.Info("started the child of a split", "shard", childID, "parent", right.Parent, "revision", right.SplitRevision,
			"start", string(right.Start), "end", string(right.End))
	}()
}

// startStoredChildren starts the shards made by splits that this store
// applied (their state records are here), whatever the boot map says.
func (r *Replica) startStoredChildren() error {
	stored, err := r.store.StoredShards()
	if err != nil {
		return err
	}
	for _, s := range stored {
		if s.State.Bounds.Parent == 0 {
			continue
		}
		// Not started yet, so not in replicasOf's Raft view: as the split
		// entry placed it (a restart keeps the members Raft recorded).
		st, _ := r.metaState()
		replicas := r.replicasIn(st, s.ID)
		if len(replicas) == 0 {
			replicas = childReplicas(r.replicasIn(st, s.State.Bounds.Parent), s.ID)
		}
		if err := r.startShard(s.ID, s.State.Bounds.Start, s.State.Bounds.End, replicas); err != nil {
			return err
		}
	}
	return nil
}

// reconcileInterval is how often a store checks that the meta map has
// every split the shards it leads applied.
const reconcileInterval = 2 * time.Second

// reconcileOnce finishes what a lost last step left undone, on the
// shards led here: splits whose meta map update was lost (say to a
// timeout after the parent applied the split), proposing the descriptors
// applied where the map is behind them (without it a watcher or gateway
// that starts later would not know the new shard), and compactions the
// meta shard recorded that a shard has not applied.
func (r *Replica) reconcileOnce() {
	st, err := r.metaState()
	if err != nil {
		return
	}
	known := map[uint64]uint64{}
	for _, d := range st.ShardMap.Shards {
		known[d.Id] = d.Generation
	}
	var behind []*metapb.ShardDescriptor
	r.mu.RLock()
	ids := make([]uint64, 0, len(r.shards))
	for id := range r.shards {
		ids = append(ids, id)
	}
	r.mu.RUnlock()
	for _, id := range ids {
		ds, _ := r.dataShard(id)
		// A split bumps the shard's generation: where the map has
		// the shard's own, it has the shards it split into too.
		if r.LeaderOf(id) != r.cfg.StoreID || ds == nil || ds.shard() == nil || ds.shard().Bounds().Generation <= known[id] {
			continue
		}
		for _, d := range r.descriptorsIn(st, id) {
			if gen, ok := known[d.Id]; !ok && d.Id != id || ok && d.Generation > gen {
				behind = append(behind, d)
			}
		}
	}
	r.finishCompactions(ids, st.CompactRevision)
	if len(behind) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ProposalTimeout)
	if err := r.installShards(ctx, behind...); err != nil {
		r.log.Warn("record applied splits in the shard map", "err", err)
	} else {
		r.log.Info("recorded applied splits in the shard map", "descriptors", len(behind))
	}
	cancel()
}

// finishCompactions compacts the shards led here that are below the
// cluster's compaction revision: a gateway that recorded it may have
// stopped before asking every shard, and a shard may have been down.
func (r *Replica) finishCompactions(ids []uint64, rev int64) {
	for _, id := range ids {
		ds, _ := r.dataShard(id)
		if rev == 0 || ds == nil || ds.shard() == nil || ds.shard().State().CompactRevision >= rev || r.LeaderOf(id) != r.cfg.StoreID {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ProposalTimeout)
		if _, err := r.compact(ctx, ds, id, rev, true); err != nil && !errors.Is(err, rpctypes.ErrGRPCCompacted) {
			r.log.Warn("compact a shard at the cluster's compaction revision", "shard", id, "revision", rev, "err", err)
		} else if err == nil {
			r.log.Info("compacted a shard at the cluster's compaction revision", "shard", id, "revision", rev)
		}
		cancel()
	}
}

// childReplicas are the stores of a split's new shard: the parent's (its
// data is already there), rotated by the child's ID so that the preferred
// leaders (the first replica, see balance.go) of a parent's children take
// turns over its stores.
func childReplicas(parent []uint64, child uint64) []uint64 {
	if len(parent) == 0 {
		return nil
	}
	k := int(child % uint64(len(parent)))
	return append(slices.Clone(parent[k:]), parent[:k]...)
}
