package replica

import (
	"bytes"
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/datasm"
)

const (
	// feedBatchBytes bounds the change-log bytes read for one feed message.
	feedBatchBytes = 1 << 20
	// feedHeartbeat is how often an idle feed repeats its closed revision,
	// so the subscriber can tell a quiet shard from a dead stream.
	feedHeartbeat = time.Second
	// feedStaleAfter is how long a feed may go without proving, by a Raft
	// ReadIndex, that this replica has applied everything the leader had
	// committed. Past it the feed ends (Unavailable) and the watcher moves to
	// another replica: a replica cut off from its leader would otherwise
	// keep repeating an old closed revision, and every watch would stall.
	feedStaleAfter = 3 * time.Second
)

// Changes streams a shard's change log from this replica's applied state:
// history first (from the change log, no key scans), then each newly applied
// revision as the state machine commits it. Every message carries the
// closed revision: all of the shard's events up to it have been sent.
//
// A follower's applied state is a prefix of the committed log, so any
// replica serves a correct feed (watchers prefer followers), but only a
// current one serves a timely feed: the feed proves currency every second
// (provingCurrent) and ends when it cannot.
func (s *shardService) Changes(req *shardpb.ChangesRequest, stream shardpb.Shard_ChangesServer) error {
	sh, err := s.openShard(req.ShardId)
	if err != nil {
		return err
	}
	ctx, stale := context.WithCancelCause(stream.Context())
	defer stale(nil)
	go s.provingCurrent(ctx, req.ShardId, stale)
	match := eventFilter(req.Key, req.RangeEnd)
	next := req.StartRevision
	if next <= 0 {
		// "From now": the first message names the revision the feed
		// starts after, before any change.
		// After the last entry: everything at or below it is past (with
		// several shards, the compaction revision may be above the
		// shard's own revision, never above its last entry).
		st := sh.State()
		next = st.LastEntry + 1
		if err := stream.Send(&shardpb.ChangesResponse{ClosedRevision: st.LastEntry, CompactRevision: st.CompactRevision}); err != nil {
			return err
		}
	}
	heartbeat := time.NewTicker(feedHeartbeat)
	defer heartbeat.Stop()
	lastClosed, lastCompact := int64(-1), int64(-1)
	for {
		// Take the wake-up channel before reading, so a commit between the
		// read and the wait is not missed.
		changed := sh.Changed()
		recs, st, nxt, err := sh.ReadChanges(next, feedBatchBytes)
		if errors.Is(err, mvcc.ErrCompacted) {
			return stream.Send(&shardpb.ChangesResponse{CompactRevision: st.CompactRevision, Compacted: true})
		}
		if err != nil {
			return toStatus(err)
		}
		resp := &shardpb.ChangesResponse{}
		for _, rec := range recs {
			if req.EndRevision > 0 && rec.Revision > req.EndRevision {
				break
			}
			evs, err := match(rec.Events)
			if err != nil {
				return status.Errorf(codes.Internal, "tessera: shard %d revision %d: %v", req.ShardId, rec.Revision, err)
			}
			if len(evs) > 0 {
				resp.Changes = append(resp.Changes, &shardpb.Change{Revision: rec.Revision, Events: evs})
			}
		}
		next = nxt
		closed := next - 1
		done := req.EndRevision > 0 && closed >= req.EndRevision
		if done {
			closed = req.EndRevision
		}
		resp.ClosedRevision, resp.CompactRevision = closed, st.CompactRevision
		// A compaction changes no key but the subscriber must learn of it.
		if len(resp.Changes) > 0 || closed != lastClosed || st.CompactRevision != lastCompact || done {
			if err := stream.Send(resp); err != nil {
				return err
			}
			lastClosed, lastCompact = closed, st.CompactRevision
		}
		if done {
			return nil
		}
		if next <= st.Revision {
			continue // the batch limit cut the read short
		}
		select {
		case <-changed:
		case <-heartbeat.C:
			lastClosed = -1
		case <-ctx.Done():
			if err := stream.Context().Err(); err != nil {
				return err
			}
			return context.Cause(ctx)
		}
	}
}

// provingCurrent confirms every feedHeartbeat, with a ReadIndex, that the
// replica has applied all the shard's committed entries, and calls stale
// once it has gone feedStaleAfter without a confirmation.
func (s *shardService) provingCurrent(ctx context.Context, shardID uint64, stale context.CancelCauseFunc) {
	t := time.NewTicker(feedHeartbeat)
	defer t.Stop()
	confirmed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, feedHeartbeat)
		_, err := s.r.nh.SyncRead(rctx, shardID, datasm.StateQuery{})
		cancel()
		if err == nil {
			confirmed = time.Now()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if since := time.Since(confirmed); since >= feedStaleAfter {
			stale(status.Errorf(codes.Unavailable, "tessera: store %d cannot confirm it is current for shard %d (no ReadIndex for %s: %v); resubscribe elsewhere",
				s.r.cfg.StoreID, shardID, since.Round(time.Millisecond), err))
			return
		}
	}
}

// eventFilter returns a function that keeps the serialized events whose key
// is in [key, end) with etcd's range conventions; an empty key keeps all.
func eventFilter(key, end []byte) func([][]byte) ([][]byte, error) {
	if len(key) == 0 {
		return func(evs [][]byte) ([][]byte, error) { return evs, nil }
	}
	end = mvcc.RangeEnd(end)
	in := func(k []byte) bool {
		switch {
		case end == nil:
			return bytes.Equal(k, key)
		case len(end) == 0:
			return bytes.Compare(k, key) >= 0
		}
		return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
	}
	return func(evs [][]byte) ([][]byte, error) {
		var out [][]byte
		for _, b := range evs {
			var ev mvccpb.Event
			if err := proto.Unmarshal(b, &ev); err != nil {
				return nil, err
			}
			if in(ev.GetKv().GetKey()) {
				out = append(out, b)
			}
		}
		return out, nil
	}
}
