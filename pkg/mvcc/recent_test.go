package mvcc

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// The writer's tail of recent changes serves exactly what the log holds:
// after every entry of a mixed workload (puts over existing keys, nested
// txns that put and delete one key, range deletes, lease revokes, a
// compaction, a record too big for the tail, entries that change nothing),
// reads from several revisions back, whole and filtered and cut short,
// give the same events from the tail and from the log; and the tail stays
// within its bound, falling back to the log for what it dropped.
func TestRecentChangesMatchLog(t *testing.T) {
	defer func(b int) { recentBytes = b }(recentBytes)
	recentBytes = 4 << 10
	_, sh, _ := newShard(t)
	rnd := rand.New(rand.NewSource(1))
	key := func() string { return fmt.Sprintf("k%02d", rnd.Intn(30)) }
	inLow := func(k []byte) bool { return string(k) < "k15" }
	compact, lease := int64(0), int64(7)
	fromTail := 0
	rev := int64(1)
	for i := 0; i < 400; i++ {
		rev++
		switch op := rnd.Intn(10); {
		case op < 4:
			mustPut(t, sh, rev, key(), strings.Repeat("v", rnd.Intn(300)))
		case op == 4:
			mustTxn(t, sh, rev, putThenDelete(key(), lease))
		case op == 5:
			mustTxn(t, sh, rev, deleteBetween(key(), key()))
		case op == 6:
			if _, err := sh.RevokeLease(nextIndex(sh), rev, []int64{lease}, nil); err != nil {
				t.Fatal(err)
			}
			lease++
		case op == 7 && i == 200:
			compact = sh.State().Revision - 20
			if err := sh.Compact(nextIndex(sh), rev, compact); err != nil {
				t.Fatal(err)
			}
		case op == 7 && i%50 == 0:
			mustPut(t, sh, rev, key(), strings.Repeat("b", 8<<10)) // bigger than the tail
		default:
			mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte(key())})}}) // changes nothing
		}
		sh.mu.RLock()
		held := sh.recent.bytes
		sh.mu.RUnlock()
		if held > recentBytes {
			t.Fatalf("the tail holds %d bytes, more than its %d", held, recentBytes)
		}
		for _, back := range []int64{1, 5, 40} {
			from := max(rev-back, compact, 2)
			for _, in := range []func([]byte) bool{nil, inLow} {
				for _, limit := range []int{1, 1 << 20} {
					recs, st, _, err := sh.ReadChanges(from, limit, in)
					if err != nil {
						t.Fatalf("ReadChanges(%d): %v", from, err)
					}
					if _, ok := sh.recent.since(from, st.LastEntry); ok {
						fromTail++
					}
					want := logRead(t, sh, from, limit, in)
					sameChanges(t, fmt.Sprintf("entry %d, from %d, limit %d", i, from, limit), recs, want, st.CompactRevision)
				}
			}
		}
	}
	if fromTail == 0 {
		t.Fatal("no read was served from the tail: the test compared the log with itself")
	}
}

// A snapshot install drops the tail: reads after it come from the
// installed log, not from events of the state it replaced, even where
// both end at the same entry.
func TestRecentChangesDroppedByRestore(t *testing.T) {
	_, src, _ := newShard(t)
	mustPut(t, src, 2, "a", "from the snapshot")
	snap, _ := writeSnapshot(t, src)
	_, dst, _ := newShard(t)
	mustPut(t, dst, 2, "a", "replaced")
	if err := dst.Restore(snap, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := dst.ReadChanges(2, 1<<20, nil)
	if err != nil || len(recs) != 1 {
		t.Fatalf("changes after the install: %v, %v", recs, err)
	}
	if ev := decodeRecord(t, recs[0])[0]; string(ev.Kv.Value) != "from the snapshot" {
		t.Fatalf("after the install the change at 2 is %q", ev.Kv.Value)
	}
}

// putThenDelete is a txn whose nested txns put k (and k+"/l" on lease)
// and then delete k again, as etcd allows across sibling txns.
func putThenDelete(k string, lease int64) *pb.TxnRequest {
	return &pb.TxnRequest{Success: []*pb.RequestOp{
		opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut(k, "x"), opPutReq(&pb.PutRequest{Key: []byte(k + "/l"), Value: []byte("y"), Lease: lease})}}),
		opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDelete(k, "")}}),
	}}
}

// deleteBetween deletes [a, b] in key order of the two.
func deleteBetween(a, b string) *pb.TxnRequest {
	if a > b {
		a, b = b, a
	}
	return &pb.TxnRequest{Success: []*pb.RequestOp{opDelete(a, b+"\x00")}}
}
