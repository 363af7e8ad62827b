// Package datasm is the dragonboat on-disk state machine of a data shard:
// it applies DataCommands to the shard's MVCC keyspace in Badger.
//
// Contract (dragonboat IOnDiskStateMachine): Update runs on one goroutine;
// Lookup and SaveSnapshot run concurrently with it. Apply is deterministic:
// the entry carries its revision, nothing reads a clock.
//
// Apply is total. Every committed entry applies, whatever bytes it holds:
// an entry that cannot be applied (undecodable, an unknown command, a stale
// revision, a key the store cannot hold, a request error, a shape whose
// evaluation fails) gets an error result, the same on every replica, and
// changes nothing but the applied index. Entries of any size apply: mvcc
// splits an entry's writes over several Badger transactions, invisible to
// readers until the state records the entry, and idempotent on replay. Only
// a storage failure (a disk error) is returned to dragonboat, which stops
// the replica; it is logged first with what to do.
//
// Each accepted entry's data, change-log record and shard state (with the
// Raft index) become visible together, so Open returns exactly what is
// applied; a rejected entry's index is recorded too, so Open never reports
// less than an index dragonboat took a snapshot at.
package datasm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

// RangeQuery asks Lookup for an etcd Range.
// Closed reads at the request's revision up to the closed revision
// (mvcc.Shard.RangeClosed). Generation is the descriptor generation the
// request was routed by (0: unchecked).
type RangeQuery struct {
	Request    *pb.RangeRequest
	Closed     bool
	Generation uint64
}

// TxnQuery asks Lookup to evaluate a read-only txn, at revision At (a
// closed one) if not 0.
type TxnQuery struct {
	Request    *pb.TxnRequest
	At         int64
	Generation uint64
}

// StateQuery asks Lookup for the shard state (mvcc.State).
type StateQuery struct{}

// LeaseKeysQuery asks Lookup for the keys attached to a lease ([][]byte).
type LeaseKeysQuery struct{ Lease int64 }

// StateMachine applies a data shard's log.
type StateMachine struct {
	store      *mvcc.Store
	shardID    uint64
	start, end []byte
	shard      *mvcc.Shard
	hooks      Hooks
	log        *slog.Logger
	// splitting is held by a split's apply against reads (shared): a read
	// checks its generation and reads under one bounds.
	splitting sync.RWMutex
}

// Hooks let the replica observe the state machine.
type Hooks struct {
	// Opened receives the shard once it is open, so reads can be served.
	Opened func(*mvcc.Shard)
	// Restored is called after the shard was replaced by a snapshot.
	Restored func()
	// Split is called after a split entry applied (and again on replay):
	// the child's state record is in the store, so its replica can start.
	Split func(left, right mvcc.Bounds, childID uint64, replicas []uint64)
	// Logger receives storage failures; nil is slog.Default().
	Logger *slog.Logger
}

var _ sm.IOnDiskStateMachine = (*StateMachine)(nil)

// Factory returns the constructor dragonboat calls for a data shard owning
// [start, end).
func Factory(store *mvcc.Store, start, end []byte, hooks Hooks) sm.CreateOnDiskStateMachineFunc {
	return func(shardID, _ uint64) sm.IOnDiskStateMachine {
		log := hooks.Logger
		if log == nil {
			log = slog.Default()
		}
		return &StateMachine{store: store, shardID: shardID, start: start, end: end, hooks: hooks,
			log: log.With("shard", shardID)}
	}
}

// Open loads the shard and returns its applied Raft index.
func (s *StateMachine) Open(<-chan struct{}) (uint64, error) {
	sh, err := s.store.OpenShard(s.shardID, s.start, s.end)
	if err != nil {
		return 0, err
	}
	s.shard = sh
	if s.hooks.Opened != nil {
		s.hooks.Opened(sh)
	}
	return sh.State().AppliedIndex, nil
}

// Update applies committed entries in order.
func (s *StateMachine) Update(ents []sm.Entry) ([]sm.Entry, error) {
	for i := range ents {
		res, err := s.apply(ents[i])
		if err != nil {
			s.log.Error("storage failure applying a committed entry: the replica stops; check the disk "+
				"(space, I/O errors) and restart it, and it replays the entry from its Raft log",
				"index", ents[i].Index, "err", err)
			return nil, fmt.Errorf("datasm: shard %d index %d: %w", s.shardID, ents[i].Index, err)
		}
		// A proto string must be UTF-8 or Marshal fails; a message can quote
		// request bytes (a recovered panic), and the result must not stop
		// the replica.
		res.Message = strings.ToValidUTF8(res.Message, "\uFFFD")
		data, err := proto.Marshal(res)
		if err != nil {
			return nil, err
		}
		ents[i].Result = sm.Result{Value: uint64(res.Code) + 1, Data: data}
	}
	return ents, nil
}

// apply returns the entry's result; an error return is a storage failure
// that must stop the replica (request errors are results).
func (s *StateMachine) apply(e sm.Entry) (*raftcmdpb.DataResult, error) {
	var cmd raftcmdpb.DataCommand
	if err := proto.Unmarshal(e.Cmd, &cmd); err != nil {
		// Undecodable entries are rejected the same way on every replica.
		return s.invalid(e.Index, err.Error())
	}
	var (
		resp *pb.TxnResponse
		err  error
	)
	switch op := cmd.Op.(type) {
	case *raftcmdpb.DataCommand_Txn:
		var req pb.TxnRequest
		if uerr := proto.Unmarshal(op.Txn, &req); uerr != nil {
			return s.invalid(e.Index, uerr.Error())
		}
		if gerr := s.shard.CheckGeneration(cmd.Generation); gerr != nil {
			// Routed before a split: its keys may be another shard's now.
			// The gateway retries it there; nothing changed here.
			if err := s.shard.RecordRejected(e.Index); err != nil {
				return nil, err
			}
			return &raftcmdpb.DataResult{Code: raftcmdpb.DataResult_CODE_WRONG_SHARD, Message: gerr.Error(), Revision: s.shard.State().Revision}, nil
		}
		resp, err = s.shard.ApplyTxnLeases(e.Index, cmd.Revision, &req, cmd.LeaseEpochs)
	case *raftcmdpb.DataCommand_Split:
		sp := op.Split
		s.splitting.Lock()
		var left, right mvcc.Bounds
		left, right, err = s.shard.Split(e.Index, cmd.Revision, sp.GetSplitKey(), sp.GetChildId(), sp.GetGeneration())
		s.splitting.Unlock()
		if err == nil && s.hooks.Split != nil {
			s.hooks.Split(left, right, sp.GetChildId(), sp.GetReplicas())
		}
	case *raftcmdpb.DataCommand_Compact:
		if op.Compact.GetClusterChecked() {
			err = s.shard.CompactCluster(e.Index, cmd.Revision, op.Compact.GetRevision())
		} else {
			err = s.shard.Compact(e.Index, cmd.Revision, op.Compact.GetRevision())
		}
	case *raftcmdpb.DataCommand_Tick:
		err = s.shard.Tick(e.Index, cmd.Revision)
	case *raftcmdpb.DataCommand_RevokeLease:
		var n int64
		n, err = s.shard.RevokeLease(e.Index, cmd.Revision, op.RevokeLease.LeaseIds, op.RevokeLease.Epochs)
		if err == nil {
			resp = &pb.TxnResponse{Succeeded: true, Responses: []*pb.ResponseOp{{Response: &pb.ResponseOp_ResponseDeleteRange{
				ResponseDeleteRange: &pb.DeleteRangeResponse{Deleted: n}}}}}
		}
	default:
		return s.invalid(e.Index, "empty or unknown command")
	}
	res := &raftcmdpb.DataResult{Revision: s.shard.State().Revision}
	switch {
	case err == nil:
		if resp != nil {
			b, merr := proto.Marshal(resp)
			if merr != nil {
				return nil, merr
			}
			res.TxnResponse = b
		}
	case errors.Is(err, mvcc.ErrStaleRevision):
		res.Code = raftcmdpb.DataResult_CODE_STALE_REVISION
	case errors.Is(err, mvcc.ErrCompacted):
		res.Code = raftcmdpb.DataResult_CODE_COMPACTED
	case errors.Is(err, mvcc.ErrFutureRev):
		res.Code = raftcmdpb.DataResult_CODE_FUTURE_REVISION
	case errors.Is(err, mvcc.ErrKeyNotFound):
		res.Code = raftcmdpb.DataResult_CODE_KEY_NOT_FOUND
	case errors.Is(err, mvcc.ErrLeaseNotFound):
		res.Code = raftcmdpb.DataResult_CODE_LEASE_NOT_FOUND
	case errors.Is(err, mvcc.ErrWrongShard):
		res.Code, res.Message = raftcmdpb.DataResult_CODE_WRONG_SHARD, err.Error()
	case errors.Is(err, mvcc.ErrKeyTooLarge):
		res.Code, res.Message = raftcmdpb.DataResult_CODE_TOO_LARGE, err.Error()
	case errors.Is(err, mvcc.ErrInvalidEntry):
		s.log.Warn("entry rejected: its evaluation failed", "index", e.Index, "err", err)
		res.Code, res.Message = raftcmdpb.DataResult_CODE_INVALID, err.Error()
	default:
		return nil, err
	}
	return res, nil
}

// invalid rejects an entry that is not a command this version knows: it
// changes nothing, but its index counts as applied.
func (s *StateMachine) invalid(index uint64, msg string) (*raftcmdpb.DataResult, error) {
	if err := s.shard.RecordRejected(index); err != nil {
		return nil, err
	}
	return &raftcmdpb.DataResult{Code: raftcmdpb.DataResult_CODE_INVALID, Message: msg, Revision: s.shard.State().Revision}, nil
}

// Lookup serves reads: RangeQuery or StateQuery.
func (s *StateMachine) Lookup(q any) (any, error) {
	s.splitting.RLock()
	defer s.splitting.RUnlock()
	switch q := q.(type) {
	case RangeQuery:
		if err := s.shard.CheckGeneration(q.Generation); err != nil {
			return nil, err
		}
		if q.Closed {
			return s.shard.RangeClosed(q.Request)
		}
		return s.shard.Range(q.Request)
	case TxnQuery:
		if err := s.shard.CheckGeneration(q.Generation); err != nil {
			return nil, err
		}
		if q.At > 0 {
			return s.shard.ReadTxnAt(q.Request, q.At)
		}
		return s.shard.ReadTxn(q.Request)
	case StateQuery:
		return s.shard.State(), nil
	case LeaseKeysQuery:
		return s.shard.LeaseKeys(q.Lease)
	}
	return nil, fmt.Errorf("datasm: unknown query %T", q)
}

// Sync flushes Badger.
func (s *StateMachine) Sync() error { return s.store.Sync() }

// PrepareSnapshot captures the shard between two entries.
func (s *StateMachine) PrepareSnapshot() (any, error) { return s.shard.PrepareSnapshot(), nil }

// SaveSnapshot streams the captured shard.
func (s *StateMachine) SaveSnapshot(ctx any, w io.Writer, stop <-chan struct{}) error {
	snap := ctx.(*mvcc.Snapshot)
	defer snap.Close()
	return snap.WriteTo(w, stop)
}

// RecoverFromSnapshot replaces the shard with a snapshot.
func (s *StateMachine) RecoverFromSnapshot(r io.Reader, stop <-chan struct{}) error {
	if err := s.shard.Restore(r, stop); err != nil {
		return err
	}
	if s.hooks.Restored != nil {
		s.hooks.Restored()
	}
	return nil
}

// Close is a no-op: the store outlives its shards.
func (s *StateMachine) Close() error { return nil }
