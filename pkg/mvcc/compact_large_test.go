package mvcc

import (
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// countChanges counts the change-log records of a shard that are still live.
func countChanges(t *testing.T, s *Store, shardID uint64) int {
	t.Helper()
	txn := s.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: changePrefix(shardID)})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		n++
	}
	return n
}

// TestCompactDropsLargeChangeLog compacts a change log longer than one
// deletion pass: the compaction finishes, keeps the records at and above the
// compaction revision, and drops everything below.
func TestCompactDropsLargeChangeLog(t *testing.T) {
	s, sh, _ := newShard(t)
	const writes = 12345
	for i := 0; i < writes; i++ {
		mustPut(t, sh, int64(i+2), fmt.Sprintf("k%03d", i%500), "v")
	}
	if got := countChanges(t, s, 1); got != writes {
		t.Fatalf("change log has %d records, want %d", got, writes)
	}
	compact := int64(writes - 100) // revisions 2..writes+1 exist
	if err := sh.Compact(nextIndex(sh), writes+2, compact); err != nil {
		t.Fatal(err)
	}
	// Records for revisions compact..writes+1 remain.
	if got, want := countChanges(t, s, 1), int(writes+1-compact+1); !reflect.DeepEqual(got, want) {
		t.Fatalf("after compaction %d change records, want %d", got, want)
	}
	txn := s.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: changePrefix(1)})
	defer it.Close()
	it.Rewind()
	if first := int64(binary.BigEndian.Uint64(it.Item().Key()[9:])); first != compact {
		t.Fatalf("oldest change record at %d, want %d", first, compact)
	}
	if st := sh.State(); st.CompactRevision != compact || st.LastEntry != writes+2 || st.Revision != writes+1 {
		t.Fatalf("state %+v", st)
	}
}
