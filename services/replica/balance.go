package replica

import (
	"context"
	"slices"
	"time"

	"github.com/tessera-kv/tessera/proto/metapb"
)

// Leader balancing: Raft elects whichever replica times out first, so one
// store can end up leading most shards (all of them, after the others
// restart) and carrying every write. Each store moves one leadership at a
// time: to the shard's preferred leader (placement's first replica, which
// spreads leaders evenly) if it is live and leads fewer shards, else to a
// live replica leading at least two fewer. Either way the receiver ends
// up leading no more than the giver did, and neither rule hands the
// shard straight back, so moves do not go back and forth. A
// leadership younger than three balance intervals stays (a store that just won an
// election after a fault is not moved straight away). The meta shard is
// left alone: its leader also serves the revision oracle.
const defaultBalanceInterval = 5 * time.Second

// balanceStep looks for one leadership to move; since remembers from
// when each shard has been led here, as seen by earlier steps.
func (r *Replica) balanceStep(interval time.Duration, since map[uint64]time.Time) {
	now := time.Now()
	var led []uint64
	for _, id := range r.hostedShards() {
		if id == MetaShardID || r.LeaderOf(id) != r.cfg.StoreID {
			delete(since, id)
			continue
		}
		if _, ok := since[id]; !ok {
			since[id] = now
		}
		led = append(led, id)
	}
	if len(led) < 2 {
		return // leading one shard is never more than one ahead
	}
	ctx, cancel := context.WithTimeout(context.Background(), interval)
	var stores []*metapb.StoreStatus
	err := r.callMetaLeader(ctx, func(ctx context.Context, c metapb.MetaClient) error {
		resp, err := c.ListStores(ctx, &metapb.ListStoresRequest{})
		stores = resp.GetStores()
		return err
	})
	cancel()
	if err != nil {
		return
	}
	st, err := r.metaState()
	if err != nil {
		return
	}
	if shard, to := pickTransfer(r.cfg.StoreID, led, since, now.Add(-3*interval), stores, st.ShardMap.Shards); shard != 0 {
		r.log.Info("moving a shard's leadership to balance leaders", "shard", shard, "to", to, "leading", len(led))
		if err := r.nh.RequestLeaderTransfer(shard, to); err != nil {
			r.log.Debug("leadership transfer request failed", "shard", shard, "to", to, "err", err)
		}
	}
}

// pickTransfer chooses one of the shards self leads (led) and the store
// to hand it to, or 0: its preferred leader if live and leading fewer
// shards, else a live replica leading at least two fewer (the one leading
// fewest). Only shards led since before notAfter move.
func pickTransfer(self uint64, led []uint64, since map[uint64]time.Time, notAfter time.Time, stores []*metapb.StoreStatus, shards []*metapb.ShardDescriptor) (shard, to uint64) {
	leading := map[uint64]int{}
	for _, s := range stores {
		if s.State == metapb.StoreStatus_STATE_UP {
			leading[s.Store.GetId()] = len(s.Leading)
		}
	}
	mine := len(led)
	best := -1
	for _, d := range shards {
		if !slices.Contains(led, d.Id) || since[d.Id].After(notAfter) {
			continue
		}
		for i, id := range d.Replicas {
			n, up := leading[id]
			preferred := i == 0
			if id == self || !up || n+1 > mine || !preferred && n+2 > mine {
				continue
			}
			// Rank: the preferred leader first, then the least loaded.
			rank := n
			if preferred {
				rank = -1
			}
			if best < 0 || rank < best {
				best, shard, to = rank, d.Id, id
			}
		}
	}
	return shard, to
}
