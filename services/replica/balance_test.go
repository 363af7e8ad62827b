package replica

import (
	"testing"
	"time"

	"github.com/tessera-kv/tessera/proto/metapb"
)

func TestPickTransfer(t *testing.T) {
	now := time.Now()
	old := map[uint64]time.Time{2: now.Add(-time.Minute), 3: now.Add(-time.Minute), 4: now.Add(-time.Minute)}
	up := func(id uint64, leading ...uint64) *metapb.StoreStatus {
		return &metapb.StoreStatus{Store: &metapb.Store{Id: id}, State: metapb.StoreStatus_STATE_UP, Leading: leading}
	}
	shards := []*metapb.ShardDescriptor{
		{Id: 2, Replicas: []uint64{2, 1, 3}}, // preferred: store 2
		{Id: 3, Replicas: []uint64{1, 2, 3}}, // preferred: here
		{Id: 4, Replicas: []uint64{1, 3, 2}},
	}
	for _, tc := range []struct {
		name      string
		led       []uint64
		since     map[uint64]time.Time
		stores    []*metapb.StoreStatus
		shard, to uint64
	}{
		{"to the preferred leader, leading fewer", []uint64{2, 3}, old,
			[]*metapb.StoreStatus{up(1, 2, 3), up(2, 5), up(3, 6)}, 2, 2},
		{"not to a preferred leader leading as many", []uint64{2, 3}, old,
			[]*metapb.StoreStatus{up(1, 2, 3), up(2, 5, 6), up(3, 7, 8)}, 0, 0},
		{"to any replica leading two fewer", []uint64{2, 3, 4}, old,
			[]*metapb.StoreStatus{up(1, 2, 3, 4), up(2, 5, 6, 7), up(3, 8)}, 2, 3},
		{"not to a store that is down", []uint64{2, 3}, old,
			[]*metapb.StoreStatus{up(1, 2, 3), {Store: &metapb.Store{Id: 2}, State: metapb.StoreStatus_STATE_DOWN}, up(3, 6, 7)}, 0, 0},
		{"not a leadership just taken", []uint64{2, 3}, map[uint64]time.Time{2: now, 3: now},
			[]*metapb.StoreStatus{up(1, 2, 3), up(2), up(3)}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shard, to := pickTransfer(1, tc.led, tc.since, now.Add(-time.Second), tc.stores, shards)
			if shard != tc.shard || to != tc.to {
				t.Fatalf("moved shard %d to store %d, want shard %d to store %d", shard, to, tc.shard, tc.to)
			}
		})
	}
}

func TestStoreTableLiveness(t *testing.T) {
	var tab storeTable
	t0 := time.Now()
	stores := []*metapb.Store{{Id: 1}, {Id: 2}}
	tab.record(7, &metapb.StoreHeartbeatRequest{StoreId: 1, Leading: []uint64{2}}, t0)
	st := tab.status(7, stores, t0.Add(time.Second))
	if st[0].State != metapb.StoreStatus_STATE_UP || st[1].State != metapb.StoreStatus_STATE_UNKNOWN {
		t.Fatalf("just after taking over: %v", st)
	}
	if got := tab.leaderOf(2, t0.Add(time.Second)); got != 1 {
		t.Fatalf("leader of shard 2: %d, want 1", got)
	}
	st = tab.status(7, stores, t0.Add(livenessTimeout+time.Second))
	if st[0].State != metapb.StoreStatus_STATE_DOWN || st[1].State != metapb.StoreStatus_STATE_DOWN {
		t.Fatalf("after the liveness timeout with no reports: %v", st)
	}
	// A new meta leadership starts over: it knows nothing yet.
	st = tab.status(8, stores, t0.Add(livenessTimeout+time.Second))
	if st[0].State != metapb.StoreStatus_STATE_UNKNOWN || st[0].LastHeartbeatMs != -1 {
		t.Fatalf("after a meta leader change: %v", st)
	}
}
