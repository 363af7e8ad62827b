package mvcc

import (
	"bytes"
	"math"

	"github.com/dgraph-io/badger/v4"
)

// ApproximateSizes estimates each shard's size on disk from Badger's
// tables, as TiKV's approximate region size does from its SSTs: a table
// whose keys all lie in a shard's data range or change log counts whole;
// one that straddles the range's edge counts by the share of its keys
// (versions) inside the range, counted with a keys-only scan of that part
// (at most the table's own key count, so the cost is bounded by the
// table's size). Data still in memtables is not counted: a shard written
// only recently may read 0. One read of the table list serves every shard.
func (s *Store) ApproximateSizes(shards []*Shard) map[uint64]int64 {
	tables := s.db.Tables()
	txn := s.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	out := make(map[uint64]int64, len(shards))
	for _, sh := range shards {
		b := sh.Bounds()
		lo, hi := dataKey(b.Start), []byte{familyData + 1}
		if len(b.End) > 0 {
			hi = dataKey(b.End)
		}
		changes := changePrefix(sh.id)
		var n int64
		for _, t := range tables {
			left, right := userPart(t.Left), userPart(t.Right)
			switch {
			case bytes.Compare(left, lo) >= 0 && bytes.Compare(right, hi) < 0,
				bytes.HasPrefix(left, changes) && bytes.HasPrefix(right, changes):
				n += int64(t.OnDiskSize)
			case bytes.Compare(right, lo) >= 0 && bytes.Compare(left, hi) < 0 && t.KeyCount > 0:
				from, to := max(string(left), string(lo)), string(hi)
				if bytes.Compare(right, hi) < 0 {
					to = string(right) + "\x00" // right is inclusive
				}
				in := countVersions(txn, []byte(from), []byte(to), int(t.KeyCount))
				n += int64(t.OnDiskSize) * int64(in) / int64(t.KeyCount)
			}
		}
		out[sh.id] = n
	}
	return out
}

// countVersions counts the versions of keys in [from, to), stopping at
// limit.
func countVersions(txn *badger.Txn, from, to []byte, limit int) int {
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
	defer it.Close()
	n := 0
	for it.Seek(from); it.Valid() && n < limit && bytes.Compare(it.Item().Key(), to) < 0; it.Next() {
		n++
	}
	return n
}

// userPart strips the 8-byte version Badger appends to the keys of its
// table bounds.
func userPart(k []byte) []byte {
	if len(k) < 8 {
		return k
	}
	return k[:len(k)-8]
}
