package mvcc

import (
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// ChangeRecord is one revision's entry in a shard's change log: its events
// as serialized mvccpb.Events (each with prev_kv when the key existed), in
// the order the revision made them.
type ChangeRecord struct {
	Revision int64
	Events   [][]byte
}

// ReadChanges reads the change log from revision from (inclusive) up to the
// shard's last applied entry, stopping once the records read hold maxBytes
// or more. It returns the records, the state they were read at, and the next
// revision to read (every revision below it with events was returned). Read
// to the end, next is above the last entry (the shard's closed revision),
// even where that entry changed no key (a tick): a feed reports the shard
// closed up to it.
//
// from below the compaction revision is ErrCompacted: those records are gone.
func (sh *Shard) ReadChanges(from int64, maxBytes int) ([]ChangeRecord, State, int64, error) {
	done, err := sh.reading()
	if err != nil {
		return nil, sh.State(), 0, err
	}
	defer done()
	st := sh.State()
	// Below the compaction records are gone, unless there were none to
	// lose: from above the shard's last write (one shard of several may
	// be compacted above its own revision).
	if from < st.CompactRevision && from <= st.Revision {
		return nil, st, 0, ErrCompacted
	}
	if from > st.Revision {
		return nil, st, max(from, st.LastEntry+1), nil
	}
	txn := sh.store.db.NewTransactionAt(uint64(st.LastEntry), false)
	defer txn.Discard()
	prefix := changePrefix(sh.id)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
	defer it.Close()
	var (
		out  []ChangeRecord
		size int
	)
	next := st.LastEntry + 1
	for it.Seek(changeKey(sh.id, from)); it.Valid(); it.Next() {
		item := it.Item()
		rev := int64(binary.BigEndian.Uint64(item.Key()[9:17]))
		// A record in several parts is returned whole.
		more := len(out) > 0 && out[len(out)-1].Revision == rev
		if size >= maxBytes && !more {
			next = rev
			break
		}
		err := item.Value(func(v []byte) error {
			evs, err := splitEvents(v)
			if more {
				out[len(out)-1].Events = append(out[len(out)-1].Events, evs...)
			} else {
				out = append(out, ChangeRecord{Revision: rev, Events: evs})
			}
			return err
		})
		if err != nil {
			return nil, st, 0, fmt.Errorf("mvcc: shard %d change record %d: %w", sh.id, rev, err)
		}
		size += int(item.ValueSize())
	}
	return out, st, next, nil
}

// splitEvents copies a change record's events out as serialized Events.
func splitEvents(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, fmt.Errorf("mvcc: corrupt change record")
		}
		out = append(out, append([]byte(nil), b[k:k+int(n)]...))
		b = b[k+int(n):]
	}
	return out, nil
}
