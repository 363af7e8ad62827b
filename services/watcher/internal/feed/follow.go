// Package feed is the watcher's side of the replicas: it follows each
// shard's change feed into the watch cache (reconnecting and failing over
// between the shard's replicas, followers first), and reads history and the
// current revision for the cache.
package feed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/retry"
	"github.com/tessera-kv/tessera/pkg/shardmap"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/watcher/internal/watchcache"
)

// Sink takes what a shard's feed delivers (the watch cache).
type Sink interface {
	// Subscribed: a fresh feed starts after closed.
	Subscribed(shardID uint64, closed int64)
	// Apply: the next revisions, then the closed and compaction revisions.
	Apply(shardID uint64, revs []watchcache.Revision, closed, compacted int64)
	// Split: the shard split; the child's keys come from the child's feed
	// from above its split revision on. Called before the message that
	// reported it is applied, so nothing past the split is released
	// without the child. fromNow: reported by a feed that starts "from
	// now", which the child's feed is to do too.
	Split(parentID uint64, child *metapb.ShardDescriptor, fromNow bool)
}

var errCompacted = errors.New("feed: resume point compacted")

// idleTimeout ends a feed that sent nothing for this long. Replicas repeat
// the closed revision every second, so silence means the replica or the
// link to it is gone, even if the connection looks open (a blackholed
// network holds it open for minutes).
const idleTimeout = 3 * time.Second

var errIdle = errors.New("feed: no message from the replica for " + idleTimeout.String())

// Follow keeps one shard's change feed flowing into sink until ctx ends.
// It starts "from now", resumes after the last closed revision when a
// stream breaks, and moves to the shard's next replica on each failure. If
// the resume point was compacted away meanwhile, it starts afresh (the
// sink learns of the gap through Subscribed).
func Follow(ctx context.Context, m *shardmap.Cache, shardID uint64, sink Sink, log *slog.Logger) {
	FollowFrom(ctx, m, shardID, -1, sink, log)
}

// FollowFrom is Follow for a feed known up to closed (-1: from now): a
// shard made by a split is followed from its split revision.
func FollowFrom(ctx context.Context, m *shardmap.Cache, shardID uint64, closed int64, sink Sink, log *slog.Logger) {
	var failed string // the replica whose feed broke last
	for attempt := 0; ctx.Err() == nil; attempt++ {
		addrs := m.Replicas(shardID)
		if len(addrs) == 0 {
			if err := m.Refresh(ctx, time.Now()); err != nil {
				log.Warn("no replicas known for shard", "shard", shardID, "err", err)
			}
			retry.Sleep(ctx, feedBackoff.Delay(attempt))
			continue
		}
		addr := next(addrs, failed)
		began := time.Now()
		err := follow(ctx, m, addr, shardID, &closed, sink)
		if time.Since(began) > 10*time.Second {
			attempt = 0 // a stream that lived is no reason to back off
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errCompacted) {
			closed = -1
		}
		failed = addr
		log.Info("change feed interrupted; resubscribing", "shard", shardID, "replica", addr, "closed", closed, "err", err)
		if attempt%len(addrs) == len(addrs)-1 {
			m.Refresh(ctx, time.Now()) // every replica failed once: the map may be stale
		}
		retry.Sleep(ctx, feedBackoff.Delay(attempt))
	}
}

func follow(ctx context.Context, m *shardmap.Cache, addr string, shardID uint64, closed *int64, sink Sink) error {
	conn, err := m.Conn(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(idleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()
	fresh := *closed < 0 // StartRevision 0: from now
	stream, err := shardpb.NewShardClient(conn).Changes(ctx, &shardpb.ChangesRequest{ShardId: shardID, StartRevision: *closed + 1})
	if err != nil {
		return err
	}
	err = recvLoop(stream, shardID, closed, fresh, sink, func() { idle.Reset(idleTimeout) })
	if cause := context.Cause(ctx); errors.Is(cause, errIdle) {
		return cause
	}
	return err
}

// recvLoop applies the feed's messages to sink, calling alive after each.
func recvLoop(stream shardpb.Shard_ChangesClient, shardID uint64, closed *int64, fresh bool, sink Sink, alive func()) error {
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		alive()
		if resp.Compacted {
			return fmt.Errorf("%w (shard %d compacted at %d)", errCompacted, shardID, resp.CompactRevision)
		}
		// Splits first: the cache must wait for a new shard before this
		// message lets it release past the split.
		for _, child := range resp.Splits {
			sink.Split(shardID, child, fresh)
		}
		if fresh {
			sink.Subscribed(shardID, resp.ClosedRevision)
			fresh = false
		}
		revs, err := decode(resp.Changes)
		if err != nil {
			return err
		}
		sink.Apply(shardID, revs, resp.ClosedRevision, resp.CompactRevision)
		*closed = resp.ClosedRevision
	}
}

// decode unmarshals a feed message's changes.
func decode(changes []*shardpb.Change) ([]watchcache.Revision, error) {
	out := make([]watchcache.Revision, 0, len(changes))
	for _, ch := range changes {
		r := watchcache.Revision{Rev: ch.Revision, Events: make([]*mvccpb.Event, len(ch.Events))}
		for i, b := range ch.Events {
			ev := &mvccpb.Event{}
			if err := proto.Unmarshal(b, ev); err != nil {
				return nil, fmt.Errorf("feed: revision %d: %w", ch.Revision, err)
			}
			r.Events[i] = ev
		}
		out = append(out, r)
	}
	return out, nil
}

// next picks the replica after the one that failed last, in the shard
// map's order (followers first): a replica that just failed, maybe cut off
// from its shard, is tried again only after every other one.
func next(addrs []string, failed string) string {
	for i, a := range addrs {
		if a == failed {
			return addrs[(i+1)%len(addrs)]
		}
	}
	return addrs[0]
}

// feedBackoff spaces attempts to open a shard's feed.
var feedBackoff = retry.Backoff{Base: 50 * time.Millisecond, Max: time.Second}
