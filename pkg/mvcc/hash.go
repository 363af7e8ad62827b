package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"

	"github.com/dgraph-io/badger/v4"
)

// HashKV hashes the shard's keys as of rev (0: the current revision): for
// each key, every version in (compaction revision, rev], tombstones
// included, and the live version at the compaction revision. Versions
// below it are left out: Badger drops them on its own schedule, so they
// differ between replicas that agree on everything a read can see.
func (sh *Shard) HashKV(rev int64) (hash uint32, compacted, hashRev int64, err error) {
	done, err := sh.reading()
	if err != nil {
		return 0, 0, 0, err
	}
	defer done()
	asked := rev
	txn, st, rev, err := sh.readTxn(rev)
	if errors.Is(err, ErrFutureRev) && asked <= st.LastEntry {
		// A cluster's revision above this shard's last write but closed
		// here: its keys there are its current ones.
		txn, rev, err = sh.store.db.NewTransactionAt(uint64(asked), false), asked, nil
	}
	if err != nil {
		return 0, st.CompactRevision, 0, err
	}
	defer txn.Discard()
	lo, hi, ok := sh.clip(sh.Bounds().Start, []byte{})
	if !ok {
		return 0, st.CompactRevision, rev, nil
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true, PrefetchValues: false})
	defer it.Close()
	var (
		cur       []byte
		atCompact bool // the version at the compaction revision was seen
		rec       []byte
	)
	for it.Seek(lo); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, hi) >= 0 {
			break
		}
		if !bytes.Equal(k, cur) {
			cur, atCompact = item.KeyCopy(cur[:0]), false
		}
		v := int64(item.Version())
		if v <= st.CompactRevision {
			if atCompact {
				continue
			}
			atCompact = true
			if item.IsDeletedOrExpired() {
				continue // a tombstone at or below the compaction may be gone anywhere
			}
		}
		rec = append(rec[:0], k...)
		rec = binary.BigEndian.AppendUint64(rec, uint64(v))
		if item.IsDeletedOrExpired() {
			h.Write(append(rec, 1))
			continue
		}
		h.Write(append(rec, 0))
		if err := item.Value(func(val []byte) error { _, err := h.Write(val); return err }); err != nil {
			return 0, st.CompactRevision, 0, err
		}
	}
	return h.Sum32(), st.CompactRevision, rev, nil
}

// Defragment rewrites the LSM tree into its last level and reclaims value
// log space, returning the store's size before and after.
func (s *Store) Defragment() (before, after int64, err error) {
	before = s.Size()
	if err := s.db.Flatten(2); err != nil {
		return before, before, err
	}
	for s.db.RunValueLogGC(0.5) == nil {
		// Each successful pass rewrote one value log file; go on until none is worth it.
	}
	return before, s.Size(), nil
}
