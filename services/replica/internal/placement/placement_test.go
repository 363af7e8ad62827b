package placement

import (
	"fmt"
	"testing"
)

func stores(n int, zones ...string) []Store {
	var out []Store
	for i := range n {
		s := Store{ID: uint64(i + 1)}
		if len(zones) > 0 {
			s.Labels = map[string]string{"zone": zones[i%len(zones)]}
		}
		out = append(out, s)
	}
	return out
}

func place(p *Plan, shards int) (replicas, leaders map[uint64]int, all [][]uint64) {
	replicas, leaders = map[uint64]int{}, map[uint64]int{}
	for range shards {
		r := p.Next()
		all = append(all, r)
		for i, id := range r {
			replicas[id]++
			if i == 0 {
				leaders[id]++
			}
		}
	}
	return replicas, leaders, all
}

func TestSixStoresCarryTwiceThree(t *testing.T) {
	replicas, leaders, all := place(New(stores(6), 3), 12)
	for id := uint64(1); id <= 6; id++ {
		if replicas[id] != 6 || leaders[id] != 2 {
			t.Errorf("store %d: %d replicas, %d preferred leaderships; want 6 and 2 (%v)", id, replicas[id], leaders[id], all)
		}
	}
	for _, r := range all {
		seen := map[uint64]bool{}
		for _, id := range r {
			if seen[id] {
				t.Fatalf("two replicas of one shard on store %d: %v", id, r)
			}
			seen[id] = true
		}
		if len(r) != 3 {
			t.Fatalf("shard placed on %v, want 3 stores", r)
		}
	}
}

func TestReplicasSpreadOverZones(t *testing.T) {
	// Six stores in three zones, listed so that ID order alone would put
	// a shard's first replicas in one zone.
	st := stores(6, "a", "a", "b", "b", "c", "c")
	zone := map[uint64]string{}
	for _, s := range st {
		zone[s.ID] = s.Labels["zone"]
	}
	replicas, _, all := place(New(st, 3), 9)
	for _, r := range all {
		zs := map[string]bool{}
		for _, id := range r {
			zs[zone[id]] = true
		}
		if len(zs) != 3 {
			t.Errorf("shard on %v spans zones %v, want all three", r, zs)
		}
	}
	for id, n := range replicas {
		if n < 4 || n > 5 {
			t.Errorf("store %d holds %d of 27 replicas, want 4 or 5", id, n)
		}
	}
}

func TestFewerStoresThanReplicationFactor(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			_, leaders, all := place(New(stores(n), 3), 3*n)
			for _, r := range all {
				if len(r) != n {
					t.Fatalf("shard on %v, want every one of %d stores", r, n)
				}
			}
			for id := uint64(1); id <= uint64(n); id++ {
				if leaders[id] != 3 {
					t.Errorf("store %d is the preferred leader of %d shards, want 3", id, leaders[id])
				}
			}
		})
	}
}

func TestCountedShardsWeigh(t *testing.T) {
	p := New(stores(4), 2)
	p.Count([]uint64{1, 2})
	p.Count([]uint64{1, 3})
	if r := p.Next(); r[0] != 4 && r[1] != 4 {
		t.Fatalf("next shard on %v; store 4 holds nothing and should be chosen", r)
	}
}
