// Package etcdapi implements etcd's v3 gRPC services in the gateway. Each
// handler validates the request, routes it to the shard that owns its keys,
// maps the answer, and fills the response header; nothing else.
package etcdapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/fanout"
	"github.com/tessera-kv/tessera/services/gateway/internal/reqcheck"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Header fills the identity fields of response headers.
type Header struct {
	ClusterID uint64
	MemberID  uint64
}

func (h Header) fill(hdr *pb.ResponseHeader, term uint64) *pb.ResponseHeader {
	if hdr == nil {
		hdr = &pb.ResponseHeader{}
	}
	hdr.ClusterId, hdr.MemberId, hdr.RaftTerm = h.ClusterID, h.MemberID, term
	return hdr
}

// KV is etcd's KV service.
type KV struct {
	pb.UnsafeKVServer
	router *router.Router
	fan    *fanout.Reader
	leases *Lease
	limits reqcheck.Limits
	hdr    Header
}

var _ pb.KVServer = (*KV)(nil)

// NewKV returns the KV service.
func NewKV(r *router.Router, leases *Lease, l reqcheck.Limits, h Header) *KV {
	return &KV{router: r, fan: fanout.New(r), leases: leases, limits: l, hdr: h}
}

// routeEnd turns a request's range_end into the router's form.
func routeEnd(end []byte) []byte {
	switch {
	case len(end) == 0:
		return nil
	case len(end) == 1 && end[0] == 0:
		return []byte{}
	}
	return end
}

// shardsOf resolves the shards that own [key, end). A range_end at or
// below key is an empty range (etcd answers it with no keys): it goes to
// the shard of key, which finds nothing in it.
func (s *KV) shardsOf(ctx context.Context, key, end []byte) ([]*metapb.ShardDescriptor, error) {
	end = routeEnd(end)
	if len(end) > 0 && bytes.Compare(end, key) <= 0 {
		end = nil
	}
	shards, err := s.router.Shards(ctx, key, end)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if len(shards) == 0 {
		return nil, status.Errorf(codes.Unavailable, "tessera: no shard owns key %q", key)
	}
	return shards, nil
}

// crossShard is the answer to a request that needs an atomic write (or a
// transaction's reads) across shards.
func crossShard(shards []*metapb.ShardDescriptor) error {
	ids := make([]string, len(shards))
	for i, d := range shards {
		ids[i] = fmt.Sprint(d.Id)
	}
	return status.Errorf(codes.FailedPrecondition, "tessera: the request's keys are in shards %s: transactions and deletes across shards are not supported yet (nothing was changed)", strings.Join(ids, ", "))
}

// Range reads one shard, or several at one revision (fanout).
func (s *KV) Range(ctx context.Context, r *pb.RangeRequest) (resp *pb.RangeResponse, err error) {
	if err := reqcheck.Range(r); err != nil {
		return nil, err
	}
	err = s.router.Rerouting(ctx, func() (err error) {
		resp, err = s.rangeRouted(ctx, r)
		return err
	})
	return resp, err
}

func (s *KV) rangeRouted(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	shards, err := s.shardsOf(ctx, r.Key, r.RangeEnd)
	if err != nil {
		return nil, err
	}
	if len(shards) > 1 || s.severalShards(ctx) {
		// With several shards in the cluster, the header's revision is
		// the cluster's, as in etcd, so even a read of one shard asks
		// every shard where it is.
		return s.fanRange(ctx, r, shards)
	}
	shard := shards[0]
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, err
	}
	var out *shardpb.RangeResponse
	err = s.router.Call(ctx, shard, false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
		out, err = c.Range(ctx, &shardpb.RangeRequest{ShardId: shard.Id, Generation: shard.Generation, Request: b})
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.RangeResponse{}
	if err := proto.Unmarshal(out.Response, resp); err != nil {
		return nil, status.Errorf(codes.Internal, "tessera: bad range response: %v", err)
	}
	resp.Header = s.hdr.fill(resp.Header, out.RaftTerm)
	return resp, nil
}

func (s *KV) fanRange(ctx context.Context, r *pb.RangeRequest, shards []*metapb.ShardDescriptor) (*pb.RangeResponse, error) {
	resp, term, err := s.fan.Range(ctx, r, shards)
	if err != nil {
		return nil, err
	}
	resp.Header = s.hdr.fill(resp.Header, term)
	return resp, nil
}

// severalShards reports whether the cluster has more than one data shard.
func (s *KV) severalShards(ctx context.Context) bool {
	all, err := s.router.All(ctx)
	return err == nil && len(all) > 1
}

// rangeStreamChunk bounds the key-values of one RangeStream message.
const rangeStreamChunk = 1000

// RangeStream answers a Range in chunks; header, count and more arrive with
// the last chunk, as in etcd 3.7.
func (s *KV) RangeStream(r *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	if err := reqcheck.Range(r); err != nil {
		return err
	}
	if r.SortOrder != pb.RangeRequest_NONE && !(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND) {
		return status.Errorf(codes.Unimplemented, "RangeStream does not support custom sort orders")
	}
	if r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0 {
		return status.Errorf(codes.Unimplemented, "RangeStream does not support revision filters")
	}
	resp, err := s.Range(stream.Context(), r)
	if err != nil {
		return err
	}
	kvs := resp.Kvs
	for len(kvs) > rangeStreamChunk {
		if err := stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Kvs: kvs[:rangeStreamChunk]}}); err != nil {
			return err
		}
		kvs = kvs[rangeStreamChunk:]
	}
	resp.Kvs = kvs
	return stream.Send(&pb.RangeStreamResponse{RangeResponse: resp})
}

// Put is a one-op txn.
func (s *KV) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := reqcheck.Put(r, s.limits); err != nil {
		return nil, err
	}
	txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: r}}}}
	resp, err := s.write(ctx, txn, r.Key, nil)
	if err != nil {
		return nil, err
	}
	out := resp.Responses[0].GetResponsePut()
	out.Header = resp.Header
	return out, nil
}

// DeleteRange is a one-op txn.
func (s *KV) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := reqcheck.DeleteRange(r); err != nil {
		return nil, err
	}
	txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}}}
	resp, err := s.write(ctx, txn, r.Key, r.RangeEnd)
	if err != nil {
		return nil, err
	}
	out := resp.Responses[0].GetResponseDeleteRange()
	out.Header = resp.Header
	return out, nil
}

// Txn runs a transaction whose keys all live in one shard.
func (s *KV) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := reqcheck.Txn(r, s.limits); err != nil {
		return nil, err
	}
	var first []byte
	var firstEnd []byte
	spans := 0
	reqcheck.Keys(r, func(k, e []byte) {
		if spans == 0 {
			first, firstEnd = k, e
		}
		spans++
	})
	if spans == 0 {
		// A txn with no keys at all still answers with a header.
		first = []byte{0}
	}
	if !reqcheck.ReadOnly(r) {
		return s.write(ctx, r, first, firstEnd)
	}
	var resp *pb.TxnResponse
	err := s.router.Rerouting(ctx, func() (err error) {
		resp, err = s.readTxn(ctx, r, first, firstEnd)
		return err
	})
	return resp, err
}

// shardOfTxn resolves the one shard holding every key range of the txn.
func (s *KV) shardOfTxn(ctx context.Context, r *pb.TxnRequest, key, end []byte) (*metapb.ShardDescriptor, error) {
	var (
		shards []*metapb.ShardDescriptor
		seen   = map[uint64]bool{}
		lookup error
	)
	add := func(k, e []byte) {
		if lookup != nil {
			return
		}
		sh, err := s.shardsOf(ctx, k, e)
		if err != nil {
			lookup = err
			return
		}
		for _, d := range sh {
			if !seen[d.Id] {
				seen[d.Id] = true
				shards = append(shards, d)
			}
		}
	}
	add(key, end)
	reqcheck.Keys(r, add)
	switch {
	case lookup != nil:
		return nil, lookup
	case len(shards) > 1:
		sort.Slice(shards, func(i, j int) bool { return bytes.Compare(shards[i].StartKey, shards[j].StartKey) < 0 })
		return nil, crossShard(shards)
	}
	return shards[0], nil
}

func (s *KV) readTxn(ctx context.Context, r *pb.TxnRequest, key, end []byte) (*pb.TxnResponse, error) {
	shard, err := s.shardOfTxn(ctx, r, key, end)
	if err != nil {
		return nil, err
	}
	serializable := true
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			serializable = serializable && u.GetRequestRange().GetSerializable()
		}
	}
	if !s.severalShards(ctx) {
		out, err := s.callTxn(ctx, shard, r, txnCall{readOnly: true, serializable: serializable})
		if err != nil {
			return nil, err
		}
		return s.txnAnswer(ctx, out)
	}
	// As a Range: at the cluster's revision, which the header carries.
	current, err := s.fan.ClusterRevision(ctx, !serializable)
	if err != nil {
		return nil, err
	}
	out, err := s.callTxn(ctx, shard, r, txnCall{readOnly: true, readAt: current})
	if err != nil {
		return nil, err
	}
	resp, err := s.txnAnswer(ctx, out)
	if err != nil {
		return nil, err
	}
	setHeaders(resp, current)
	return resp, nil
}

// txnCall is how a txn goes to its shard.
type txnCall struct {
	readOnly, serializable bool
	readAt                 int64 // read-only, at this revision (closed first)
	epochs                 map[int64]uint64
}

// write sends a txn with writes to its shard's leader, routing again
// while the shard answers WrongShard (which changed nothing). Only the
// routing and the shard's call are retried: once the shard applied the
// txn, nothing after it (the headers' cluster revision) may send it again.
func (s *KV) write(ctx context.Context, r *pb.TxnRequest, key, end []byte) (*pb.TxnResponse, error) {
	var out *shardpb.TxnResponse
	err := s.router.Rerouting(ctx, func() (err error) {
		out, err = s.writeCall(ctx, r, key, end)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp, err := s.txnAnswer(ctx, out)
	if router.IsWrongShard(err) {
		// The txn applied; a split while its header was computed must not
		// read as "changed nothing, route again" to anyone above.
		err = status.Error(codes.Unavailable, status.Convert(err).Message())
	}
	return resp, err
}

func (s *KV) writeCall(ctx context.Context, r *pb.TxnRequest, key, end []byte) (*shardpb.TxnResponse, error) {
	// A key may only be attached to a live lease. The shard checks again
	// as it applies the txn, against the epoch seen here: a revoke that
	// lands between this check and the txn wins (no key outlives a lease).
	var epochs map[int64]uint64
	for _, id := range reqcheck.Leases(r) {
		e, err := s.leases.epoch(ctx, id)
		if err != nil {
			return nil, err
		}
		if epochs == nil {
			epochs = map[int64]uint64{}
		}
		epochs[id] = e
	}
	shard, err := s.shardOfTxn(ctx, r, key, end)
	if err != nil {
		return nil, err
	}
	return s.callTxn(ctx, shard, r, txnCall{epochs: epochs})
}

// callTxn sends a txn to its shard; txnAnswer makes the client's answer.
func (s *KV) callTxn(ctx context.Context, shard *metapb.ShardDescriptor, r *pb.TxnRequest, call txnCall) (*shardpb.TxnResponse, error) {
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, err
	}
	var out *shardpb.TxnResponse
	err = s.router.Call(ctx, shard, !call.readOnly, func(ctx context.Context, c shardpb.ShardClient) (err error) {
		out, err = c.Txn(ctx, &shardpb.TxnRequest{ShardId: shard.Id, Generation: shard.Generation, Request: b,
			ReadOnly: call.readOnly, Serializable: call.serializable, Puts: !call.readOnly && reqcheck.HasPuts(r),
			LeaseEpochs: call.epochs, ReadAt: call.readAt})
		return err
	})
	return out, err
}

// txnAnswer decodes a shard's txn answer and gives its headers the
// cluster's revision.
func (s *KV) txnAnswer(ctx context.Context, out *shardpb.TxnResponse) (*pb.TxnResponse, error) {
	resp := &pb.TxnResponse{}
	if err := proto.Unmarshal(out.Response, resp); err != nil {
		return nil, status.Errorf(codes.Internal, "tessera: bad txn response: %v", err)
	}
	if e := out.EntryRevision; e > 0 && s.severalShards(ctx) {
		// The headers say the shard's revision; etcd's say the store's,
		// the cluster's: as of the entry for a txn that changed nothing,
		// as of just before it for the reads of one that did.
		switch {
		case resp.Header.GetRevision() < e:
			at, err := s.fan.RevisionAt(ctx, e)
			if err != nil {
				return nil, err
			}
			setHeaders(resp, at)
		case hasPartHeaders(resp):
			before, err := s.fan.RevisionAt(ctx, e-1)
			if err != nil {
				return nil, err
			}
			// A part after the txn's first write already says the
			// txn's revision; one before it, the shard's from before.
			top := resp.Header.Revision
			mapHeaders(resp, func(r int64) int64 {
				if r == top {
					return r
				}
				return before
			})
		}
	}
	resp.Header = s.hdr.fill(resp.Header, out.RaftTerm)
	return resp, nil
}

// setHeaders sets the revision of a txn's header and of its responses'
// headers (a txn that changed nothing answers every part at one revision).
func setHeaders(resp *pb.TxnResponse, rev int64) {
	if resp.Header == nil {
		resp.Header = &pb.ResponseHeader{}
	}
	resp.Header.Revision = rev
	mapHeaders(resp, func(int64) int64 { return rev })
}

// mapHeaders replaces the revision of every header of a txn's responses
// (not the txn's own) with f of it, where one is set.
func mapHeaders(resp *pb.TxnResponse, f func(int64) int64) {
	for _, r := range resp.Responses {
		var h *pb.ResponseHeader
		switch op := r.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			h = op.ResponseRange.Header
		case *pb.ResponseOp_ResponseDeleteRange:
			h = op.ResponseDeleteRange.Header
		case *pb.ResponseOp_ResponseTxn:
			h = op.ResponseTxn.Header
			mapHeaders(op.ResponseTxn, f)
		}
		if h != nil && h.Revision != 0 { // etcd leaves a nested txn's header empty
			h.Revision = f(h.Revision)
		}
	}
}

// hasPartHeaders reports whether a txn's responses carry headers of their
// own (ranges and deletes do; puts carry the txn's).
func hasPartHeaders(resp *pb.TxnResponse) bool {
	for _, r := range resp.Responses {
		switch op := r.Response.(type) {
		case *pb.ResponseOp_ResponseRange, *pb.ResponseOp_ResponseDeleteRange:
			return true
		case *pb.ResponseOp_ResponseTxn:
			if hasPartHeaders(op.ResponseTxn) {
				return true
			}
		}
	}
	return false
}

// Compact compacts every shard at the revision, checked first against the
// cluster's revision (the highest of every shard's): a shard whose own
// revision is lower compacts there too, as its keys at that revision are
// its current ones. With one data shard this is etcd's compaction exactly.
func (s *KV) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	cluster, err := s.fan.ClusterRevision(ctx, true)
	if err != nil {
		return nil, err
	}
	if r.Revision > cluster {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	// One meta entry records the compaction for every shard (refused at
	// or below the last one, as etcd refuses it); the shards then apply
	// it, here or, for any not reached, through their leaders' reconciler.
	// (At 0 or below there is nothing to record: each shard answers as
	// etcd does, accepting 0 only where never compacted.)
	if r.Revision > 0 {
		if err := s.router.CallMeta(ctx, true, func(ctx context.Context, c metapb.MetaClient) error {
			_, err := c.Compact(ctx, &metapb.CompactRequest{Revision: r.Revision})
			return err
		}); err != nil {
			return nil, err
		}
	}
	// Every shard known after the entry: one split since is compacted too.
	shards, err := s.router.All(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &pb.CompactionResponse{}
	for _, shard := range shards {
		var out *shardpb.CompactResponse
		err := s.router.Call(ctx, shard, true, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			out, err = c.Compact(ctx, &shardpb.CompactRequest{ShardId: shard.Id, Revision: r.Revision, ClusterChecked: true})
			return err
		})
		if r.Revision > 0 && errors.Is(err, rpctypes.ErrGRPCCompacted) {
			continue // its leader's reconciler got there first
		}
		if err != nil {
			return nil, err
		}
		if resp.Header == nil || out.Revision > resp.Header.Revision {
			resp.Header = s.hdr.fill(&pb.ResponseHeader{Revision: out.Revision}, out.RaftTerm)
		}
	}
	if resp.Header == nil {
		resp.Header = s.hdr.fill(&pb.ResponseHeader{Revision: cluster}, 0)
	}
	return resp, nil
}
