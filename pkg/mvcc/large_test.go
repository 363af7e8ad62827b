package mvcc

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// fill puts n keys prefix%07d (value size valSize) in txns of 1000 puts,
// starting at revision rev; it returns the next free revision.
func fill(t *testing.T, sh *Shard, rev int64, prefix string, n, valSize int, lease int64) int64 {
	t.Helper()
	val := strings.Repeat("v", valSize)
	for i := 0; i < n; {
		var ops []*pb.RequestOp
		for ; i < n && len(ops) < 1000; i++ {
			ops = append(ops, opPutReq(&pb.PutRequest{Key: fmt.Appendf(nil, "%s%07d", prefix, i), Value: []byte(val), Lease: lease}))
		}
		mustTxn(t, sh, rev, &pb.TxnRequest{Success: ops})
		rev++
	}
	return rev
}

func countKeys(t *testing.T, sh *Shard, prefix string, rev int64) int64 {
	t.Helper()
	resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte(prefix), RangeEnd: []byte(prefix + "\xff"), CountOnly: true, Revision: rev})
	return resp.Count
}

// changeEvents reads the events of one revision from the change log.
func changeEvents(t *testing.T, sh *Shard, rev int64) []*mvccpb.Event {
	t.Helper()
	recs, _, _, err := sh.ReadChanges(rev, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || recs[0].Revision != rev {
		t.Fatalf("no change record at %d: %v", rev, recs)
	}
	var out []*mvccpb.Event
	for _, b := range recs[0].Events {
		ev := &mvccpb.Event{}
		if err := proto.Unmarshal(b, ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// An entry larger than one Badger transaction (the test store's memtable
// is 8 MiB, so about 1.2 MiB or ~12k writes per transaction) applies whole:
// a DeleteRange of 60,000 keys, a revoke of 30,000 leased keys, and a txn
// of 12 KiB values whose change-log record needs several parts.
func TestEntriesLargerThanOneBadgerTxn(t *testing.T) {
	_, sh, _ := newShard(t)
	rev := fill(t, sh, 2, "/a/", 60000, 10, 0)
	rev = fill(t, sh, rev, "/l/", 30000, 10, 7)
	rev = fill(t, sh, rev, "/big/", 1000, 12<<10, 0)

	before := sh.State()
	resp := mustDelete(t, sh, rev, "/a/", "/a0")
	if resp.Deleted != 60000 {
		t.Fatalf("deleted %d, want 60000", resp.Deleted)
	}
	if n := countKeys(t, sh, "/a/", 0); n != 0 {
		t.Fatalf("%d keys left after the delete", n)
	}
	if n := countKeys(t, sh, "/a/", before.Revision); n != 60000 {
		t.Fatalf("%d keys at the revision before the delete, want 60000", n)
	}
	if evs := changeEvents(t, sh, rev); len(evs) != 60000 || evs[0].Type != mvccpb.DELETE || evs[0].PrevKv == nil {
		t.Fatalf("change record: %d events", len(evs))
	}
	rev++

	n, err := sh.RevokeLease(nextIndex(sh), rev, []int64{7}, nil)
	if err != nil || n != 30000 {
		t.Fatalf("revoke: %d keys, %v", n, err)
	}
	if n := countKeys(t, sh, "/l/", 0); n != 0 {
		t.Fatalf("%d leased keys left after the revoke", n)
	}
	if keys, _ := sh.LeaseKeys(7); len(keys) != 0 {
		t.Fatalf("lease index still has %d keys", len(keys))
	}
	rev++

	// 12 MiB of events with prev_kv: several change-log parts, read back whole.
	resp = mustDelete(t, sh, rev, "/big/", "/big0")
	if evs := changeEvents(t, sh, rev); len(evs) != 1000 || len(evs[999].PrevKv.Value) != 12<<10 {
		t.Fatalf("change record of the big delete: %d events", len(evs))
	}
	// A read bounded to a few bytes still returns the record whole, then
	// the next one.
	recs, _, next, err := sh.ReadChanges(rev-1, 1, nil)
	if err != nil || len(recs) != 1 || recs[0].Revision != rev-1 || next != rev {
		t.Fatalf("bounded read: %d records, next %d, %v", len(recs), next, err)
	}
	rev++

	// 128 puts of 12 KiB in one txn, then 128 nested levels.
	var ops []*pb.RequestOp
	for i := 0; i < 128; i++ {
		ops = append(ops, opPut(fmt.Sprintf("/t/%03d", i), strings.Repeat("x", 12<<10)))
	}
	mustTxn(t, sh, rev, &pb.TxnRequest{Success: ops})
	rev++
	nested := &pb.TxnRequest{Success: []*pb.RequestOp{opPut("/n/leaf", "v")}}
	for i := 0; i < 128; i++ {
		nested = &pb.TxnRequest{Success: []*pb.RequestOp{opPut(fmt.Sprintf("/n/%03d", i), "v"), opTxn(nested)}}
	}
	mustTxn(t, sh, rev, nested)
	if n := countKeys(t, sh, "/n/", 0); n != 129 {
		t.Fatalf("nested txn wrote %d keys, want 129", n)
	}
}

var errCrash = errors.New("simulated crash")

// A crash between two Badger transactions of one entry leaves nothing a
// reader can see, and replaying the entry after a restart gives exactly
// the state of a store that applied it in one go.
func TestCrashInsideAnEntryReplays(t *testing.T) {
	build := func(t *testing.T, sh *Shard) (index uint64, rev int64) {
		rev = fill(t, sh, 2, "/a/", 40000, 20, 0)
		return nextIndex(sh), rev
	}
	del := &pb.TxnRequest{Success: []*pb.RequestOp{
		opDeleteReq(&pb.DeleteRangeRequest{Key: []byte("/a/"), RangeEnd: []byte("/a0"), PrevKv: true}),
		opPut("/b", "after"),
	}}

	// The reference applies the entry without a crash.
	_, ref, _ := newShard(t)
	index, rev := build(t, ref)
	want, err := ref.ApplyTxn(index, rev, del)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	o := testOptions()
	o.Knobs.ChunkCommitted = func(int) error { return errCrash }
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	build(t, sh)
	before := sh.State()
	if _, err := sh.ApplyTxn(index, rev, del); !errors.Is(err, errCrash) {
		t.Fatalf("ApplyTxn with a crash after the first chunk: %v", err)
	}
	if st := sh.State(); !reflect.DeepEqual(st, before) {
		t.Fatalf("state moved to %+v after a crash inside the entry", st)
	}
	if n := countKeys(t, sh, "/a/", 0); n != 40000 {
		t.Fatalf("a reader sees %d of 40000 keys after a crash inside the entry", n)
	}
	s.Close()

	s = openStore(t, dir)
	sh, err = s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sh.State(), before) {
		t.Fatalf("state after restart %+v, want %+v", sh.State(), before)
	}
	got, err := sh.ApplyTxn(index, rev, del)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatal("the replayed entry answered differently")
	}
	assertSameHistory(t, sh, ref, rev)
	h1, _, _, err1 := sh.HashKV(0)
	h2, _, _, err2 := ref.HashKV(0)
	if err1 != nil || err2 != nil || h1 != h2 {
		t.Fatalf("hash after replay %x (%v), reference %x (%v)", h1, err1, h2, err2)
	}
	if a, b := changeEvents(t, sh, rev), changeEvents(t, ref, rev); len(a) != len(b) || len(a) != 40001 {
		t.Fatalf("change record after replay: %d events, reference %d", len(a), len(b))
	}
}

// Requests that cannot be applied get an error result, change nothing but
// the applied index, and leave the shard working.
func TestRequestErrorsApplyNothing(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	long := bytes.Repeat([]byte("k"), MaxKeyBytes+1)
	tests := []struct {
		name string
		req  *pb.TxnRequest
		want error
	}{
		{"key too large", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("b", "1"), opPutReq(&pb.PutRequest{Key: long})}}, ErrKeyTooLarge},
		{"key too large, nested", &pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: long})}})}}, ErrKeyTooLarge},
		{"ignore_value on a missing key", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("b", "1"), opPutReq(&pb.PutRequest{Key: []byte("zz"), IgnoreValue: true})}}, ErrKeyNotFound},
		{"future revision", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("b", "1"), opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 99})}}, ErrFutureRev},
	}
	rev := int64(3)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := sh.State()
			idx := nextIndex(sh)
			resp, err := sh.ApplyTxn(idx, rev, tt.req)
			rev++
			assertErr(t, "ApplyTxn", err, tt.want)
			if resp != nil {
				t.Errorf("response %v with an error", resp)
			}
			want := before
			want.AppliedIndex, want.LastEntry = idx, rev-1
			if !reflect.DeepEqual(sh.State(), want) {
				t.Errorf("state %+v, want %+v", sh.State(), want)
			}
			assertKV(t, "b not written", get(t, sh, "b", 0), nil)
		})
	}
	mustPut(t, sh, rev, "b", "2")
	assertKV(t, "b", get(t, sh, "b", 0), kv("b", "2", rev, rev, 1, 0))
}

// Writes of one key twice in an entry (the gateway refuses such txns; a
// replica's own API does not) keep the last one, once.
func TestSameKeyTwiceInOneEntry(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	mustTxn(t, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{opDelete("a", ""), opPut("a", "2"), opPut("c", "1"), opDelete("c", "")}})
	assertKV(t, "a", get(t, sh, "a", 0), kv("a", "2", 3, 3, 1, 0))
	assertKV(t, "c", get(t, sh, "c", 0), nil)
	if evs := changeEvents(t, sh, 3); len(evs) != 4 {
		t.Fatalf("%d events, want 4 (delete a, put a, put c, delete c)", len(evs))
	}
}

// A key deleted by a large DeleteRange (a bulk delete, not indexed) and put
// again in the same entry ends up put, also when the entry's writes span
// several Badger transactions; so does its lease index entry.
func TestPutAfterLargeDeleteInOneEntry(t *testing.T) {
	o := testOptions()
	var written map[string]int
	o.Knobs.Wrote = func(k []byte) {
		if written != nil {
			written[string(k)]++
		}
	}
	_, sh, _ := newShardWith(t, o)
	rev := fill(t, sh, 2, "/a/", 30000, 10, 9)
	written = map[string]int{}
	resp := mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{
		opDeleteReq(&pb.DeleteRangeRequest{Key: []byte("/a/"), RangeEnd: []byte("/a0")}),
		opPutReq(&pb.PutRequest{Key: []byte("/a/0000005"), Value: []byte("new"), Lease: 9}),
		opRange(&pb.RangeRequest{Key: []byte("/a/"), RangeEnd: []byte("/a0")}),
	}})
	if got := resp.Responses[0].GetResponseDeleteRange().Deleted; got != 30000 {
		t.Fatalf("deleted %d", got)
	}
	if r := resp.Responses[2].GetResponseRange(); r.Count != 1 || string(r.Kvs[0].Value) != "new" {
		t.Fatalf("range inside the txn: %v", r)
	}
	assertKV(t, "re-put key", get(t, sh, "/a/0000005", 0), kv("/a/0000005", "new", rev, rev, 1, 9))
	if n := countKeys(t, sh, "/a/", 0); n != 1 {
		t.Fatalf("%d keys after the txn, want 1", n)
	}
	if keys, _ := sh.LeaseKeys(9); len(keys) != 1 || string(keys[0]) != "/a/0000005" {
		t.Fatalf("lease index: %d keys", len(keys))
	}
	// No Badger key is written twice at the entry's version.
	for k, n := range written {
		if n != 1 {
			t.Fatalf("Badger key %q written %d times in one entry", k, n)
		}
	}
	if len(written) < 60000 {
		t.Fatalf("only %d Badger keys written", len(written))
	}
}

// The largest single write an entry can make (a key at the store's limit
// with a value just under Badger's inline threshold) fits in one Badger
// transaction at the smallest memtable the store accepts.
func TestLargestWriteFitsTheSmallestMemtable(t *testing.T) {
	o := testOptions()
	o.MemTableSize = MinMemTableSize
	_, sh, _ := newShardWith(t, o)
	key := strings.Repeat("k", MaxKeyBytes)
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte(key), Value: bytes.Repeat([]byte("v"), 1<<20-1), Lease: 3})}})
	if _, err := Open(t.TempDir(), Options{MemTableSize: MinMemTableSize - 1, NumMemtables: 2, BlockCacheSize: 1 << 20}); err == nil {
		t.Fatal("a memtable below the minimum was accepted")
	}
}
