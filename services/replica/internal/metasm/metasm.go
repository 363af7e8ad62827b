// Package metasm is the state machine of the meta shard: the shard map, the
// revision oracle's high-water mark, the leases, alarms and the auth store.
// Its state is small, so it lives in memory and is rebuilt from the Raft
// log and snapshots (dragonboat IStateMachine); Update is deterministic.
package metasm

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

// StateQuery asks Lookup for a copy of the whole *metapb.MetaState.
type StateQuery struct{}

// StateMachine holds the meta state.
type StateMachine struct {
	mu    sync.RWMutex
	state *metapb.MetaState
}

var _ sm.IStateMachine = (*StateMachine)(nil)

// Factory returns a constructor that starts from the bootstrap state (the
// same on every replica: it comes from the cluster's first configuration).
func Factory(bootstrap *metapb.MetaState) sm.CreateStateMachineFunc {
	return func(uint64, uint64) sm.IStateMachine {
		return &StateMachine{state: proto.Clone(bootstrap).(*metapb.MetaState)}
	}
}

// Update applies one MetaCommand.
func (s *StateMachine) Update(e sm.Entry) (sm.Result, error) {
	var cmd raftcmdpb.MetaCommand
	if err := proto.Unmarshal(e.Cmd, &cmd); err != nil {
		return sm.Result{}, nil // rejected identically everywhere
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch op := cmd.Op.(type) {
	case *raftcmdpb.MetaCommand_ExtendTso:
		// The saved window only grows. Conditional on the limit the oracle knows (see ExtendTSO). The
		// result is the saved limit, with Data set only if this entry
		// set it: two oracles may ask for the same number.
		if e := op.ExtendTso.Expect; (e == 0 || e == s.state.TsoLimit) && op.ExtendTso.Limit > s.state.TsoLimit {
			s.state.TsoLimit = op.ExtendTso.Limit
			return sm.Result{Value: uint64(s.state.TsoLimit), Data: []byte{1}}, nil
		}
		return sm.Result{Value: uint64(s.state.TsoLimit)}, nil
	case *raftcmdpb.MetaCommand_RegisterStore:
		r := op.RegisterStore
		st := &metapb.Store{Id: r.StoreId, RaftAddress: r.RaftAddress, ApiAddress: r.ApiAddress}
		for i, old := range s.state.ShardMap.Stores {
			if old.Id == r.StoreId {
				s.state.ShardMap.Stores[i] = st
				return sm.Result{Value: 1}, nil
			}
		}
		s.state.ShardMap.Stores = append(s.state.ShardMap.Stores, st)
		return sm.Result{Value: 1}, nil
	case *raftcmdpb.MetaCommand_GrantLease:
		// The result carries the lease's epoch (the entry's index) in Data.
		return sm.Result{Value: uint64(s.grantLocked(op.GrantLease, e.Index)), Data: binary.BigEndian.AppendUint64(nil, e.Index)}, nil
	case *raftcmdpb.MetaCommand_CheckpointLeases:
		c := op.CheckpointLeases
		for i, id := range c.Ids {
			if l := s.state.Leases[id]; l != nil && i < len(c.RemainingTtls) {
				l.RemainingTtl = c.RemainingTtls[i]
			}
		}
		return sm.Result{Value: 1}, nil
	case *raftcmdpb.MetaCommand_StartRevoke:
		for _, id := range op.StartRevoke.Ids {
			if l := s.state.Leases[id]; l != nil {
				l.Revoking = true
			}
		}
		return sm.Result{Value: 1}, nil
	case *raftcmdpb.MetaCommand_DropLease:
		for _, id := range op.DropLease.Ids {
			delete(s.state.Leases, id)
		}
		return sm.Result{Value: 1}, nil
	case *raftcmdpb.MetaCommand_SetAlarm:
		// Only etcd's two alarms, for stores that exist: the list stays
		// bounded by twice the number of stores. Value 0: refused.
		a := op.SetAlarm
		if a == nil {
			return sm.Result{}, nil
		}
		if a.Active && !(a.Type == int32(pb.AlarmType_NOSPACE) || a.Type == int32(pb.AlarmType_CORRUPT)) || a.Active && !s.hasStoreLocked(a.StoreId) {
			return sm.Result{}, nil
		}
		s.setAlarmLocked(a)
		return sm.Result{Value: 1}, nil
	case *raftcmdpb.MetaCommand_RegisterGateway:
		s.registerGatewayLocked(op.RegisterGateway, e.Index)
		return sm.Result{Value: 1}, nil
	case *raftcmdpb.MetaCommand_AllocateShardId:
		return sm.Result{Value: s.allocateShardIDLocked()}, nil
	case *raftcmdpb.MetaCommand_CompactCluster:
		// Value 1 if this entry raised the revision, 0 if at or below.
		if rev := op.CompactCluster.GetRevision(); rev > s.state.CompactRevision {
			s.state.CompactRevision = rev
			return sm.Result{Value: 1}, nil
		}
		return sm.Result{}, nil
	case *raftcmdpb.MetaCommand_UpdateShards:
		return sm.Result{Value: uint64(s.updateShardsLocked(op.UpdateShards.GetShards()))}, nil
	case *raftcmdpb.MetaCommand_Auth:
		// Data is an AuthResult: etcd's response, or the error that left
		// the store unchanged.
		if s.state.Auth == nil {
			s.state.Auth = &metapb.AuthState{}
		}
		var res raftcmdpb.AuthResult
		if resp, err := auth.Apply(s.state.Auth, op.Auth); err != nil {
			res.Error = rpctypes.ErrorDesc(err)
		} else if res.Response, err = proto.Marshal(resp); err != nil {
			res.Error = err.Error()
		}
		b, _ := proto.Marshal(&res)
		return sm.Result{Value: 1, Data: b}, nil
	}
	return sm.Result{}, nil
}

// allocateShardIDLocked takes the next data shard ID: above every ID the
// map holds and every ID taken before (a split that never finished).
func (s *StateMachine) allocateShardIDLocked() uint64 {
	id := max(s.state.NextShardId, s.state.ShardMap.MetaShardId+1)
	for _, d := range s.state.ShardMap.Shards {
		id = max(id, d.Id+1)
	}
	s.state.NextShardId = id + 1
	return id
}

// updateShardsLocked installs descriptors a data shard applied, each only
// over an older generation of itself (or as a new shard), and keeps the
// map in key order; it returns how many it installed.
func (s *StateMachine) updateShardsLocked(ds []*metapb.ShardDescriptor) int {
	n := 0
	for _, d := range ds {
		if d == nil || d.Id == 0 || d.Id == s.state.ShardMap.MetaShardId || d.Generation == 0 {
			continue
		}
		found := false
		for i, old := range s.state.ShardMap.Shards {
			if old.Id != d.Id {
				continue
			}
			found = true
			if d.Generation > old.Generation {
				s.state.ShardMap.Shards[i] = proto.Clone(d).(*metapb.ShardDescriptor)
				n++
			}
		}
		if !found {
			s.state.ShardMap.Shards = append(s.state.ShardMap.Shards, proto.Clone(d).(*metapb.ShardDescriptor))
			s.state.NextShardId = max(s.state.NextShardId, d.Id+1)
			n++
		}
	}
	sort.Slice(s.state.ShardMap.Shards, func(i, j int) bool {
		return bytes.Compare(s.state.ShardMap.Shards[i].StartKey, s.state.ShardMap.Shards[j].StartKey) < 0
	})
	return n
}

// gatewayRetention is how long past its expiry a registration stays in
// the state (measured by the expiries gateways write, so every replica
// drops the same ones).
const gatewayRetention = int64(time.Hour / time.Millisecond)

// registerGatewayLocked records, renews or (expiry 0) removes a gateway,
// and drops registrations that expired long before this one's expiry.
func (s *StateMachine) registerGatewayLocked(g *metapb.Gateway, index uint64) {
	if g == nil {
		return
	}
	if s.state.Gateways == nil {
		s.state.Gateways = map[uint64]*metapb.Gateway{}
	}
	if g.ExpiresUnixMs == 0 {
		delete(s.state.Gateways, g.MemberId)
		return
	}
	rec := proto.Clone(g).(*metapb.Gateway)
	rec.SinceIndex = index
	// A renewal while the registration is live keeps its place; coming
	// back after it expired is a new registration.
	if old := s.state.Gateways[g.MemberId]; old != nil && old.ExpiresUnixMs >= g.ExpiresUnixMs-g.TtlMs {
		rec.SinceIndex = old.SinceIndex
	}
	s.state.Gateways[g.MemberId] = rec
	for id, other := range s.state.Gateways {
		if other.ExpiresUnixMs < g.ExpiresUnixMs-gatewayRetention {
			delete(s.state.Gateways, id)
		}
	}
}

// GatewaysQuery asks Lookup for a copy of the registered gateways
// ([]*metapb.Gateway, by member ID).
type GatewaysQuery struct{}

func (s *StateMachine) hasStoreLocked(id uint64) bool {
	for _, st := range s.state.ShardMap.GetStores() {
		if st.Id == id {
			return true
		}
	}
	return false
}

// setAlarmLocked raises or clears an alarm; raising one twice keeps one.
func (s *StateMachine) setAlarmLocked(a *raftcmdpb.SetAlarm) {
	kept := s.state.Alarms[:0]
	found := false
	for _, x := range s.state.Alarms {
		same := x.Type == a.Type && (x.StoreId == a.StoreId || (!a.Active && a.StoreId == 0))
		if same && !a.Active {
			continue
		}
		found = found || same
		kept = append(kept, x)
	}
	s.state.Alarms = kept
	if a.Active && !found {
		s.state.Alarms = append(s.state.Alarms, &metapb.Alarm{StoreId: a.StoreId, Type: a.Type})
	}
}

// AlarmsQuery asks Lookup for the active alarms ([]*metapb.Alarm, a copy).
type AlarmsQuery struct{}

// AuthQuery asks Lookup for a copy of the auth store (*metapb.AuthState).
type AuthQuery struct{}

// grantLocked creates a lease and returns its ID, or 0 if the requested ID
// is taken. A server-chosen ID is the next free one from a counter kept in
// the state, so every replica picks the same.
func (s *StateMachine) grantLocked(g *raftcmdpb.GrantLease, index uint64) int64 {
	if s.state.Leases == nil {
		s.state.Leases = map[int64]*metapb.Lease{}
	}
	id := g.Id
	if id == 0 {
		id = max(s.state.NextLeaseId, 1)
		for s.state.Leases[id] != nil {
			id++
		}
		s.state.NextLeaseId = id + 1
	} else if s.state.Leases[id] != nil {
		return 0
	}
	// The epoch is the grant's log index: the same on every replica, and
	// higher for each grant of the same ID.
	s.state.Leases[id] = &metapb.Lease{Id: id, Ttl: g.Ttl, Epoch: index}
	return id
}

// Lookup returns a copy of the state, or of its alarms.
func (s *StateMachine) Lookup(q any) (any, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch q.(type) {
	case StateQuery:
		return proto.Clone(s.state), nil
	case AlarmsQuery:
		out := make([]*metapb.Alarm, len(s.state.Alarms))
		for i, a := range s.state.Alarms {
			out[i] = proto.Clone(a).(*metapb.Alarm)
		}
		return out, nil
	case GatewaysQuery:
		out := make([]*metapb.Gateway, 0, len(s.state.Gateways))
		for _, g := range s.state.Gateways {
			out = append(out, proto.Clone(g).(*metapb.Gateway))
		}
		slices.SortFunc(out, func(a, b *metapb.Gateway) int { return cmp.Compare(a.MemberId, b.MemberId) })
		return out, nil
	case AuthQuery:
		if s.state.Auth == nil {
			return &metapb.AuthState{}, nil
		}
		return proto.Clone(s.state.Auth), nil
	}
	return nil, fmt.Errorf("metasm: unknown query %T", q)
}

// SaveSnapshot writes the state.
func (s *StateMachine) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	s.mu.RLock()
	b, err := proto.Marshal(s.state)
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// RecoverFromSnapshot replaces the state.
func (s *StateMachine) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	st := &metapb.MetaState{}
	if err := proto.Unmarshal(b, st); err != nil {
		return fmt.Errorf("metasm: snapshot: %w", err)
	}
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	return nil
}

// Close does nothing.
func (s *StateMachine) Close() error { return nil }
