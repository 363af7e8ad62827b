package mvcc

import (
	"errors"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// compactHistory writes, on a fresh shard:
//
//	rev 2: a=a2 b=b2
//	rev 3: a=a3
//	rev 4: a=a4, delete b
//	rev 5: a=a5 c=c5
//	rev 6: a=a6
func compactHistory(t *testing.T, sh *Shard) {
	t.Helper()
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "a2"), opPut("b", "b2")}})
	mustPut(t, sh, 3, "a", "a3")
	mustTxn(t, sh, 4, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "a4"), opDelete("b", "")}})
	mustTxn(t, sh, 5, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "a5"), opPut("c", "c5")}})
	mustPut(t, sh, 6, "a", "a6")
}

func TestCompactReads(t *testing.T) {
	_, sh, _ := newShard(t)
	compactHistory(t, sh)
	if err := sh.Compact(6, 7, 4); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	assertState(t, "after compact", sh.State(), State{AppliedIndex: 6, Revision: 7, CompactRevision: 4})

	latest := []*mvccpb.KeyValue{kv("a", "a6", 2, 6, 5, 0), kv("c", "c5", 5, 5, 1, 0)}
	tests := []struct {
		rev     int64
		want    []*mvccpb.KeyValue
		wantErr error
	}{
		{rev: 0, want: latest},
		{rev: 7, wantErr: ErrFutureRev}, // the compaction entry changed no key: current is 6
		{rev: 6, want: latest},
		{rev: 5, want: []*mvccpb.KeyValue{kv("a", "a5", 2, 5, 4, 0), kv("c", "c5", 5, 5, 1, 0)}},
		{rev: 4, want: []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 3, 0)}}, // at the compaction revision
		{rev: 3, wantErr: ErrCompacted},
		{rev: 2, wantErr: ErrCompacted},
		{rev: 1, wantErr: ErrCompacted},
		{rev: 8, wantErr: ErrFutureRev},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("rev=%d", tt.rev), func(t *testing.T) {
			for _, req := range []*pb.RangeRequest{
				{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: tt.rev},
				{Key: []byte("a"), Revision: tt.rev},
				{Key: []byte("a"), RangeEnd: []byte("d"), Revision: tt.rev, CountOnly: true},
			} {
				resp, err := sh.Range(req)
				assertErr(t, "Range", err, tt.wantErr)
				if tt.wantErr != nil || err != nil {
					continue
				}
				if resp.Header.GetRevision() != 6 {
					t.Errorf("header revision %d, want 6", resp.Header.GetRevision())
				}
				switch {
				case req.CountOnly:
					if resp.Count != int64(len(tt.want)) {
						t.Errorf("count %d, want %d", resp.Count, len(tt.want))
					}
				case req.RangeEnd == nil:
					assertKVs(t, "key a", resp.Kvs, tt.want[:1])
				default:
					assertKVs(t, "all", resp.Kvs, tt.want)
				}
			}
		})
	}

	// A live key keeps its create revision and version count across the
	// compaction.
	mustPut(t, sh, 8, "a", "a8")
	assertKV(t, "a after compaction", get(t, sh, "a", 0), kv("a", "a8", 2, 8, 6, 0))
	// A key deleted before the compaction starts afresh.
	mustPut(t, sh, 9, "b", "b9")
	assertKV(t, "b after compaction", get(t, sh, "b", 0), kv("b", "b9", 9, 9, 1, 0))
}

func TestCompactErrors(t *testing.T) {
	_, sh, _ := newShard(t)
	compactHistory(t, sh) // revision 6, index 5
	steps := []struct {
		name        string
		rev         int64
		compact     int64
		wantErr     error
		wantCompact int64
	}{
		{"compact 0 on a store never compacted: a no-op, as etcd", 7, 0, nil, 0},
		{"negative", 8, -1, ErrCompacted, 0},
		{"first compaction", 9, 4, nil, 4},
		{"same revision again", 10, 4, ErrCompacted, 4},
		{"below the compaction", 11, 2, ErrCompacted, 4},
		{"0 after a compaction", 12, 0, ErrCompacted, 4},
		{"future revision", 13, 13, ErrFutureRev, 4},
		{"far future revision", 14, 100, ErrFutureRev, 4},
		{"forward", 15, 5, nil, 5},
		// Compactions change no key: etcd's current revision stays 6.
		{"up to the current revision", 16, 6, nil, 6},
		{"the entry's own revision is in the future", 17, 17, ErrFutureRev, 6},
	}
	for i, s := range steps {
		index := uint64(6 + i)
		err := sh.Compact(index, s.rev, s.compact)
		assertErr(t, s.name, err, s.wantErr)
		// Failed or not, the entry is applied; etcd's revision does not move.
		assertState(t, s.name, sh.State(), State{AppliedIndex: index, Revision: s.rev, CompactRevision: s.wantCompact})
		if sh.State().Revision != 6 {
			t.Errorf("%s: etcd revision %d, want 6", s.name, sh.State().Revision)
		}
	}
	_, err := sh.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 5})
	assertErr(t, "read below final compaction", err, ErrCompacted)
	_, err = sh.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 7})
	assertErr(t, "read above the current revision", err, ErrFutureRev)
	assertKV(t, "read at final compaction", get(t, sh, "a", 6), kv("a", "a6", 2, 6, 5, 0))
	assertKV(t, "read at current", get(t, sh, "a", 0), kv("a", "a6", 2, 6, 5, 0))
}

func TestReopenKeepsDataAndState(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	sh, err := s.OpenShard(1, nil, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.OpenShard(2, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	compactHistory(t, sh)
	if err := sh.Compact(6, 7, 3); err != nil {
		t.Fatal(err)
	}
	mustTxn(t, sh, 8, &pb.TxnRequest{Success: []*pb.RequestOp{
		opPutReq(&pb.PutRequest{Key: []byte("l"), Value: []byte("leased"), Lease: 77}),
		opDelete("c", ""),
	}})
	if err := sh.Tick(9, 9); err != nil {
		t.Fatal(err)
	}
	mustPut(t, other, 4, "x", "x4")
	mustPut(t, other, 5, "x", "x5")

	wantState := State{AppliedIndex: 9, Revision: 9, CompactRevision: 3}
	wantOther := State{AppliedIndex: 2, Revision: 5}
	assertState(t, "before close", sh.State(), wantState)
	assertState(t, "other before close", other.State(), wantOther)
	before := map[int64]readResult{}
	for rev := int64(0); rev <= 10; rev++ {
		before[rev] = readAll(sh, rev)
	}
	beforeOther := readAll(other, 4)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2 := openStore(t, dir)
	sh2, err := s2.OpenShard(1, nil, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	other2, err := s2.OpenShard(2, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	assertState(t, "after reopen", sh2.State(), wantState)
	assertState(t, "other after reopen", other2.State(), wantOther)
	for rev := int64(0); rev <= 10; rev++ {
		got, want := readAll(sh2, rev), before[rev]
		if !errors.Is(got.err, want.err) || !kvsEqual(got.kvs, want.kvs) || got.count != want.count {
			t.Errorf("rev %d after reopen: %s (%d, %v), want %s (%d, %v)", rev,
				fmtKVs(got.kvs), got.count, got.err, fmtKVs(want.kvs), want.count, want.err)
		}
	}
	// Spot checks, independent of the pre-close reads.
	assertKVs(t, "current", readAll(sh2, 0).kvs, []*mvccpb.KeyValue{kv("a", "a6", 2, 6, 5, 0), kv("l", "leased", 8, 8, 1, 77)})
	assertKVs(t, "at 5", readAll(sh2, 5).kvs, []*mvccpb.KeyValue{kv("a", "a5", 2, 5, 4, 0), kv("c", "c5", 5, 5, 1, 0)})
	assertErr(t, "below compaction", readAll(sh2, 2).err, ErrCompacted)
	assertErr(t, "future", readAll(sh2, 10).err, ErrFutureRev)
	otherAfter := readAll(other2, 4)
	assertKVs(t, "other at 4", otherAfter.kvs, beforeOther.kvs)
	assertKVs(t, "other at 4 (literal)", otherAfter.kvs, []*mvccpb.KeyValue{kv("x", "x4", 4, 4, 1, 0)})

	// The reopened shard rejects replays and continues the arithmetic.
	_, err = sh2.ApplyTxn(9, 9, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "replay")}})
	assertErr(t, "replayed entry", err, ErrStaleRevision)
	mustPut(t, sh2, 10, "a", "a10")
	assertKV(t, "a after reopen", get(t, sh2, "a", 0), kv("a", "a10", 2, 10, 6, 0))
	// Compaction state survives too: compacting at 3 again is refused.
	assertErr(t, "recompact", sh2.Compact(11, 11, 3), ErrCompacted)
}
