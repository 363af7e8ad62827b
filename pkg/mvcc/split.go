package mvcc

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// SplitRecord is a split a shard applied: from Revision on, the keys of
// Child's bounds belong to shard ChildID.
type SplitRecord struct {
	Revision int64
	ChildID  uint64
	Child    Bounds
}

func (r SplitRecord) encode() []byte {
	// The child's bounds in a state record's form, after its ID.
	b := binary.BigEndian.AppendUint64(nil, r.ChildID)
	return append(b, State{Bounds: r.Child}.encode()[stateFixed:]...)
}

func decodeSplit(rev int64, v []byte) (SplitRecord, error) {
	if len(v) < 8 {
		return SplitRecord{}, fmt.Errorf("mvcc: split record of %d bytes", len(v))
	}
	b, err := decodeBounds(v[8:])
	if err != nil {
		return SplitRecord{}, err
	}
	return SplitRecord{Revision: rev, ChildID: binary.BigEndian.Uint64(v), Child: b}, nil
}

func splitKey(shardID uint64, rev int64) []byte {
	k := changeKey(shardID, rev)
	k[0] = familySplit
	return k
}

func splitPrefix(shardID uint64) []byte { return splitKey(shardID, 0)[:9] }

// Split applies a split at revision rev, the entry at Raft index index:
// the shard keeps [start, key) and a new shard childID takes [key, end),
// closed at rev, from the same Badger keys (nothing is copied but the
// shard's revoked-lease records, which the child must refuse puts to as
// well). The child's state record is written here, so a store that
// applied the split can open the child; its change log starts above rev.
//
// A split planned against another generation than the shard's, or at a
// key not strictly inside its range, is ErrWrongShard and changes nothing;
// one already applied (a replayed request) returns the same bounds again.
func (sh *Shard) Split(index uint64, rev int64, key []byte, childID, generation uint64) (left, right Bounds, err error) {
	w, err := sh.newWriter(index, rev)
	if err != nil {
		return Bounds{}, Bounds{}, err
	}
	b := w.prev.Bounds
	if done, ok, err := w.appliedSplit(childID); err != nil {
		w.discard()
		return Bounds{}, Bounds{}, err
	} else if ok && b.Generation > generation {
		// Applied already (the request came twice): the entry changes
		// nothing more.
		if _, err := w.commit(w.prev.CompactRevision); err != nil {
			return Bounds{}, Bounds{}, err
		}
		return b, done.Child, nil
	}
	var reqErr error
	switch {
	case generation != b.Generation:
		reqErr = fmt.Errorf("%w: shard %d is at generation %d, the split was planned at %d", ErrWrongShard, sh.id, b.Generation, generation)
	case bytes.Compare(key, b.Start) <= 0 || len(b.End) > 0 && bytes.Compare(key, b.End) >= 0:
		reqErr = fmt.Errorf("%w: split key %q is not inside shard %d", ErrWrongShard, key, sh.id)
	case len(key) > MaxKeyBytes:
		reqErr = fmt.Errorf("%w: %d bytes (max %d)", ErrKeyTooLarge, len(key), MaxKeyBytes)
	case childID == 0 || childID == sh.id:
		reqErr = fmt.Errorf("%w: child shard ID %d", ErrInvalidEntry, childID)
	}
	if reqErr != nil {
		if _, err := w.commit(w.prev.CompactRevision); err != nil {
			return Bounds{}, Bounds{}, err
		}
		return Bounds{}, Bounds{}, reqErr
	}
	left = Bounds{Start: b.Start, End: cloneOrNil(key), Generation: b.Generation + 1, Parent: b.Parent, SplitRevision: b.SplitRevision}
	right = Bounds{Start: cloneOrNil(key), End: b.End, Generation: 1, Parent: sh.id, SplitRevision: rev}
	child := State{Revision: w.prev.Revision, CompactRevision: w.prev.CompactRevision, LastEntry: rev, Bounds: right}
	if err := w.copyRevoked(childID); err != nil {
		w.discard()
		return Bounds{}, Bounds{}, err
	}
	w.appendUnique(mutation{key: stateKey(childID), value: child.encode()})
	w.appendUnique(mutation{key: splitKey(sh.id, rev), value: SplitRecord{Revision: rev, ChildID: childID, Child: right}.encode()})
	w.bounds = left
	if _, err := w.commit(w.prev.CompactRevision); err != nil {
		return Bounds{}, Bounds{}, err
	}
	return left, right, nil
}

// appliedSplit finds the split record that made childID, if any.
func (w *writer) appliedSplit(childID uint64) (SplitRecord, bool, error) {
	recs, err := w.sh.splits(w.view.txn, 0)
	if err != nil {
		return SplitRecord{}, false, err
	}
	for _, r := range recs {
		if r.ChildID == childID {
			return r, true, nil
		}
	}
	return SplitRecord{}, false, nil
}

// copyRevoked gives the child the shard's revoked-lease records.
func (w *writer) copyRevoked(childID uint64) error {
	prefix := revokedPrefix(w.sh.id)
	it := w.view.txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	for it.Seek(prefix); it.Valid(); it.Next() {
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		lease := int64(binary.BigEndian.Uint64(it.Item().Key()[9:17]))
		w.appendUnique(mutation{key: revokedKey(childID, lease), value: v})
	}
	return nil
}

// Splits returns the splits the shard applied at revisions from on, in
// revision order.
func (sh *Shard) Splits(from int64) ([]SplitRecord, error) {
	st := sh.State()
	txn := sh.store.db.NewTransactionAt(uint64(st.LastEntry), false)
	defer txn.Discard()
	return sh.splits(txn, from)
}

func (sh *Shard) splits(txn *badger.Txn, from int64) ([]SplitRecord, error) {
	prefix := splitPrefix(sh.id)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	var out []SplitRecord
	for it.Seek(splitKey(sh.id, max(from, 0))); it.Valid(); it.Next() {
		rev := int64(binary.BigEndian.Uint64(it.Item().Key()[9:17]))
		var rec SplitRecord
		err := it.Item().Value(func(v []byte) (err error) {
			rec, err = decodeSplit(rev, v)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("mvcc: shard %d split record %d: %w", sh.id, rev, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// CheckGeneration refuses a request routed by a descriptor generation
// older than the shard's (0: unchecked): the keys it was routed by may
// have moved to another shard since.
func (sh *Shard) CheckGeneration(gen uint64) error {
	if b := sh.Bounds(); gen != 0 && gen < b.Generation {
		return fmt.Errorf("%w: routed by generation %d, shard %d is at %d", ErrWrongShard, gen, sh.id, b.Generation)
	}
	return nil
}

// StoredShard is a shard this store holds a state record for.
type StoredShard struct {
	ID    uint64
	State State
}

// StoredShards lists every shard with a state record in the store: the
// shards it held or was given by a split, whatever the shard map says.
func (s *Store) StoredShards() ([]StoredShard, error) {
	txn := s.db.NewTransactionAt(^uint64(0), false)
	defer txn.Discard()
	prefix := []byte{familyState}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	var out []StoredShard
	for it.Seek(prefix); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 9 {
			continue
		}
		var st State
		err := it.Item().Value(func(v []byte) (err error) {
			st, err = decodeState(v)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("mvcc: state of shard %d: %w", binary.BigEndian.Uint64(k[1:]), err)
		}
		out = append(out, StoredShard{ID: binary.BigEndian.Uint64(k[1:]), State: st})
	}
	return out, nil
}
