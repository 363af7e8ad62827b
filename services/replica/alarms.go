package replica

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
)

// DefaultQuotaBytes is etcd's default --quota-backend-bytes (2 GiB).
const DefaultQuotaBytes = 2 << 30

// DefaultFreeSpaceReserveBytes is the free disk space a store keeps by
// default: room for the memtables Badger writes through memory maps (a write
// to a full disk there kills the process with SIGBUS), a second or two of
// writes before the next check, and the deletes and compactions that free
// space again.
const DefaultFreeSpaceReserveBytes = 256 << 20

// quotaCheckInterval is how often a store compares its size to its quota
// and refreshes its view of the alarms.
const quotaCheckInterval = time.Second

// checkQuota raises this store's NOSPACE alarm when the store outgrows its
// quota or its filesystem has less free space than the reserve, and keeps
// the replica's no-space flag (which refuses puts and lease grants, as
// etcd's quota does) in step with the cluster's alarms. An alarm disarmed
// while the store is still short of space is raised again.
func (r *Replica) checkQuota() {
	alarms, err := r.alarms()
	if err != nil {
		return // no meta state yet
	}
	noSpace, mine := false, false
	for _, a := range alarms {
		if a.Type == int32(pb.AlarmType_NOSPACE) {
			noSpace = true
			mine = mine || a.StoreId == r.cfg.StoreID
		}
	}
	r.noSpace.Store(noSpace)
	if mine {
		return
	}
	size := r.used.bytes(time.Now())
	over, short := size > r.cfg.QuotaBytes, r.diskShort()
	if over || short {
		if over {
			r.log.Warn("store is over its quota: raising NOSPACE", "size", size, "quota", r.cfg.QuotaBytes)
		} else {
			r.log.Warn("disk almost full: raising NOSPACE; free space, then run etcdctl alarm disarm",
				"free", r.free.bytes(time.Now()), "reserve", r.cfg.FreeSpaceReserveBytes, "dir", r.cfg.DataDir)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ProposalTimeout)
		_, err := r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_SetAlarm{SetAlarm: &raftcmdpb.SetAlarm{
			StoreId: r.cfg.StoreID, Type: int32(pb.AlarmType_NOSPACE), Active: true}}})
		cancel()
		if err == nil {
			r.noSpace.Store(true)
		}
	}
}

// refusesPuts reports whether puts and lease grants get etcd's no-space
// error: a NOSPACE alarm is raised in the cluster, or this store's disk
// already has less free space than the reserve (the alarm follows within
// a check interval; a burst of writes must not fill the disk before it).
func (r *Replica) refusesPuts() bool { return r.noSpace.Load() || r.diskShort() }

// diskShort checks the free space at most every 100 ms.
func (r *Replica) diskShort() bool {
	if r.cfg.FreeSpaceReserveBytes == 0 {
		return false
	}
	free := r.free.bytes(time.Now())
	short := free >= 0 && free < r.cfg.FreeSpaceReserveBytes
	if short && !r.noSpace.Load() {
		select { // raise the alarm now rather than at the next check
		case r.quotaPoke <- struct{}{}:
		default:
		}
	}
	return short
}

// diskFigure is a disk figure of a store (its free space; its size) as
// last measured: every write asks for the free space, and the quota check,
// heartbeats, Status and metrics for the size, so each is measured at most
// once per maxAge (freeSpaceMaxAge if zero).
type diskFigure struct {
	measure func() int64 // bytes; negative when unknown
	maxAge  time.Duration

	mu      sync.Mutex
	free    int64
	checked time.Time
}

const freeSpaceMaxAge = 100 * time.Millisecond

// bytes returns the figure measured at most maxAge before now.
// Callers that come while a measurement runs wait for it: none may see a
// figure that was never measured (a free space of 0 refuses every put).
func (f *diskFigure) bytes(now time.Time) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.checked.IsZero() || now.Sub(f.checked) > cmp.Or(f.maxAge, freeSpaceMaxAge) {
		f.free, f.checked = f.measure(), now
	}
	return f.free
}

// alarms reads the active alarms from the local meta state.
func (r *Replica) alarms() ([]*metapb.Alarm, error) {
	v, err := r.nh.StaleRead(MetaShardID, metasm.AlarmsQuery{})
	if err != nil {
		return nil, err
	}
	return v.([]*metapb.Alarm), nil
}

// Alarm serves etcd's Alarm: GET lists the alarms (after a ReadIndex),
// ACTIVATE and DEACTIVATE raise and clear one through the meta shard's log.
// An alarm's member ID is the ID of the store that raised it.
func (m *metaService) Alarm(ctx context.Context, req *metapb.AlarmRequest) (*metapb.AlarmResponse, error) {
	var ar pb.AlarmRequest
	if err := proto.Unmarshal(req.Request, &ar); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{Revision: m.r.currentRevision()}}
	switch ar.Action {
	case pb.AlarmRequest_GET:
		rctx, cancel := m.r.withTimeout(ctx)
		v, err := m.r.nh.SyncRead(rctx, MetaShardID, metasm.AlarmsQuery{})
		cancel()
		if err != nil {
			return nil, toStatus(err)
		}
		for _, a := range v.([]*metapb.Alarm) {
			if ar.Alarm == pb.AlarmType_NONE || int32(ar.Alarm) == a.Type {
				resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: a.StoreId, Alarm: pb.AlarmType(a.Type)})
			}
		}
	case pb.AlarmRequest_ACTIVATE, pb.AlarmRequest_DEACTIVATE:
		if ar.Alarm == pb.AlarmType_NONE {
			return nil, status.Error(codes.InvalidArgument, "tessera: alarm type required")
		}
		active := ar.Action == pb.AlarmRequest_ACTIVATE
		res, err := m.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_SetAlarm{SetAlarm: &raftcmdpb.SetAlarm{
			StoreId: ar.MemberID, Type: int32(ar.Alarm), Active: active}}})
		if err != nil {
			return nil, toStatus(err)
		}
		if res.Value == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "tessera: cannot raise %v for member %x: only NOSPACE and CORRUPT, for a store of the cluster", ar.Alarm, ar.MemberID)
		}
		resp.Alarms = []*pb.AlarmMember{{MemberID: ar.MemberID, Alarm: ar.Alarm}}
	default:
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("tessera: unknown alarm action %v", ar.Action))
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return nil, err
	}
	return &metapb.AlarmResponse{Response: b}, nil
}
