package replica

import (
	"context"
	"time"

	"github.com/tessera-kv/tessera/pkg/retry"
)

// HandOff moves the leadership of every shard this store leads to another
// of the shard's replicas, and waits (until ctx ends) for the moves to
// take: a store that is about to stop then costs its shards no election
// timeout. The shards' writes in flight finish first, and the store takes
// no new ones after (they go to the next leader): call it only before
// Close, on a graceful shutdown.
func (r *Replica) HandOff(ctx context.Context) {
	pending := map[uint64]int{} // shard → transfer attempts
	for _, id := range r.hostedShards() {
		if r.LeaderOf(id) != r.cfg.StoreID || len(r.otherReplicas(id)) == 0 {
			continue // not led here, or the only replica: nowhere to go
		}
		// Let the writes in flight finish first (new ones go to the next
		// leader), so the hand-off leaves no outcome unknown.
		if ds, ok := r.dataShard(id); ok && ds.seq != nil {
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := ds.seq.Drain(dctx); err != nil {
				r.log.Warn("writes still in flight at hand-off", "shard", id, "err", err)
			}
			cancel()
		}
		pending[id] = 0
	}
	// A transfer can fail (the target was behind, a message was lost):
	// ask again, each time of the next replica, until every shard moved.
	for len(pending) > 0 && ctx.Err() == nil {
		for id, attempt := range pending {
			if l := r.LeaderOf(id); l != 0 && l != r.cfg.StoreID {
				delete(pending, id)
				continue
			}
			if attempt%10 == 0 { // every 200 ms
				others := r.otherReplicas(id)
				target := others[attempt/10%len(others)]
				if err := r.nh.RequestLeaderTransfer(id, target); err != nil {
					r.log.Debug("leadership hand-off request failed", "shard", id, "to", target, "err", err)
				}
			}
			pending[id] = attempt + 1
		}
		retry.Sleep(ctx, 20*time.Millisecond)
	}
	if len(pending) > 0 {
		r.log.Warn("some shards still led here at shutdown; they elect a new leader", "shards", len(pending))
	} else {
		r.log.Info("leadership handed off")
	}
}

// hostedShards lists the meta shard and the data shards open here.
func (r *Replica) hostedShards() []uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := []uint64{MetaShardID}
	for id := range r.shards {
		ids = append(ids, id)
	}
	return ids
}

// otherReplicas lists the other stores holding a replica of the shard.
func (r *Replica) otherReplicas(shardID uint64) []uint64 {
	var members []uint64
	if shardID == MetaShardID {
		for _, m := range r.cfg.Cluster {
			members = append(members, m.ID)
		}
	} else if st, err := r.metaState(); err == nil {
		for _, d := range st.ShardMap.Shards {
			if d.Id == shardID {
				members = d.Replicas
			}
		}
	}
	var out []uint64
	for _, id := range members {
		if id != r.cfg.StoreID {
			out = append(out, id)
		}
	}
	return out
}
