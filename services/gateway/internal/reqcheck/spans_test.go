package reqcheck

import (
	"bytes"
	"fmt"
	"math/rand"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// The span set answers like a linear scan over the same spans.
func TestSpanSetMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	key := func() []byte { return []byte{byte('a' + rng.Intn(20)), byte('a' + rng.Intn(3))} }
	for round := 0; round < 200; round++ {
		var set spanSet
		var list []span
		for i := rng.Intn(40); i > 0; i-- {
			lo := key()
			var s span
			switch rng.Intn(4) {
			case 0:
				s = spanOf(lo, nil)
			case 1:
				s = span{lo: lo, open: true}
			default:
				s = spanOf(lo, key())
			}
			set.add(s)
			list = append(list, s)
		}
		for q := 0; q < 50; q++ {
			k := key()
			want := false
			for _, s := range list {
				if bytes.Compare(k, s.lo) >= 0 && s.above(k) {
					want = true
				}
			}
			if got := set.has(k); got != want {
				t.Fatalf("round %d: has(%q) = %v, want %v; spans %v", round, k, got, want, list)
			}
		}
	}
}

// A txn with the most deletes and puts a request can carry is checked
// (correctly) without the quadratic cost a linear scan had.
func TestTxnManyDeletesAndPuts(t *testing.T) {
	var success []*pb.RequestOp
	for i := 0; i < 20000; i++ {
		success = append(success, del(fmt.Sprintf("d%06d", i), fmt.Sprintf("d%06d\x01", i)))
	}
	for i := 0; i < 20000; i++ {
		success = append(success, put(fmt.Sprintf("p%06d", i)))
	}
	if err := Txn(&pb.TxnRequest{Success: success}, Limits{MaxTxnOps: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	success = append(success, put("d012345\x00"))
	if err := Txn(&pb.TxnRequest{Success: success}, Limits{MaxTxnOps: 1 << 20}); err != rpctypes.ErrGRPCDuplicateKey {
		t.Fatalf("a put inside a deleted range: %v", err)
	}
}
