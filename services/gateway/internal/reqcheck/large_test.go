package reqcheck

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

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
