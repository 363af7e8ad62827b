// Package fanout is the one place the gateway answers a request from several
// shards (CockroachDB's DistSender splits a batch by range descriptor and
// combines the answers the same way): a Range over keys of several shards is
// read from each at one revision and merged; the cluster's revision, which
// etcd's future-revision and compaction checks compare against, is the
// highest of every shard's.
//
// One revision across shards. Revisions come from one oracle and increase in
// real time, so the keys of every shard at one revision R are a consistent
// cut: a write that finished before another started has the smaller
// revision. A shard can be read at R once it has closed R (no entry at or
// below R can still apply there); an idle shard closes R with a tick when
// asked (Shard.Close).
package fanout

import (
	"context"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Reader reads across shards through the router.
type Reader struct {
	router *router.Router
}

// New returns a reader.
func New(r *router.Router) *Reader { return &Reader{router: r} }

// state is one shard's answer to Close.
type state struct {
	resp *shardpb.CloseResponse
}

// states asks each shard for its state (after a ReadIndex when
// linearizable): in one call to a store that holds them all when there is
// one (the first shard's leader if it does), else one call per shard.
func (f *Reader) states(ctx context.Context, shards []*metapb.ShardDescriptor, linearizable bool) ([]state, error) {
	if len(shards) > 1 {
		if addr := f.holderOfAll(shards); addr != "" {
			ids := make([]uint64, len(shards))
			gens := make([]uint64, len(shards))
			for i, d := range shards {
				ids[i], gens[i] = d.Id, d.Generation
			}
			var resp *shardpb.StatesResponse
			err := f.router.CallStore(ctx, addr, func(ctx context.Context, c grpc.ClientConnInterface) (err error) {
				resp, err = shardpb.NewShardClient(c).States(ctx, &shardpb.StatesRequest{ShardIds: ids, Linearizable: linearizable, Generations: gens})
				return err
			})
			if err == nil && len(resp.States) == len(shards) {
				out := make([]state, len(shards))
				for i, st := range resp.States {
					out[i].resp = st
				}
				return out, nil
			}
			// That store could not answer: each shard's leader will.
		}
	}
	out := make([]state, len(shards))
	err := each(ctx, shards, func(ctx context.Context, i int, d *metapb.ShardDescriptor) error {
		return f.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			out[i].resp, err = c.Close(ctx, &shardpb.CloseRequest{ShardId: d.Id, Linearizable: linearizable, Generation: d.Generation})
			return err
		})
	})
	return out, err
}

// States asks every data shard for its state (after a ReadIndex when
// linearizable) and returns them with the shards' descriptors, in key
// order.
func (f *Reader) States(ctx context.Context, linearizable bool) ([]*metapb.ShardDescriptor, []*shardpb.CloseResponse, error) {
	var (
		shards []*metapb.ShardDescriptor
		sts    []state
	)
	// A shard that split since the map was read answers WrongShard: with
	// the descriptors learned, every shard is asked again.
	err := f.router.Rerouting(ctx, func() (err error) {
		if shards, err = f.router.All(ctx); err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		sts, err = f.states(ctx, shards, linearizable)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	out := make([]*shardpb.CloseResponse, len(sts))
	for i, s := range sts {
		out[i] = s.resp
	}
	return shards, out, nil
}

// RevisionAt is the cluster's (etcd) revision as of rev, a revision the
// oracle served: the highest shard revision at or below it, once every
// shard has closed it. A write that changed nothing at entry revision rev
// reports it, as etcd reports its current revision.
func (f *Reader) RevisionAt(ctx context.Context, rev int64) (at int64, err error) {
	err = f.router.Rerouting(ctx, func() (err error) {
		at, err = f.revisionAt(ctx, rev)
		return err
	})
	return at, err
}

func (f *Reader) revisionAt(ctx context.Context, rev int64) (int64, error) {
	shards, err := f.router.All(ctx)
	if err != nil {
		return 0, status.Error(codes.Unavailable, err.Error())
	}
	var mu sync.Mutex
	var at int64
	err = each(ctx, shards, func(ctx context.Context, _ int, d *metapb.ShardDescriptor) error {
		return f.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) error {
			resp, err := c.Close(ctx, &shardpb.CloseRequest{ShardId: d.Id, Revision: rev, Generation: d.Generation})
			if err == nil {
				mu.Lock()
				at = max(at, resp.RevisionAt)
				mu.Unlock()
			}
			return err
		})
	})
	return at, err
}

// holderOfAll is the address of a store holding a replica of every shard
// given: the first shard's leader if it does, else the first such store.
func (f *Reader) holderOfAll(shards []*metapb.ShardDescriptor) string {
	count := map[uint64]int{}
	for _, d := range shards {
		for _, id := range d.Replicas {
			count[id]++
		}
	}
	if l := f.router.LeaderHint(shards[0].Id); l != 0 && count[l] == len(shards) {
		return f.router.StoreAddr(l)
	}
	for _, id := range shards[0].Replicas {
		if count[id] == len(shards) {
			return f.router.StoreAddr(id)
		}
	}
	return ""
}

// ClusterRevision is the cluster's current (etcd) revision: the highest of
// every data shard's, each after a ReadIndex when linearizable. It is then
// at or above the revision of every write acknowledged before the call.
func (f *Reader) ClusterRevision(ctx context.Context, linearizable bool) (int64, error) {
	rev, _, err := f.cluster(ctx, linearizable)
	return rev, err
}

// cluster asks every data shard for its state and returns the highest
// revision and Raft term.
func (f *Reader) cluster(ctx context.Context, linearizable bool) (int64, uint64, error) {
	_, sts, err := f.States(ctx, linearizable)
	if err != nil {
		return 0, 0, err
	}
	var rev int64
	var term uint64
	for _, s := range sts {
		rev, term = max(rev, s.Revision), max(term, s.RaftTerm)
	}
	return rev, term, nil
}

// Range answers req over shards (those its keys fall in, in key order) of a
// cluster with several data shards, as etcd answers it: at req's revision,
// or else at the cluster's current revision C (the highest of every
// shard's, so at or above every write acknowledged before the call), with
// C in the header either way. The shards read close the revision first: an
// idle one may not have, and none of its entries may still land at or
// below it once it is read.
func (f *Reader) Range(ctx context.Context, req *pb.RangeRequest, shards []*metapb.ShardDescriptor) (*pb.RangeResponse, uint64, error) {
	current, term, err := f.cluster(ctx, !req.Serializable)
	if err != nil {
		return nil, 0, err
	}
	at := req.Revision
	switch {
	case at <= 0:
		at = current
	case at > current:
		return nil, 0, rpctypes.ErrGRPCFutureRev
	}
	part := partRequest(req)
	part.Revision = at
	b, err := proto.Marshal(part)
	if err != nil {
		return nil, 0, err
	}
	parts := make([]*pb.RangeResponse, len(shards))
	err = each(ctx, shards, func(ctx context.Context, i int, d *metapb.ShardDescriptor) error {
		return f.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) error {
			out, err := c.Range(ctx, &shardpb.RangeRequest{ShardId: d.Id, Generation: d.Generation, Request: b, ClosedRead: true})
			if err != nil {
				return err
			}
			resp := &pb.RangeResponse{}
			if err := proto.Unmarshal(out.Response, resp); err != nil {
				return status.Errorf(codes.Internal, "tessera: bad range response: %v", err)
			}
			parts[i] = resp
			return nil
		})
	})
	if err != nil {
		return nil, 0, err
	}
	resp := Merge(req, parts)
	resp.Header.Revision = current
	return resp, term, nil
}

// each runs fn for every shard in parallel and returns the first error; the
// others are cancelled then.
func each(ctx context.Context, shards []*metapb.ShardDescriptor, fn func(context.Context, int, *metapb.ShardDescriptor) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i, d := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, i, d); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	return first
}

// sortsFirstKeys reports etcd's rule for a sort target with no sort order:
// it sorts only the first limit+1 keys in key order, then cuts at limit
// (the limit applies before sorting, unlike with an order given).
func sortsFirstKeys(req *pb.RangeRequest) bool {
	return req.SortOrder == pb.RangeRequest_NONE && req.SortTarget != pb.RangeRequest_KEY && req.Limit > 0 &&
		req.MinModRevision == 0 && req.MaxModRevision == 0 && req.MinCreateRevision == 0 && req.MaxCreateRevision == 0
}

// partRequest is what each shard is asked for req: the same, except that
// values come back when the merge sorts by them, and under etcd's
// first-keys rule each shard returns its first limit+1 keys in key order.
func partRequest(req *pb.RangeRequest) *pb.RangeRequest {
	part := proto.Clone(req).(*pb.RangeRequest)
	if req.SortTarget == pb.RangeRequest_VALUE {
		part.KeysOnly = false
	}
	if sortsFirstKeys(req) {
		part.SortTarget, part.Limit = pb.RangeRequest_KEY, req.Limit+1
	}
	return part
}

// Merge combines the answers of shards (in key order) to one Range, each
// read with partRequest(req) at one revision, as one shard holding all their keys would
// have answered: count is the total, the key-values are ordered as req asks
// and cut at its limit, and more says whether the limit cut any. The
// caller fills in the header.
func Merge(req *pb.RangeRequest, parts []*pb.RangeResponse) *pb.RangeResponse {
	out := &pb.RangeResponse{Header: &pb.ResponseHeader{}}
	var kvs []*mvccpb.KeyValue
	for _, p := range parts {
		out.Count += p.Count
		out.More = out.More || p.More
		kvs = append(kvs, p.Kvs...)
	}
	if sortsFirstKeys(req) {
		// The parts answered partRequest: their first keys, in key order.
		out.More = false
		if int64(len(kvs)) > req.Limit+1 {
			kvs = kvs[:req.Limit+1]
		}
	}
	mvcc.SortKVs(kvs, req)
	if req.Limit > 0 && int64(len(kvs)) > req.Limit {
		kvs, out.More = kvs[:req.Limit], true
	}
	if req.KeysOnly {
		for _, kv := range kvs {
			kv.Value = nil
		}
	}
	if !req.CountOnly {
		out.Kvs = kvs
	}
	return out
}
