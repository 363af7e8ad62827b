package replica

import (
	"bytes"
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/keyspan"
	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/metapb"
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
	if len(req.Key) > 0 && !within(sh.Bounds(), req.Key, req.RangeEnd) {
		// Routed by a map from before a split: past the split this
		// shard's log no longer has some of those keys.
		return s.r.wrongShard(req.ShardId, "the requested range is not inside the shard")
	}
	var in func([]byte) bool // every key
	if len(req.Key) > 0 {
		in = keyspan.FromRequest(req.Key, req.RangeEnd).Contains
	}
	next := req.StartRevision
	if b := sh.Bounds(); next > 0 && next <= b.SplitRevision && len(req.Key) > 0 {
		// Events at or below the split are in the parent's log.
		if err := s.sendAncestors(stream, b, next, req.EndRevision, in); err != nil {
			return err
		}
		next = b.SplitRevision + 1
	}
	if next <= 0 {
		// "From now": the first message names the revision the feed
		// starts after, before any change.
		// After the last entry: everything at or below it is past (with
		// several shards, the compaction revision may be above the
		// shard's own revision, never above its last entry).
		st := sh.State()
		next = st.LastEntry + 1
		first := &shardpb.ChangesResponse{ClosedRevision: st.LastEntry, CompactRevision: st.CompactRevision}
		if len(req.Key) == 0 {
			// Every shard split from this one: a subscriber whose shard
			// map predates a split learns of the new shard here, before
			// it takes anything from this feed.
			if first.Splits, err = s.splitsIn(sh, 0, next); err != nil {
				return toStatus(err)
			}
		}
		if err := stream.Send(first); err != nil {
			return err
		}
	}
	heartbeat := time.NewTicker(feedHeartbeat)
	defer heartbeat.Stop()
	lastClosed, lastCompact := int64(-1), int64(-1)
	// The generation up to which splits were reported: each split bumps
	// it, so the split records are read only when it moved. A feed from
	// now reported every split in its first message; a resumed one
	// reads the records once from its start.
	var reportedGen uint64
	if req.StartRevision <= 0 {
		reportedGen = sh.Bounds().Generation
	}
	for {
		// Take the wake-up channel before reading, so a commit between the
		// read and the wait is not missed.
		changed := sh.Changed()
		recs, st, nxt, err := sh.ReadChanges(next, feedBatchBytes, in)
		if errors.Is(err, mvcc.ErrCompacted) {
			return stream.Send(&shardpb.ChangesResponse{CompactRevision: st.CompactRevision, Compacted: true})
		}
		if err != nil {
			return toStatus(err)
		}
		resp := &shardpb.ChangesResponse{}
		if len(req.Key) == 0 && st.Bounds.Generation != reportedGen {
			if resp.Splits, err = s.splitsIn(sh, next, nxt); err != nil {
				return toStatus(err)
			}
			if nxt > st.LastEntry { // read to the end: every split of st reported
				reportedGen = st.Bounds.Generation
			}
		}
		for _, rec := range recs {
			if req.EndRevision > 0 && rec.Revision > req.EndRevision {
				break
			}
			resp.Changes = append(resp.Changes, &shardpb.Change{Revision: rec.Revision, Events: rec.Events})
		}
		next = nxt
		closed := next - 1
		done := req.EndRevision > 0 && closed >= req.EndRevision
		if done {
			closed = req.EndRevision
		}
		resp.ClosedRevision, resp.CompactRevision = closed, st.CompactRevision
		// A compaction changes no key but the subscriber must learn of it.
		if len(resp.Changes) > 0 || len(resp.Splits) > 0 || closed != lastClosed || st.CompactRevision != lastCompact || done {
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

// splitsIn describes the shards split from sh at revisions in [from, to).
func (s *shardService) splitsIn(sh *mvcc.Shard, from, to int64) ([]*metapb.ShardDescriptor, error) {
	recs, err := sh.Splits(from)
	if err != nil {
		return nil, err
	}
	var out []*metapb.ShardDescriptor
	replicas := s.r.replicasOf(sh.ID()) // a split's child is on its parent's stores
	for _, rec := range recs {
		if rec.Revision >= to {
			break
		}
		out = append(out, descriptor(rec.ChildID, rec.Child, childReplicas(replicas, rec.ChildID)))
	}
	return out, nil
}

// sendAncestors sends the events at revisions [from, b.SplitRevision] (and
// at most end, if set) of a split shard's keys from its parent's change
// log, which holds them (and, below the parent's own split, from its
// parent's). The parent is on this store: a split starts the child on the
// parent's stores.
func (s *shardService) sendAncestors(stream shardpb.Shard_ChangesServer, b mvcc.Bounds, from, end int64, in func([]byte) bool) error {
	upto := b.SplitRevision
	if end > 0 {
		upto = min(upto, end)
	}
	parent, err := s.openShard(b.Parent)
	if err != nil {
		return status.Errorf(codes.Unavailable, "tessera: the history below revision %d is in shard %d, not open on this store: %v", b.SplitRevision, b.Parent, err)
	}
	if pb := parent.Bounds(); from <= pb.SplitRevision {
		if err := s.sendAncestors(stream, pb, from, upto, in); err != nil {
			return err
		}
		from = pb.SplitRevision + 1
	}
	for from <= upto {
		recs, st, nxt, err := parent.ReadChanges(from, feedBatchBytes, in)
		if errors.Is(err, mvcc.ErrCompacted) {
			return stream.Send(&shardpb.ChangesResponse{CompactRevision: st.CompactRevision, Compacted: true})
		}
		if err != nil {
			return toStatus(err)
		}
		resp := &shardpb.ChangesResponse{CompactRevision: st.CompactRevision, ClosedRevision: min(nxt-1, upto)}
		for _, rec := range recs {
			if rec.Revision > upto {
				break
			}
			resp.Changes = append(resp.Changes, &shardpb.Change{Revision: rec.Revision, Events: rec.Events})
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		from = nxt
	}
	return nil
}

// within reports whether the range [key, end) with etcd's encoding is
// inside the bounds.
func within(b mvcc.Bounds, key, end []byte) bool {
	if bytes.Compare(key, b.Start) < 0 {
		return false
	}
	end = mvcc.RangeEnd(end)
	switch {
	case end == nil:
		return len(b.End) == 0 || bytes.Compare(key, b.End) < 0
	case len(end) == 0:
		return len(b.End) == 0
	}
	return len(b.End) == 0 || bytes.Compare(end, b.End) <= 0
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
