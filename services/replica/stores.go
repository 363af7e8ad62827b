package replica

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/placement"
)

// Store liveness, as PD keeps it: each store reports to the meta leader
// every heartbeatInterval; the reports live in the leader's memory only (an
// idle cluster writes no entries), so a new meta leader knows nothing for
// its first livenessTimeout and says so (STATE_UNKNOWN) instead of calling
// every store down.
const (
	heartbeatInterval = time.Second
	livenessTimeout   = 3 * heartbeatInterval
	// sizeInterval: how often a store re-estimates the sizes of the
	// shards it leads (a walk of Badger's table list).
	sizeInterval = 30 * time.Second
)

// storeTable is the meta leader's view of the stores.
type storeTable struct {
	mu      sync.Mutex
	term    uint64    // the meta leadership the reports were taken in
	since   time.Time // when that leadership's table began
	reports map[uint64]storeReport
}

type storeReport struct {
	at  time.Time
	req *metapb.StoreHeartbeatRequest
}

// current resets the table when the meta leadership moved on since the
// last call, and reports whether term is the table's (a call still in an
// older term changes nothing); the caller holds mu.
func (t *storeTable) current(term uint64, now time.Time) bool {
	if term < t.term {
		return false
	}
	if t.term != term || t.reports == nil {
		t.term, t.since, t.reports = term, now, map[uint64]storeReport{}
	}
	return true
}

func (t *storeTable) record(term uint64, req *metapb.StoreHeartbeatRequest, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.current(term, now) {
		t.reports[req.StoreId] = storeReport{at: now, req: req}
	}
}

// status describes every store of the map.
func (t *storeTable) status(term uint64, stores []*metapb.Store, now time.Time) []*metapb.StoreStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.current(term, now)
	out := make([]*metapb.StoreStatus, 0, len(stores))
	for _, s := range stores {
		st := &metapb.StoreStatus{Store: s, LastHeartbeatMs: -1}
		rep, ok := t.reports[s.Id]
		switch {
		case ok && now.Sub(rep.at) <= livenessTimeout:
			st.State = metapb.StoreStatus_STATE_UP
		case ok || now.Sub(t.since) > livenessTimeout:
			st.State = metapb.StoreStatus_STATE_DOWN
		}
		if ok {
			st.LastHeartbeatMs = now.Sub(rep.at).Milliseconds()
			st.Replicas, st.Leading = rep.req.Replicas, rep.req.Leading
			st.UsedBytes, st.FreeBytes, st.ShardBytes = rep.req.UsedBytes, rep.req.FreeBytes, rep.req.ShardBytes
		}
		out = append(out, st)
	}
	return out
}

// leaderOf is the store the latest live report names as the shard's
// leader (0: none); of two that both claim it (the old leader's report
// not yet replaced), the newer.
func (t *storeTable) leaderOf(shardID uint64, now time.Time) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var leader uint64
	var at time.Time
	for id, rep := range t.reports {
		if now.Sub(rep.at) <= livenessTimeout && slices.Contains(rep.req.Leading, shardID) && rep.at.After(at) {
			leader, at = id, rep.at
		}
	}
	return leader
}

// StoreHeartbeat records a store's report on the meta leader.
func (m *metaService) StoreHeartbeat(_ context.Context, req *metapb.StoreHeartbeatRequest) (*metapb.StoreHeartbeatResponse, error) {
	term, err := m.r.requireLeader(MetaShardID)
	if err != nil {
		return nil, err
	}
	m.r.storeTable.record(term, req, time.Now())
	return &metapb.StoreHeartbeatResponse{}, nil
}

// ListStores is the meta leader's view of every store.
func (m *metaService) ListStores(context.Context, *metapb.ListStoresRequest) (*metapb.ListStoresResponse, error) {
	term, err := m.r.requireLeader(MetaShardID)
	if err != nil {
		return nil, err
	}
	st, err := m.r.metaState()
	if err != nil {
		return nil, toStatus(err)
	}
	return &metapb.ListStoresResponse{Stores: m.r.storeTable.status(term, st.ShardMap.Stores, time.Now())}, nil
}

// heartbeat reports this store to the meta leader (each heartbeatInterval).
func (r *Replica) heartbeat() {
	req := &metapb.StoreHeartbeatRequest{StoreId: r.cfg.StoreID, UsedBytes: r.used.bytes(time.Now()), FreeBytes: r.free.bytes(time.Now())}
	r.mu.RLock()
	for id := range r.shards {
		req.Replicas = append(req.Replicas, id)
		if r.LeaderOf(id) == r.cfg.StoreID {
			req.Leading = append(req.Leading, id)
		}
	}
	r.mu.RUnlock()
	req.ShardBytes = r.lastSizes()
	slices.Sort(req.Replicas)
	slices.Sort(req.Leading)
	ctx, cancel := context.WithTimeout(context.Background(), heartbeatInterval)
	err := r.callMetaLeader(ctx, func(ctx context.Context, c metapb.MetaClient) error {
		_, err := c.StoreHeartbeat(ctx, req)
		return err
	})
	cancel()
	if err != nil {
		r.log.Debug("store heartbeat", "err", err)
	}
}

// estimateSizes estimates the sizes of the shards led here (each
// sizeInterval, apart from the heartbeats: a large store's estimate must
// not hold a heartbeat past the liveness timeout).
func (r *Replica) estimateSizes() {
	var led []*mvcc.Shard
	r.mu.RLock()
	for id, ds := range r.shards {
		if sh := ds.shard(); sh != nil && r.LeaderOf(id) == r.cfg.StoreID {
			led = append(led, sh)
		}
	}
	r.mu.RUnlock()
	sizes := r.store.ApproximateSizes(led)
	r.sizes.mu.Lock()
	r.sizes.bytes = sizes
	r.sizes.mu.Unlock()
}

// lastSizes is the last estimate, for the shards still led here.
func (r *Replica) lastSizes() map[uint64]int64 {
	r.sizes.mu.Lock()
	defer r.sizes.mu.Unlock()
	out := make(map[uint64]int64, len(r.sizes.bytes))
	for id, n := range r.sizes.bytes {
		if r.LeaderOf(id) == r.cfg.StoreID {
			out[id] = n
		}
	}
	return out
}

// leaderHint is where to send a call for a shard's leader: this store's
// Raft view if it holds the shard, else the meta leader's latest reports
// (this store may be the meta leader), else 0.
func (r *Replica) leaderHint(shardID uint64) uint64 {
	if _, ok := r.dataShard(shardID); ok || shardID == MetaShardID {
		return r.LeaderOf(shardID)
	}
	return r.storeTable.leaderOf(shardID, time.Now())
}

// followNotLeader returns the leader a NotLeader answer names (0: none).
func followNotLeader(err error) uint64 {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if nl, ok := d.(*shardpb.NotLeader); ok {
			return nl.LeaderStoreId
		}
	}
	return 0
}

// placementStores are the shard map's stores as placement sees them.
func placementStores(stores []*metapb.Store) []placement.Store {
	out := make([]placement.Store, len(stores))
	for i, s := range stores {
		out[i] = placement.Store{ID: s.Id, Labels: s.Labels}
	}
	return out
}
