package mvcc

import (
	"errors"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func putLeased(t *testing.T, sh *Shard, rev int64, key string, lease int64) {
	t.Helper()
	mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: lease})}})
}

func leaseKeysOf(t *testing.T, sh *Shard, lease int64) string {
	t.Helper()
	keys, err := sh.LeaseKeys(lease)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, string(k))
	}
	return strings.Join(out, ",")
}

// The lease index follows puts, overwrites and deletes; revoking deletes
// exactly the lease's keys at one revision; a snapshot carries the index.
func TestLeaseIndexAndRevoke(t *testing.T) {
	_, sh, _ := newShard(t)
	putLeased(t, sh, 2, "a", 5)
	putLeased(t, sh, 3, "b", 5)
	putLeased(t, sh, 4, "c", 6)
	putLeased(t, sh, 5, "d", 5)
	mustPut(t, sh, 6, "b", "unleased") // b leaves lease 5
	putLeased(t, sh, 7, "c", 5)        // c moves from 6 to 5
	mustDelete(t, sh, 8, "d", "")      // d is gone
	if got := leaseKeysOf(t, sh, 5); got != "a,c" {
		t.Fatalf("lease 5 keys %q, want a,c", got)
	}
	if got := leaseKeysOf(t, sh, 6); got != "" {
		t.Fatalf("lease 6 keys %q, want none", got)
	}

	buf, _ := writeSnapshot(t, sh)
	_, restored, _ := restoreFresh(t, buf.Bytes())
	if got := leaseKeysOf(t, restored, 5); got != "a,c" {
		t.Fatalf("restored lease 5 keys %q", got)
	}

	n, err := sh.RevokeLease(nextIndex(sh), 9, []int64{5}, nil)
	if err != nil || n != 2 {
		t.Fatalf("revoke: %d keys, err %v", n, err)
	}
	if get(t, sh, "a", 0) != nil || get(t, sh, "c", 0) != nil || get(t, sh, "b", 0) == nil {
		t.Fatal("revoke deleted the wrong keys")
	}
	if got := leaseKeysOf(t, sh, 5); got != "" {
		t.Fatalf("lease 5 keys after revoke %q", got)
	}
	recs, _, _, err := sh.ReadChanges(9, 1<<20, nil)
	if err != nil || len(recs) != 1 || len(recs[0].Events) != 2 {
		t.Fatalf("revoke's change record: %v %v", recs, err)
	}
	if n, err := sh.RevokeLease(nextIndex(sh), 10, []int64{5, 6}, nil); err != nil || n != 0 {
		t.Fatalf("second revoke: %d, %v", n, err)
	}
}

// Once a revoke has applied, no key can be attached to the revoked lease
// at its epoch, nor by a put without an epoch (a late put that passed the
// gateway's check before the revoke); a put to the same ID granted again
// (a later epoch) works. The record survives a snapshot.
func TestRevokedLeaseTakesNoKeys(t *testing.T) {
	_, sh, _ := newShard(t)
	leased := func(rev int64, key string, epochs LeaseEpochs) error {
		_, err := sh.ApplyTxnLeases(nextIndex(sh), rev, &pb.TxnRequest{Success: []*pb.RequestOp{
			opPutReq(&pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: 5})}}, epochs)
		return err
	}
	if err := leased(2, "a", LeaseEpochs{5: 10}); err != nil {
		t.Fatal(err)
	}
	if n, err := sh.RevokeLease(nextIndex(sh), 3, []int64{5}, []uint64{10}); err != nil || n != 1 {
		t.Fatalf("revoke: %d keys, err %v", n, err)
	}
	for i, epochs := range []LeaseEpochs{{5: 10}, {5: 9}, nil} {
		if err := leased(int64(40+i), "b", epochs); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("put to the revoked lease with epochs %v: %v, want ErrLeaseNotFound", epochs, err)
		}
	}
	// A txn with such a put applies nothing, not even its other ops.
	_, err := sh.ApplyTxnLeases(nextIndex(sh), 50, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "x"),
		opPutReq(&pb.PutRequest{Key: []byte("d"), Lease: 5})}}, LeaseEpochs{5: 10})
	if !errors.Is(err, ErrLeaseNotFound) || get(t, sh, "c", 0) != nil {
		t.Fatalf("txn with a put to the revoked lease: %v, c = %v", err, get(t, sh, "c", 0))
	}
	if leaseKeysOf(t, sh, 5) != "" {
		t.Fatalf("revoked lease has keys %q", leaseKeysOf(t, sh, 5))
	}

	buf, _ := writeSnapshot(t, sh)
	_, restored, _ := restoreFresh(t, buf.Bytes())
	if _, err := restored.ApplyTxnLeases(nextIndex(restored), 60, &pb.TxnRequest{Success: []*pb.RequestOp{
		opPutReq(&pb.PutRequest{Key: []byte("b"), Lease: 5})}}, LeaseEpochs{5: 10}); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("put to the revoked lease after a snapshot: %v", err)
	}
	// Granted again: a higher epoch.
	if err := leased(70, "b", LeaseEpochs{5: 11}); err != nil {
		t.Fatalf("put to the lease granted again: %v", err)
	}
	if got := leaseKeysOf(t, sh, 5); got != "b" {
		t.Fatalf("lease 5 keys %q, want b", got)
	}
	// A later revoke at the new epoch fences that one too; an older one
	// replayed does not lower it.
	if _, err := sh.RevokeLease(nextIndex(sh), 80, []int64{5}, []uint64{11}); err != nil {
		t.Fatal(err)
	}
	if _, err := sh.RevokeLease(nextIndex(sh), 90, []int64{5}, []uint64{10}); err != nil {
		t.Fatal(err)
	}
	if err := leased(100, "b", LeaseEpochs{5: 11}); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("put at the epoch revoked second: %v", err)
	}
}

// Two shards with the same history hash the same, whatever Badger dropped
// below the compaction revision; any difference at or above it shows.
func TestHashKV(t *testing.T) {
	build := func(t *testing.T, lsm bool) (*Store, *Shard) {
		s, sh, _ := newShard(t)
		mustPut(t, sh, 2, "a", "1")
		mustPut(t, sh, 3, "a", "2")
		mustPut(t, sh, 4, "b", "1")
		mustDelete(t, sh, 5, "b", "")
		mustPut(t, sh, 6, "c", "1")
		if err := sh.Compact(nextIndex(sh), 7, 5); err != nil {
			t.Fatal(err)
		}
		mustPut(t, sh, 8, "a", "3")
		if lsm {
			forceLSMCompaction(t, s)
		}
		return s, sh
	}
	_, x := build(t, false)
	_, y := build(t, true)
	hx, cx, rx, err := x.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	hy, _, _, err := y.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	if hx != hy || cx != 5 || rx != 8 {
		t.Fatalf("hashes %08x and %08x (compacted %d, at %d)", hx, hy, cx, rx)
	}
	if h6, _, _, _ := x.HashKV(6); h6 == hx {
		t.Fatal("hash at revision 6 equals the hash at 8")
	}
	mustPut(t, y, 9, "a", "4")
	if h, _, _, _ := y.HashKV(8); h != hx {
		t.Fatal("a later write changed the hash at 8")
	}
	if h, _, _, _ := y.HashKV(0); h == hx {
		t.Fatal("a write did not change the current hash")
	}
}
