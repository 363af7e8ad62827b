// Package placement chooses which stores hold a shard's replicas and which
// of them should lead it. It is a pure function of the stores and of what
// is already placed, so every store that bootstraps a cluster computes the
// same shard map without talking to the others.
//
// The rules, in order: a shard's replicas are in failure domains as far
// apart as the stores' labels allow (two stores share a domain in each
// label they have the same value of, as zone=a); then on the stores that
// hold the fewest replicas; then by store ID, rotated by shard so equal
// stores take turns. The preferred leader is the chosen store that is the
// preferred leader of the fewest shards, so leaders spread as replicas do.
package placement

import (
	"cmp"
	"slices"
)

// Store is a store that can hold replicas.
type Store struct {
	ID     uint64
	Labels map[string]string
}

// Load is what is already placed on a store.
type Load struct {
	Replicas, Leaders int
}

// Plan places shards one after another, each seeing the ones before.
type Plan struct {
	stores []Store
	rf     int
	load   map[uint64]*Load
	n      int // shards placed so far: the tie-break rotation
}

// New plans over stores (sorted by ID here) with rf replicas per shard, at
// most one per store.
func New(stores []Store, rf int) *Plan {
	p := &Plan{stores: slices.Clone(stores), rf: min(max(rf, 1), len(stores)), load: map[uint64]*Load{}}
	slices.SortFunc(p.stores, func(a, b Store) int { return cmp.Compare(a.ID, b.ID) })
	for _, s := range p.stores {
		p.load[s.ID] = &Load{}
	}
	return p
}

// Count records replicas placed elsewhere (an existing shard map), the
// first of them as the preferred leader.
func (p *Plan) Count(replicas []uint64) {
	for i, id := range replicas {
		if l, ok := p.load[id]; ok {
			l.Replicas++
			if i == 0 {
				l.Leaders++
			}
		}
	}
	p.n++
}

// Next places one more shard and returns its replicas, the preferred
// leader first.
func (p *Plan) Next() []uint64 {
	var chosen []Store
	for len(chosen) < p.rf {
		best := -1
		var bestKey [3]int
		for i, s := range p.stores {
			if slices.ContainsFunc(chosen, func(c Store) bool { return c.ID == s.ID }) {
				continue
			}
			overlap := 0
			for _, c := range chosen {
				overlap += shared(s.Labels, c.Labels)
			}
			rot := (i - p.n%len(p.stores) + len(p.stores)) % len(p.stores)
			key := [3]int{overlap, p.load[s.ID].Replicas, rot}
			if best < 0 || less(key, bestKey) {
				best, bestKey = i, key
			}
		}
		chosen = append(chosen, p.stores[best])
	}
	// The preferred leader: the chosen store leading the fewest.
	lead := 0
	for i, s := range chosen {
		if p.load[s.ID].Leaders < p.load[chosen[lead].ID].Leaders {
			lead = i
		}
	}
	chosen[0], chosen[lead] = chosen[lead], chosen[0]
	out := make([]uint64, len(chosen))
	for i, s := range chosen {
		out[i] = s.ID
	}
	p.Count(out)
	return out
}

// shared counts the labels two stores have the same value of.
func shared(a, b map[string]string) int {
	n := 0
	for k, v := range a {
		if w, ok := b[k]; ok && w == v {
			n++
		}
	}
	return n
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}
