package replica

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/datasm"
)

// Closing a revision. A shard's closed revision is the revision of its last
// applied entry: the state machine refuses any later entry at or below it.
// A shard with writes closes revisions as it goes; an idle one closes a
// revision only when someone waits for it (a read of several shards at one
// revision, the watcher releasing another shard's events), with a tick: an
// entry that changes nothing, at a fresh oracle revision, which is above
// every revision served before it was asked for. Nothing writes ticks on a
// timer, so an idle cluster writes no entries.

// closer coalesces a shard's ticks: callers that come while a tick is in
// flight wait for it, then tick again only if it did not close what they
// need (it may have taken its revision before theirs was served).
type closer struct {
	mu       sync.Mutex
	inflight chan struct{} // closed when the running tick ends
	err      error         // of the tick that ended last
}

// errNotClosed: ticks kept landing below the revision to close, so it was
// not served by the oracle before the call.
var errNotClosed = errors.New("tessera: revision not closed")

// closeRevision returns once the shard's closed revision is at or above
// rev, ticking on this store if it leads the shard (NotLeader otherwise).
func (s *shardService) closeRevision(ctx context.Context, shardID uint64, rev int64) error {
	ds, err := s.lookup(shardID)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		sh, err := s.openShard(shardID)
		if err != nil {
			return err
		}
		if sh.State().LastEntry >= rev {
			return nil
		}
		if attempt == 3 {
			return status.Errorf(codes.FailedPrecondition, "%v: %d is above every revision served", errNotClosed, rev)
		}
		if _, err := s.r.requireLeader(shardID); err != nil {
			return err
		}
		if err := ds.tick(ctx); err != nil {
			return s.submitErr(shardID, err)
		}
	}
}

// tick runs one tick through the sequencer, or waits for the one running.
func (ds *dataShard) tick(ctx context.Context) error {
	ds.closer.mu.Lock()
	if wait := ds.closer.inflight; wait != nil {
		ds.closer.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
		ds.closer.mu.Lock()
		err := ds.closer.err
		ds.closer.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	ds.closer.inflight = done
	ds.closer.mu.Unlock()

	_, err := ds.seq.Submit(ctx, &raftcmdpb.DataCommand{Op: &raftcmdpb.DataCommand_Tick{Tick: &raftcmdpb.Tick{}}})

	ds.closer.mu.Lock()
	ds.closer.inflight, ds.closer.err = nil, err
	ds.closer.mu.Unlock()
	close(done)
	return err
}

// Close serves Shard.Close: the shard's state once rev is closed.
func (s *shardService) Close(ctx context.Context, req *shardpb.CloseRequest) (*shardpb.CloseResponse, error) {
	if _, err := s.lookup(req.ShardId); err != nil {
		return nil, err
	}
	if req.Linearizable {
		// A ReadIndex: the state read after it includes every write
		// acknowledged before the call.
		rctx, cancel := s.r.withTimeout(ctx)
		_, err := s.r.nh.SyncRead(rctx, req.ShardId, datasm.StateQuery{})
		cancel()
		if err != nil {
			return nil, toStatus(err)
		}
	}
	if req.Revision > 0 {
		if err := s.closeRevision(ctx, req.ShardId, req.Revision); err != nil {
			return nil, err
		}
	}
	sh, err := s.openShard(req.ShardId)
	if err != nil {
		return nil, err
	}
	st := sh.State()
	_, term, _, _ := s.r.nh.GetLeaderID(req.ShardId)
	return &shardpb.CloseResponse{Revision: st.Revision, ClosedRevision: st.LastEntry, CompactRevision: st.CompactRevision, RaftTerm: term}, nil
}
