package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/keyspan"
	"github.com/tessera-kv/tessera/pkg/shardmap"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/watcher/internal/watchcache"
)

// Source answers the watch cache's questions from the replicas.
type Source struct{ M *shardmap.Cache }

// replicaTimeout bounds one replica's answer, so a replica cut off from its
// shard (whose ReadIndex hangs) costs a watch creation this long, not the
// caller's whole deadline, before the next replica is asked.
const replicaTimeout = 2 * time.Second

var _ watchcache.Source = Source{}

// Current is the highest applied revision of any shard after a Raft
// ReadIndex on each: every write acknowledged before the call is at or
// below it, and every later write gets a higher revision from the oracle.
func (s Source) Current(ctx context.Context) (int64, int64, error) {
	shards := s.M.Shards()
	if len(shards) == 0 {
		if err := s.M.Refresh(ctx, time.Now()); err != nil {
			return 0, 0, rpctypes.ErrGRPCNoLeader
		}
		shards = s.M.Shards()
	}
	// Every shard at once: a watch creation waits for the slowest.
	type answer struct {
		resp *shardpb.StatusResponse
		err  error
	}
	answers := make([]answer, len(shards))
	var wg sync.WaitGroup
	for i, d := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i].resp, answers[i].err = s.status(ctx, d.Id)
		}()
	}
	wg.Wait()
	var cur, compacted int64
	for i, a := range answers {
		if a.err != nil {
			return 0, 0, fmt.Errorf("feed: current revision of shard %d: %w", shards[i].Id, a.err)
		}
		cur = max(cur, a.resp.AppliedRevision)
		compacted = max(compacted, a.resp.CompactRevision)
	}
	return cur, compacted, nil
}

// status reads one shard's state after a ReadIndex.
func (s Source) status(ctx context.Context, shardID uint64) (resp *shardpb.StatusResponse, err error) {
	err = s.leaderFirst(ctx, shardID, func(ctx context.Context, c shardpb.ShardClient) (err error) {
		resp, err = c.Status(ctx, &shardpb.StatusRequest{ShardId: shardID, Linearizable: true})
		return err
	})
	return resp, err
}

// CloseRevision asks a shard's leader to close rev (a tick if the shard is
// idle), so the cache can release other shards' events up to it.
func (s Source) CloseRevision(ctx context.Context, shardID uint64, rev int64) error {
	err := s.leaderFirst(ctx, shardID, func(ctx context.Context, c shardpb.ShardClient) error {
		_, err := c.Close(ctx, &shardpb.CloseRequest{ShardId: shardID, Revision: rev})
		return err
	})
	if err != nil {
		return fmt.Errorf("feed: close revision %d of shard %d: %w", rev, shardID, err)
	}
	return nil
}

// leaderFirst runs fn against a shard's replicas until one answers: the
// leader hint first (its ReadIndex is the cheapest, and only it ticks),
// each for at most replicaTimeout. A follower's NotLeader answer updates
// the hint.
func (s Source) leaderFirst(ctx context.Context, shardID uint64, fn func(context.Context, shardpb.ShardClient) error) error {
	err := errors.New("no replicas")
	for _, addr := range slices.Backward(s.M.Replicas(shardID)) {
		c, cerr := s.M.Conn(addr)
		if cerr != nil {
			err = cerr
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, replicaTimeout)
		err = fn(rctx, shardpb.NewShardClient(c))
		cancel()
		if err == nil {
			return nil
		}
		if nl, ok := notLeader(err); ok && nl.LeaderStoreId != 0 {
			s.M.SetLeader(shardID, nl.LeaderStoreId)
		}
	}
	return err
}

// History reads [from, to] for a key range from the change logs of the
// shards it overlaps, merged by revision.
func (s Source) History(ctx context.Context, key, end []byte, from, to int64, fn func(int64, []*mvccpb.Event) error) error {
	if len(s.M.Shards()) == 0 {
		if err := s.M.Refresh(ctx, time.Now()); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cursors []*cursor
	for _, d := range s.M.Overlapping(key, end) {
		c, err := s.open(ctx, d, key, end, from, to)
		if err != nil {
			return err
		}
		cursors = append(cursors, c)
	}
	// A k-way merge: each shard's feed is in revision order and a revision
	// belongs to one shard.
	for {
		var min *cursor
		for _, c := range cursors {
			ch, err := c.peek()
			if err != nil {
				return err
			}
			if ch != nil && (min == nil || ch.Revision < min.buf[0].Revision) {
				min = c
			}
		}
		if min == nil {
			return nil
		}
		revs, err := decode(min.buf[:1])
		if err != nil {
			return err
		}
		min.buf = min.buf[1:]
		if err := fn(revs[0].Rev, revs[0].Events); err != nil {
			return err
		}
	}
}

func (s Source) open(ctx context.Context, d *metapb.ShardDescriptor, key, end []byte, from, to int64) (*cursor, error) {
	key, end = clip(d, key, end)
	req := &shardpb.ChangesRequest{ShardId: d.Id, StartRevision: from, EndRevision: to, Key: key, RangeEnd: rangeEndWire(end)}
	var lastErr error = errors.New("no replicas")
	for _, addr := range s.M.Replicas(d.Id) {
		conn, err := s.M.Conn(addr)
		if err != nil {
			lastErr = err
			continue
		}
		st, err := shardpb.NewShardClient(conn).Changes(ctx, req)
		if err != nil {
			lastErr = err
			continue
		}
		return &cursor{stream: st}, nil
	}
	return nil, fmt.Errorf("feed: history of shard %d: %w", d.Id, lastErr)
}

// clip narrows [key, end) (the cache's encoding: nil end is the single
// key, empty is the end of the keyspace) to the shard's range: a shard
// serves history only for keys it owns.
func clip(d *metapb.ShardDescriptor, key, end []byte) ([]byte, []byte) {
	if end == nil {
		return key, nil
	}
	s, _ := keyspan.Span{Key: key, End: end}.Clip(d.StartKey, d.EndKey)
	if len(s.Key) == 0 {
		s.Key = []byte{0} // an empty key asks for every key
	}
	return s.Key, s.End
}

// rangeEndWire turns the cache's range end back into etcd's encoding.
func rangeEndWire(end []byte) []byte {
	if end != nil && len(end) == 0 {
		return []byte{0}
	}
	return end
}

type cursor struct {
	stream shardpb.Shard_ChangesClient
	buf    []*shardpb.Change
	done   bool
}

// peek returns the cursor's next change, or nil at the end of its range.
func (c *cursor) peek() (*shardpb.Change, error) {
	for len(c.buf) == 0 && !c.done {
		resp, err := c.stream.Recv()
		if errors.Is(err, io.EOF) {
			c.done = true
			break
		}
		if err != nil {
			return nil, err
		}
		if resp.Compacted {
			return nil, &watchcache.CompactedError{Revision: resp.CompactRevision}
		}
		c.buf = resp.Changes
	}
	if len(c.buf) == 0 {
		return nil, nil
	}
	return c.buf[0], nil
}

// notLeader reads the NotLeader detail of a replica's answer.
func notLeader(err error) (*shardpb.NotLeader, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	for _, d := range st.Details() {
		if nl, ok := d.(*shardpb.NotLeader); ok {
			return nl, true
		}
	}
	return nil, false
}
