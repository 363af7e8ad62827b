package replica

import (
	"context"
	"time"
)

// HandOff moves the leadership of every shard this store leads to another
// of the shard's replicas, and waits (until ctx ends) for the moves to
// take: a store that is about to stop then costs its shards no election
// timeout. Call it before Close on a graceful shutdown.
func (r *Replica) HandOff(ctx context.Context) {
	led := map[uint64]bool{}
	for _, id := range r.hostedShards() {
		if r.LeaderOf(id) != r.cfg.StoreID {
			continue
		}
		target := r.otherReplica(id)
		if target == 0 {
			continue // the only replica: nowhere to go
		}
		if err := r.nh.RequestLeaderTransfer(id, target); err != nil {
			r.log.Warn("leadership hand-off failed", "shard", id, "to", target, "err", err)
			continue
		}
		led[id] = true
	}
	for len(led) > 0 && ctx.Err() == nil {
		for id := range led {
			if l := r.LeaderOf(id); l != 0 && l != r.cfg.StoreID {
				delete(led, id)
			}
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
	if len(led) > 0 {
		r.log.Warn("some shards still led here at shutdown; they elect a new leader", "shards", len(led))
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

// otherReplica picks another store holding a replica of the shard (0: none).
func (r *Replica) otherReplica(shardID uint64) uint64 {
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
	for _, id := range members {
		if id != r.cfg.StoreID {
			return id
		}
	}
	return 0
}
