package replica

import (
	"slices"
	"testing"
)

// A store created before the replication factor existed keeps every shard
// on every store in member order (its meta state has them so, and a store
// replaying from the bootstrap state must build the same map); a new one
// pins the factor it was given, at most one replica per store.
func TestReplicationFactorPinned(t *testing.T) {
	old := t.TempDir()
	if rf, err := loadOrSaveReplicationFactor(old, 3, 5, true); err != nil || rf != 0 {
		t.Fatalf("store from before placement: rf %d, %v; want 0", rf, err)
	}
	members := []Member{{ID: 1}, {ID: 2}, {ID: 3}}
	for _, d := range bootstrapState(members, []string{"/b", "/c"}, 0).ShardMap.Shards {
		if !slices.Equal(d.Replicas, []uint64{1, 2, 3}) {
			t.Fatalf("rf 0: shard %d on %v, want every store in member order", d.Id, d.Replicas)
		}
	}
	fresh := t.TempDir()
	if rf, err := loadOrSaveReplicationFactor(fresh, 5, 3, false); err != nil || rf != 3 {
		t.Fatalf("new store, rf 5 over 3 stores: %d, %v; want 3", rf, err)
	}
	if rf, err := loadOrSaveReplicationFactor(fresh, 1, 3, true); err != nil || rf != 3 {
		t.Fatalf("restart with another flag: %d, %v; want the pinned 3", rf, err)
	}
	spread := map[uint64]bool{}
	for _, d := range bootstrapState(members, []string{"/b", "/c"}, 3).ShardMap.Shards {
		spread[d.Replicas[0]] = true
	}
	if len(spread) != 3 {
		t.Fatalf("rf 3 on 3 stores: preferred leaders %v, want one shard each", spread)
	}
}
