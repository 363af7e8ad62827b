package shardmap

import (
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
