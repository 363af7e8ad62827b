package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/datasm"
	"github.com/tessera-kv/tessera/services/replica/internal/sequencer"
)

// Closing a revision. A shard's closed revision is the revision of its last
// applied entry: the state machine refuses any later entry at or below it.
// A shard with writes closes revisions as it goes; an idle one closes a
// revision only when someone waits for it (a read of several shards at one
// revision, the watcher releasing another shard's events), with a tick: an
// entry that changes nothing, at the revision to close itself. Every later
// entry at or below it is refused by the state machine (and resubmitted
// with a fresh revision by the sequencer), so the tick takes no revision
// of its own and leaves no gap in the revisions clients see. Nothing writes
// ticks on a timer, so an idle cluster writes no entries.

// closer coalesces a shard's ticks: callers that come while a tick is in
// flight wait for it, then tick again only if it did not close what they
// need (it closed a lower revision).
type closer struct {
	mu       sync.Mutex
	inflight chan struct{} // closed when the running tick ends
	err      error         // of the tick that ended last
}

// While the shard has writes in flight, closeRevision waits for them (up to
// busyPatience, in steps of at most busyWait) before it ticks.
const (
	busyWait     = 10 * time.Millisecond
	busyPatience = 200 * time.Millisecond
)

// errNotClosed: the revision could not be closed.
var errNotClosed = errors.New("tessera: revision not closed")

// closeRevision returns once the shard's closed revision is at or above
// rev, ticking on this store if it leads the shard (NotLeader otherwise).
func (s *shardService) closeRevision(ctx context.Context, shardID uint64, rev int64) error {
	ds, err := s.lookup(shardID)
	if err != nil {
		return err
	}
	for attempt := 0; attempt < 3; attempt++ {
		closed, err := s.awaitWrites(ctx, ds, shardID, rev)
		if err != nil || closed {
			return err
		}
		if _, err := s.r.requireLeader(shardID); err != nil {
			return err
		}
		// Only a revision the oracle has served may be closed: a tick
		// above that would make the shard refuse the fresh revisions
		// of its next writes.
		next, err := s.r.revs.Allocate(ctx, 0)
		if err != nil {
			return s.submitErr(shardID, fmt.Errorf("%w: revisions: %v", sequencer.ErrUnavailable, err))
		}
		if rev >= next {
			return status.Errorf(codes.FailedPrecondition, "%v: %d is above every revision served (next %d)", errNotClosed, rev, next)
		}
		if err := ds.tick(ctx, rev); err != nil {
			return s.submitErr(shardID, err)
		}
	}
	if closed, err := s.awaitWrites(ctx, ds, shardID, rev); err != nil || closed {
		return err
	}
	return status.Errorf(codes.Unavailable, "%v: %d after 3 ticks", errNotClosed, rev)
}

// awaitWrites reports whether the shard has closed rev, first waiting (up
// to busyPatience) while it has writes in flight: those given revisions
// after rev was served close it themselves, and a tick at rev now would
// make the earlier ones stale and send them round again.
func (s *shardService) awaitWrites(ctx context.Context, ds *dataShard, shardID uint64, rev int64) (bool, error) {
	for waited := time.Duration(0); ; waited += busyWait {
		sh, err := s.openShard(shardID)
		if err != nil {
			return false, err
		}
		changed := sh.Changed()
		if sh.State().LastEntry >= rev {
			return true, nil
		}
		if !ds.seq.Busy() || waited >= busyPatience {
			return false, nil
		}
		t := time.NewTimer(busyWait)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
}

// tick runs one tick at rev through the sequencer, or waits for the one
// running.
func (ds *dataShard) tick(ctx context.Context, rev int64) error {
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

	// At rev itself: the state machine refuses every later entry at or
	// below its last one, so the tick closes rev without taking a
	// revision of its own (a stale answer means a later entry closed it).
	_, err := ds.seq.SubmitAt(ctx, &raftcmdpb.DataCommand{Op: &raftcmdpb.DataCommand_Tick{Tick: &raftcmdpb.Tick{}}, Revision: rev})

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
	if err := sh.CheckGeneration(req.Generation); err != nil {
		return nil, s.r.wrongShard(req.ShardId, err.Error())
	}
	st := sh.State()
	_, term, _, _ := s.r.nh.GetLeaderID(req.ShardId)
	resp := &shardpb.CloseResponse{Revision: st.Revision, ClosedRevision: st.LastEntry, CompactRevision: st.CompactRevision,
		RaftTerm: term, LeaderStoreId: s.r.LeaderOf(req.ShardId)}
	if req.Revision > 0 {
		if resp.RevisionAt, err = sh.RevisionAt(req.Revision); err != nil {
			return nil, toStatus(err)
		}
	}
	return resp, nil
}

// States serves Shard.States: Close without a revision for each shard, in
// parallel. A shard this store does not hold fails the call.
func (s *shardService) States(ctx context.Context, req *shardpb.StatesRequest) (*shardpb.StatesResponse, error) {
	out := make([]*shardpb.CloseResponse, len(req.ShardIds))
	errs := make([]error, len(req.ShardIds))
	var wg sync.WaitGroup
	for i, id := range req.ShardIds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cr := &shardpb.CloseRequest{ShardId: id, Linearizable: req.Linearizable}
			if i < len(req.Generations) {
				cr.Generation = req.Generations[i]
			}
			out[i], errs[i] = s.Close(ctx, cr)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return &shardpb.StatesResponse{States: out}, nil
}
