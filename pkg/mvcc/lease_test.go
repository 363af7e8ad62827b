package mvcc

import (
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

	n, err := sh.RevokeLease(nextIndex(sh), 9, 5)
	if err != nil || n != 2 {
		t.Fatalf("revoke: %d keys, err %v", n, err)
	}
	if get(t, sh, "a", 0) != nil || get(t, sh, "c", 0) != nil || get(t, sh, "b", 0) == nil {
		t.Fatal("revoke deleted the wrong keys")
	}
	if got := leaseKeysOf(t, sh, 5); got != "" {
		t.Fatalf("lease 5 keys after revoke %q", got)
	}
	recs, _, _, err := sh.ReadChanges(9, 1<<20)
	if err != nil || len(recs) != 1 || len(recs[0].Events) != 2 {
		t.Fatalf("revoke's change record: %v %v", recs, err)
	}
	if n, err := sh.RevokeLease(nextIndex(sh), 10, 5); err != nil || n != 0 {
		t.Fatalf("second revoke: %d, %v", n, err)
	}
}
