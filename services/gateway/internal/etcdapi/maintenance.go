package etcdapi

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/gateway/internal/fanout"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Version is the etcd API version Tessera implements; kube-apiserver reads
// it to decide which features (watch progress requests) it may use.
const Version = "3.7.0"

// Maintenance is etcd's Maintenance service. The members clients see are
// gateways; each call reaches the replicas that hold the data: Status and
// HashKV the data shards' leaders, Defragment every store, MoveLeader the
// leaders of every shard, Alarm the meta shard, Snapshot one store that
// holds every shard. Downgrade answers Unimplemented.
type Maintenance struct {
	pb.UnimplementedMaintenanceServer
	router  *router.Router
	fan     *fanout.Reader
	members Members
	hdr     Header
}

// NewMaintenance returns the Maintenance service.
func NewMaintenance(r *router.Router, m Members, h Header) *Maintenance {
	return &Maintenance{router: r, fan: fanout.New(r), members: m, hdr: h}
}

func (m *Maintenance) shards(ctx context.Context) ([]*metapb.ShardDescriptor, error) {
	shards, err := m.router.All(ctx)
	if err != nil || len(shards) == 0 {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	return shards, nil
}

// Status reports the version and the data shards' Raft position and size.
// With several data shards, indexes and terms are the first shard's and
// sizes add up (each store is one Badger DB; shards share it).
func (m *Maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	shards, err := m.shards(ctx)
	if err != nil {
		return nil, err
	}
	var first *shardpb.StatusResponse
	var rev int64
	for _, d := range shards {
		var st *shardpb.StatusResponse
		err := m.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			st, err = c.Status(ctx, &shardpb.StatusRequest{ShardId: d.Id})
			return err
		})
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = st
		}
		rev = max(rev, st.AppliedRevision)
	}
	resp := &pb.StatusResponse{
		Header:           m.hdr.fill(&pb.ResponseHeader{Revision: rev}, first.RaftTerm),
		Version:          Version,
		DbSize:           first.DbSize,
		DbSizeInUse:      first.DbSize, // Badger reports no free pages: all of it is in use
		RaftIndex:        first.AppliedIndex,
		RaftTerm:         first.RaftTerm,
		RaftAppliedIndex: first.AppliedIndex,
		StorageVersion:   "3.6.0",
	}
	resp.DbSizeQuota = first.Quota
	// etcd's size is its member's backend, which the quota applies to; a
	// store here holds only its own shards, so the size is the largest
	// store's, as the meta leader last heard (the first shard's store's
	// if it cannot say). tessera store list has every store's.
	if size := m.largestStore(ctx); size > 0 {
		resp.DbSize, resp.DbSizeInUse = size, size
	}
	alarms, err := m.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
	if err != nil {
		return nil, err
	}
	for _, a := range alarms.Alarms {
		resp.Errors = append(resp.Errors, fmt.Sprintf("memberID:%d alarm:%s ", a.MemberID, a.Alarm))
	}
	if first.LeaderStoreId != 0 {
		// The members clients see are gateways: they have a leader when
		// the data has one, and all name the same gateway as it.
		if resp.Leader, err = m.members.Leader(ctx); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// Snapshot streams a backup of the cluster (Tessera's format: the meta
// state and every data shard; `tessera snapshot restore` reads it) from the
// store leading the first data shard. etcdctl snapshot save writes it to a
// file as it does etcd's.
func (m *Maintenance) Snapshot(_ *pb.SnapshotRequest, stream pb.Maintenance_SnapshotServer) error {
	ctx := stream.Context()
	shards, err := m.shards(ctx)
	if err != nil {
		return err
	}
	hdr := m.hdr.fill(nil, 0)
	// Mutating: once bytes went to the client, a broken stream is not resent.
	return m.router.Call(ctx, shards[0], true, func(ctx context.Context, c shardpb.ShardClient) error {
		up, err := c.Backup(ctx, &shardpb.BackupRequest{})
		if err != nil {
			return err
		}
		for {
			chunk, err := up.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := stream.Send(&pb.SnapshotResponse{Header: hdr, Blob: chunk.Data, Version: Version}); err != nil {
				return err
			}
		}
	})
}

// Alarm lists, raises or clears alarms (kept in the meta shard; an
// alarm's member ID is the store that raised it).
func (m *Maintenance) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var out *metapb.AlarmResponse
	err = m.router.CallMeta(ctx, r.Action != pb.AlarmRequest_GET, func(ctx context.Context, c metapb.MetaClient) (err error) {
		out, err = c.Alarm(ctx, &metapb.AlarmRequest{Request: b})
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.AlarmResponse{}
	if err := proto.Unmarshal(out.Response, resp); err != nil {
		return nil, status.Errorf(codes.Internal, "tessera: bad alarm response: %v", err)
	}
	resp.Header = m.hdr.fill(resp.Header, 0)
	return resp, nil
}

// HashKV hashes every data shard at a revision on its leader (Tessera's
// own admin compares the replicas of a shard; see the shard API).
func (m *Maintenance) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	if r.Revision < 0 {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	shards, err := m.shards(ctx)
	if err != nil {
		return nil, err
	}
	rev := r.Revision
	if len(shards) > 1 {
		// Every shard hashed at one revision of the cluster, closed on
		// each first, so replicas and gateways asked alike agree.
		cluster, err := m.fan.ClusterRevision(ctx, true)
		if err != nil {
			return nil, err
		}
		switch {
		case rev == 0:
			rev = cluster
		case rev > cluster:
			return nil, rpctypes.ErrGRPCFutureRev
		}
		if _, err := m.fan.RevisionAt(ctx, rev); err != nil {
			return nil, err
		}
		if shards, err = m.shards(ctx); err != nil {
			return nil, err
		}
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	resp := &pb.HashKVResponse{}
	for _, d := range shards {
		var out *shardpb.HashKVResponse
		err := m.router.Call(ctx, d, false, func(ctx context.Context, c shardpb.ShardClient) (err error) {
			out, err = c.HashKV(ctx, &shardpb.HashKVRequest{ShardId: d.Id, Revision: rev})
			return err
		})
		if err != nil {
			return nil, err
		}
		if len(shards) == 1 {
			resp.Hash = out.Hash
		} else {
			h.Write([]byte{byte(out.Hash >> 24), byte(out.Hash >> 16), byte(out.Hash >> 8), byte(out.Hash)})
			resp.Hash = h.Sum32()
		}
		resp.CompactRevision = max(resp.CompactRevision, out.CompactRevision)
		resp.HashRevision = max(resp.HashRevision, out.HashRevision)
	}
	resp.Header = m.hdr.fill(&pb.ResponseHeader{Revision: resp.HashRevision}, 0)
	return resp, nil
}

// Hash is HashKV at the current revision (etcd's Hash, for testing only,
// covers its whole backend; Tessera's keyspace is its data).
func (m *Maintenance) Hash(ctx context.Context, _ *pb.HashRequest) (*pb.HashResponse, error) {
	kv, err := m.HashKV(ctx, &pb.HashKVRequest{})
	if err != nil {
		return nil, err
	}
	return &pb.HashResponse{Header: kv.Header, Hash: kv.Hash}, nil
}

// Defragment compacts the files of every store.
func (m *Maintenance) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	for _, addr := range m.router.StoreAddresses() {
		err := m.router.CallStore(ctx, addr, func(ctx context.Context, c grpc.ClientConnInterface) error {
			_, err := shardpb.NewShardClient(c).Defragment(ctx, &shardpb.DefragmentRequest{})
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return &pb.DefragmentResponse{Header: m.hdr.fill(nil, 0)}, nil
}

// MoveLeader moves the leadership of every shard, the meta shard included,
// to a store. etcd's target is a member; Tessera's Raft members are the
// replica stores, so the target is a store ID (see the shard map).
func (m *Maintenance) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	shards, err := m.shards(ctx)
	if err != nil {
		return nil, err
	}
	meta := m.router.MetaShard()
	if meta == nil {
		return nil, rpctypes.ErrGRPCNoLeader // the shard map cannot be read
	}
	if !hasStore(meta, r.TargetID) {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	for _, d := range append([]*metapb.ShardDescriptor{meta}, shards...) {
		if !hasStore(d, r.TargetID) {
			continue
		}
		err := m.router.CallConn(ctx, d, false, func(ctx context.Context, c grpc.ClientConnInterface) error {
			_, err := shardpb.NewShardClient(c).TransferLeader(ctx, &shardpb.TransferLeaderRequest{ShardId: d.Id, TargetStoreId: r.TargetID})
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return &pb.MoveLeaderResponse{Header: m.hdr.fill(nil, 0)}, nil
}

func hasStore(d *metapb.ShardDescriptor, store uint64) bool {
	for _, id := range d.Replicas {
		if id == store {
			return true
		}
	}
	return false
}

// Members is the gateway tier as clients see it (internal/members).
type Members interface {
	// Live lists the live gateways by member ID, this one among them.
	Live(ctx context.Context) ([]*metapb.Gateway, error)
	// Leader is the member every gateway reports as etcd's leader.
	Leader(ctx context.Context) (uint64, error)
}

// Cluster is etcd's Cluster service. The members clients see are the live
// gateways, at their advertised client URLs; the replica tier's membership
// is Tessera's own (its stores), so member changes through the etcd API
// are refused with a reason.
type Cluster struct {
	pb.UnsafeClusterServer
	hdr     Header
	members Members
}

var _ pb.ClusterServer = (*Cluster)(nil)

// NewCluster returns the Cluster service of a gateway.
func NewCluster(h Header, m Members) *Cluster {
	return &Cluster{hdr: h, members: m}
}

func (c *Cluster) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	live, err := c.members.Live(ctx)
	if err != nil {
		return nil, err
	}
	resp := &pb.MemberListResponse{Header: c.hdr.fill(nil, 0)}
	for _, g := range live {
		resp.Members = append(resp.Members, &pb.Member{ID: g.MemberId, Name: g.Name, ClientURLs: g.ClientUrls})
	}
	return resp, nil
}

var errMembership = status.Error(codes.FailedPrecondition,
	"tessera: etcd members are Tessera gateways; add or remove replica stores with Tessera's admin API, and gateways by running more or fewer of them")

func (c *Cluster) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, errMembership
}

func (c *Cluster) MemberRemove(context.Context, *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return nil, errMembership
}

func (c *Cluster) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, errMembership
}

func (c *Cluster) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, errMembership
}

// largestStore is the largest size a live store reported (0: unknown).
func (m *Maintenance) largestStore(ctx context.Context) int64 {
	ctx, cancel := context.WithTimeout(ctx, time.Second) // not worth a slow Status
	defer cancel()
	stores, _ := m.router.Stores(ctx) // none: the caller's fallback
	var size int64
	for _, st := range stores {
		if st.State == metapb.StoreStatus_STATE_UP {
			size = max(size, st.UsedBytes)
		}
	}
	return size
}
