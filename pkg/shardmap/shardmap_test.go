package shardmap

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tessera-kv/tessera/proto/metapb"
)

func TestOverlaps(t *testing.T) {
	shard := func(start, end string) *metapb.ShardDescriptor {
		return &metapb.ShardDescriptor{StartKey: []byte(start), EndKey: []byte(end)}
	}
	all, left, right := shard("", ""), shard("", "m"), shard("m", "")
	tests := []struct {
		name     string
		d        *metapb.ShardDescriptor
		key, end []byte
		want     bool
	}{
		{"key in whole keyspace", all, []byte("a"), nil, true},
		{"key left of split", left, []byte("a"), nil, true},
		{"split key belongs right", left, []byte("m"), nil, false},
		{"split key on right", right, []byte("m"), nil, true},
		{"range ending at split", right, []byte("a"), []byte("m"), false},
		{"range crossing split, left", left, []byte("a"), []byte("n"), true},
		{"range crossing split, right", right, []byte("a"), []byte("n"), true},
		{"from key to end", right, []byte("a"), []byte{}, true},
		{"from key to end via nul", left, []byte("a"), []byte{0}, true},
		{"from key past left shard", left, []byte("x"), []byte{}, false},
		{"empty range", all, []byte("b"), []byte("a"), false},
	}
	for _, tt := range tests {
		if got := Overlaps(tt.d, tt.key, tt.end); got != tt.want {
			t.Errorf("%s: overlaps=%v want %v", tt.name, got, tt.want)
		}
	}
}

// TestMergeGenerations merges maps from before and after splits in every
// order: the newest descriptor of each range wins, and a stale map never
// replaces a newer one.
func TestMergeGenerations(t *testing.T) {
	d := func(id, gen uint64, start, end string, split int64) *metapb.ShardDescriptor {
		return &metapb.ShardDescriptor{Id: id, Generation: gen, StartKey: []byte(start), EndKey: []byte(end), SplitRevision: split}
	}
	before := []*metapb.ShardDescriptor{d(2, 1, "", "", 0)}
	once := []*metapb.ShardDescriptor{d(2, 2, "", "m", 0), d(3, 1, "m", "", 10)}
	// A second split of the child, learned from the child alone.
	twice := []*metapb.ShardDescriptor{d(3, 2, "m", "t", 10), d(4, 1, "t", "", 20)}
	starts := func(ds []*metapb.ShardDescriptor) string {
		var s []string
		for _, x := range ds {
			s = append(s, fmt.Sprintf("%d:%s@%d", x.Id, x.StartKey, x.Generation))
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		have, in []*metapb.ShardDescriptor
		want     string
	}{
		{before, once, "2:@2 3:m@1"},
		{once, before, "2:@2 3:m@1"},
		{append(once, twice...), before, "2:@2 3:m@2 4:t@1"},
		{once, twice, "2:@2 3:m@2 4:t@1"},
		{twice, once, "2:@2 3:m@2 4:t@1"},
		// Only the child's news, over the map from before any split: the
		// parent's stale wide range gives way to what it lost.
		{before, twice, "3:m@2 4:t@1"},
	} {
		if got := starts(merge(tc.have, tc.in)); got != tc.want {
			t.Errorf("merge(%s, %s) = %s, want %s", starts(tc.have), starts(tc.in), got, tc.want)
		}
	}
}
