package mvcc

import (
	"bytes"
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestSplitHalves cuts a shard in two: each half reads its own keys at
// every revision from the same Badger keys, the child's state survives a
// reopen, the parent's change log keeps the events from before the split
// and the child's starts above it.
func TestSplitHalves(t *testing.T) {
	s, sh, dir := newShard(t)
	mustPut(t, sh, 2, "/a", "1")
	mustPut(t, sh, 3, "/m", "2")
	mustPut(t, sh, 4, "/z", "3")
	if _, _, err := sh.Split(nextIndex(sh), 5, []byte("/m"), 9, 7); !errors.Is(err, ErrWrongShard) {
		t.Fatalf("split at a stale generation: %v, want ErrWrongShard", err)
	}
	if _, _, err := sh.Split(nextIndex(sh), 6, nil, 9, 1); !errors.Is(err, ErrWrongShard) {
		t.Fatalf("split at the shard's start: %v, want ErrWrongShard", err)
	}
	left, right, err := sh.Split(nextIndex(sh), 7, []byte("/m"), 9, 1)
	if err != nil {
		t.Fatalf("Split: %v", err)
	}
	if !bytes.Equal(left.End, []byte("/m")) || left.Generation != 2 || !bytes.Equal(right.Start, []byte("/m")) ||
		right.Parent != 1 || right.SplitRevision != 7 || right.Generation != 1 {
		t.Fatalf("split bounds: left %+v right %+v", left, right)
	}
	// A repeat of the same split changes nothing more.
	if l2, r2, err := sh.Split(nextIndex(sh), 8, []byte("/m"), 9, 1); err != nil || !bytes.Equal(l2.End, left.End) || r2.SplitRevision != 7 {
		t.Fatalf("repeated split: %+v %+v %v", l2, r2, err)
	}
	if got := keysOf(mustRange(t, sh, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}).Kvs); got != "/a" {
		t.Fatalf("parent keys after the split: %s", got)
	}
	child, err := s.OpenShard(9, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := child.State()
	if st.LastEntry != 7 || st.AppliedIndex != 0 || !bytes.Equal(st.Bounds.Start, []byte("/m")) {
		t.Fatalf("child state %+v", st)
	}
	if got := keysOf(mustRange(t, child, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}).Kvs); got != "/m,/z" {
		t.Fatalf("child keys: %s", got)
	}
	if kv := get(t, child, "/z", 3); kv != nil {
		t.Fatalf("child /z at 3 (before its put): %v", kv)
	}
	if kv := get(t, child, "/z", 4); kv == nil || string(kv.Value) != "3" {
		t.Fatalf("child /z at 4: %v", kv)
	}
	// The child's entries start above the split; the parent keeps its log.
	if _, err := child.ApplyTxn(1, 7, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("/n", "x")}}); !errors.Is(err, ErrStaleRevision) {
		t.Fatalf("child entry at the split revision: %v, want ErrStaleRevision", err)
	}
	mustPut(t, child, 9, "/n", "4")
	recs, _, _, err := sh.ReadChanges(2, 1<<20, nil)
	if err != nil || len(recs) != 3 {
		t.Fatalf("parent change log after the split: %d records, %v", len(recs), err)
	}
	recs, _, _, err = child.ReadChanges(8, 1<<20, nil)
	if err != nil || len(recs) != 1 || recs[0].Revision != 9 {
		t.Fatalf("child change log: %+v, %v", recs, err)
	}
	splits, err := sh.Splits(0)
	if err != nil || len(splits) != 1 || splits[0].ChildID != 9 || splits[0].Revision != 7 {
		t.Fatalf("Splits: %+v, %v", splits, err)
	}
	if err := sh.CheckGeneration(1); !errors.Is(err, ErrWrongShard) {
		t.Fatalf("CheckGeneration(1) after the split: %v", err)
	}
	if err := sh.CheckGeneration(2); err != nil {
		t.Fatalf("CheckGeneration(2): %v", err)
	}

	// Reopened with the range it was created with, each keeps its own.
	s.Close()
	s = openStore(t, dir)
	stored, err := s.StoredShards()
	if err != nil || len(stored) != 2 {
		t.Fatalf("StoredShards: %+v, %v", stored, err)
	}
	sh, err = s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b := sh.Bounds(); !bytes.Equal(b.End, []byte("/m")) || b.Generation != 2 {
		t.Fatalf("parent bounds after reopen: %+v", b)
	}
	child, err = s.OpenShard(9, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(mustRange(t, child, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}).Kvs); got != "/m,/n,/z" {
		t.Fatalf("child keys after reopen: %s", got)
	}
}

// TestSplitSnapshot moves a split child by snapshot: its bounds travel in
// the header, and the receiving shard keeps them.
func TestSplitSnapshot(t *testing.T) {
	s, sh, _ := newShard(t)
	mustPut(t, sh, 2, "/a", "1")
	mustPut(t, sh, 3, "/q", "2")
	if _, _, err := sh.Split(nextIndex(sh), 4, []byte("/m"), 5, 1); err != nil {
		t.Fatal(err)
	}
	child, err := s.OpenShard(5, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	snap := child.PrepareSnapshot()
	if err := snap.WriteTo(&buf, nil); err != nil {
		t.Fatal(err)
	}
	snap.Close()
	_, other, _ := newShard(t)
	o2, err := other.store.OpenShard(5, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := o2.Restore(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if b := o2.Bounds(); !bytes.Equal(b.Start, []byte("/m")) || b.Parent != 1 || b.SplitRevision != 4 {
		t.Fatalf("restored child bounds %+v", b)
	}
	if got := keysOf(mustRange(t, o2, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}).Kvs); got != "/q" {
		t.Fatalf("restored child keys: %s", got)
	}
}

// TestTxnReadLimit: a txn's range at a revision is future at or above the
// entry's revision on one of several shards (the cluster's revision a
// client saw may be above the shard's own), and above the shard's own
// revision on the only shard, as in etcd.
func TestTxnReadLimit(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "/a", "1")
	mustPut(t, sh, 3, "/z", "2")
	at := func(rev, entry int64) error {
		_, err := sh.ApplyTxn(nextIndex(sh), entry, &pb.TxnRequest{Success: []*pb.RequestOp{
			opRange(&pb.RangeRequest{Key: []byte("/a"), Revision: rev}), opPut("/b", "x")}})
		return err
	}
	if err := at(4, 10); !errors.Is(err, ErrFutureRev) {
		t.Fatalf("the only shard, above its revision: %v, want ErrFutureRev", err)
	}
	if _, _, err := sh.Split(nextIndex(sh), 11, []byte("/m"), 9, 1); err != nil {
		t.Fatal(err)
	}
	resp, err := sh.ApplyTxn(nextIndex(sh), 20, &pb.TxnRequest{Success: []*pb.RequestOp{
		opRange(&pb.RangeRequest{Key: []byte("/a"), Revision: 19}), opPut("/b", "x")}})
	if err != nil {
		t.Fatalf("one of several shards, below the entry: %v", err)
	}
	assertKVs(t, "/a at 19", resp.Responses[0].GetResponseRange().Kvs, []*mvccpb.KeyValue{kv("/a", "1", 2, 2, 1, 0)})
	if err := at(21, 21); !errors.Is(err, ErrFutureRev) {
		t.Fatalf("one of several shards, at the entry: %v, want ErrFutureRev", err)
	}
}
