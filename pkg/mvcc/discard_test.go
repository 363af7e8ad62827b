package mvcc

import (
	"bytes"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// forceLSMCompaction makes Badger flush its memtables and compact level 0,
// which drops the versions its discard timestamp allows it to drop. (Badger
// runs such compactions by itself once enough data is written; DropPrefix
// forces one now.)
func forceLSMCompaction(t *testing.T, s *Store) {
	t.Helper()
	// DropPrefix does nothing for a prefix without data: write a probe key
	// in a family the store does not use, then drop it.
	probe := []byte("\xfe-probe")
	txn := s.db.NewTransactionAt(1, true)
	defer txn.Discard()
	if err := txn.Set(probe, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := txn.CommitAt(1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.db.DropPrefix(probe); err != nil {
		t.Fatalf("DropPrefix: %v", err)
	}
}

// History at or above the compaction revision must survive Badger's own
// compactions: only versions that no allowed read can see may go.
func TestCompactedHistorySurvivesLSMCompaction(t *testing.T) {
	s, sh, _ := newShard(t)
	compactHistory(t, sh)
	if err := sh.Compact(6, 7, 4); err != nil {
		t.Fatal(err)
	}
	forceLSMCompaction(t, s)
	assertKVs(t, "at 4", readAll(sh, 4).kvs, []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 3, 0)})
	assertKVs(t, "at 5", readAll(sh, 5).kvs, []*mvccpb.KeyValue{kv("a", "a5", 2, 5, 4, 0), kv("c", "c5", 5, 5, 1, 0)})
	assertKVs(t, "at 6", readAll(sh, 6).kvs, []*mvccpb.KeyValue{kv("a", "a6", 2, 6, 5, 0), kv("c", "c5", 5, 5, 1, 0)})
}

// A shard opened after another shard of the same store was compacted still
// owns its whole history down to its own compaction revision. etcd: a read
// at a revision at or above the compaction revision returns the keys as of
// that revision; only revisions below it fail with ErrCompacted.
func TestYoungShardHistorySurvivesOtherShardsCompaction(t *testing.T) {
	tests := []struct {
		name         string
		youngCompact int64 // 0: never compacted
	}{
		{
			name: "young shard never compacted",
		},
		{name: "young shard compacted lower", youngCompact: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			old, err := s.OpenShard(1, nil, []byte("m"))
			if err != nil {
				t.Fatal(err)
			}
			for rev := int64(2); rev <= 40; rev++ {
				mustPut(t, old, rev, "a", "x")
			}
			if err := old.Compact(nextIndex(old), 41, 40); err != nil {
				t.Fatal(err)
			}
			young, err := s.OpenShard(2, []byte("m"), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustPut(t, young, 2, "y", "y2")
			mustPut(t, young, 3, "y", "y3")
			mustDelete(t, young, 4, "y", "")
			mustPut(t, young, 5, "z", "z5")
			if tt.youngCompact > 0 {
				if err := young.Compact(nextIndex(young), 6, tt.youngCompact); err != nil {
					t.Fatal(err)
				}
			}

			forceLSMCompaction(t, s)
			want := map[int64]*mvccpb.KeyValue{
				2: kv("y", "y2", 2, 2, 1, 0),
				3: kv("y", "y3", 2, 3, 2, 0),
				4: nil,
				5: nil,
			}
			for rev := int64(2); rev <= 5; rev++ {
				if rev < tt.youngCompact {
					_, err := young.Range(&pb.RangeRequest{Key: []byte("y"), Revision: rev})
					assertErr(t, fmt.Sprintf("y@%d", rev), err, ErrCompacted)
					continue
				}
				assertKV(t, fmt.Sprintf("y@%d", rev), get(t, young, "y", rev), want[rev])
			}
			assertKV(t, "z@5", get(t, young, "z", 5), kv("z", "z5", 5, 5, 1, 0))
			// The old shard keeps its compaction-revision view.
			assertKV(t, "a@40", get(t, old, "a", 40), kv("a", "x", 2, 40, 39, 0))
		})
	}
}

// Restoring a snapshot whose compaction revision is lower than the shard's
// old one makes the restored history readable again from the snapshot's
// compaction revision on, and it must stay readable.
func TestRestoredHistorySurvivesLSMCompaction(t *testing.T) {
	_, src, _ := newShard(t)
	mustPut(t, src, 2, "k", "k2")
	mustPut(t, src, 3, "k", "k3")
	mustPut(t, src, 4, "j", "j4")
	mustDelete(t, src, 5, "j", "")
	buf, st := writeSnapshot(t, src)
	assertState(t, "snapshot", st, State{AppliedIndex: 4, Revision: 5})

	s, dst, _ := newShard(t)
	mustPut(t, dst, 30, "other", "o")
	if err := dst.Compact(nextIndex(dst), 31, 30); err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(buf.Bytes()), make(chan struct{})); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	assertState(t, "restored", dst.State(), State{AppliedIndex: 4, Revision: 5})
	forceLSMCompaction(t, s)
	// etcd: reads at or above the compaction revision (here 0) are served.
	assertKV(t, "k@2", get(t, dst, "k", 2), kv("k", "k2", 2, 2, 1, 0))
	assertKV(t, "k@3", get(t, dst, "k", 3), kv("k", "k3", 2, 3, 2, 0))
	assertKV(t, "j@4", get(t, dst, "j", 4), kv("j", "j4", 4, 4, 1, 0))
	assertKV(t, "j@5", get(t, dst, "j", 5), nil)
}

// Reopening the store must not let Badger drop history that was readable
// before: OpenShard restores the discard bound from the persisted state.
func TestReopenedHistorySurvivesLSMCompaction(t *testing.T) {
	s, sh, dir := newShard(t)
	compactHistory(t, sh)
	if err := sh.Compact(6, 7, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	sh2, err := s2.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	forceLSMCompaction(t, s2)
	assertKVs(t, "at 4", readAll(sh2, 4).kvs, []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 3, 0)})
	assertKVs(t, "at 5", readAll(sh2, 5).kvs, []*mvccpb.KeyValue{kv("a", "a5", 2, 5, 4, 0), kv("c", "c5", 5, 5, 1, 0)})
}
