package reqcheck

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func put(k string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k)}}}
}

func del(k, end string) *pb.RequestOp {
	d := &pb.DeleteRangeRequest{Key: []byte(k)}
	if end != "" {
		d.RangeEnd = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: d}}
}

func get(k string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k)}}}
}

func txn(success, failure []*pb.RequestOp) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: success, Failure: failure}}}
}

func ops(o ...*pb.RequestOp) []*pb.RequestOp { return o }

func TestTxn(t *testing.T) {
	many := make([]*pb.RequestOp, 129)
	for i := range many {
		many[i] = get("k")
	}
	tests := []struct {
		name string
		req  *pb.TxnRequest
		want error
	}{
		{name: "empty txn", req: &pb.TxnRequest{}},
		{name: "distinct puts", req: &pb.TxnRequest{Success: ops(put("a"), put("b"))}},
		{name: "same key in both branches", req: &pb.TxnRequest{Success: ops(put("a")), Failure: ops(put("a"))}},
		{name: "duplicate put", req: &pb.TxnRequest{Success: ops(put("a"), put("a"))}, want: rpctypes.ErrGRPCDuplicateKey},
		{name: "put in deleted range", req: &pb.TxnRequest{Success: ops(del("a", "c"), put("b"))}, want: rpctypes.ErrGRPCDuplicateKey},
		{name: "put after range end", req: &pb.TxnRequest{Success: ops(del("a", "c"), put("c"))}},
		{name: "put on deleted key", req: &pb.TxnRequest{Success: ops(del("a", ""), put("a"))}, want: rpctypes.ErrGRPCDuplicateKey},
		// etcd's check reads range_end "\x00" literally: no overlap found.
		{name: "put in from-key delete", req: &pb.TxnRequest{Success: ops(del("a", "\x00"), put("zzz"))}},
		{name: "nested branches may share a key", req: &pb.TxnRequest{Success: ops(txn(ops(put("a")), ops(put("a"))))}},
		{name: "nested put clashes with outer put", req: &pb.TxnRequest{Success: ops(put("a"), txn(ops(put("a")), nil))}, want: rpctypes.ErrGRPCDuplicateKey},
		{name: "nested put in outer delete", req: &pb.TxnRequest{Success: ops(del("a", "z"), txn(nil, ops(put("m"))))}, want: rpctypes.ErrGRPCDuplicateKey},
		{name: "two nested txns put one key", req: &pb.TxnRequest{Success: ops(txn(ops(put("a")), nil), txn(ops(put("a")), nil))}, want: rpctypes.ErrGRPCDuplicateKey},
		{name: "too many ops", req: &pb.TxnRequest{Success: many}, want: rpctypes.ErrGRPCTooManyOps},
		{name: "empty compare key", req: &pb.TxnRequest{Compare: []*pb.Compare{{}}}, want: rpctypes.ErrGRPCEmptyKey},
		{name: "empty op", req: &pb.TxnRequest{Success: ops(&pb.RequestOp{})}, want: rpctypes.ErrGRPCKeyNotFound},
		{name: "empty put key", req: &pb.TxnRequest{Success: ops(put(""))}, want: rpctypes.ErrGRPCEmptyKey},
		{name: "put key at the limit", req: &pb.TxnRequest{Success: ops(put("0123456789"))}},
		{name: "nested put key over the limit", req: &pb.TxnRequest{Failure: ops(txn(nil, ops(put("0123456789x"))))}, want: ErrKeyTooLarge(10)},
		{name: "delete in a later nested txn does not cover an earlier one's put", req: &pb.TxnRequest{Success: ops(txn(ops(put("b")), nil), txn(ops(del("a", "c")), nil))}},
		{name: "outer put in a nested delete", req: &pb.TxnRequest{Success: ops(txn(ops(del("a", "c")), nil), put("b"))}, want: rpctypes.ErrGRPCDuplicateKey},
		{name: "bad sort in nested range", req: &pb.TxnRequest{Failure: ops(txn(ops(&pb.RequestOp{Request: &pb.RequestOp_RequestRange{
			RequestRange: &pb.RangeRequest{Key: []byte("k"), SortOrder: 7}}}), nil))}, want: rpctypes.ErrGRPCInvalidSortOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Txn(tt.req, Limits{MaxTxnOps: 128, MaxKeyBytes: 10})
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSingleRequests(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"range empty key", Range(&pb.RangeRequest{}), rpctypes.ErrGRPCEmptyKey},
		{"range bad sort target", Range(&pb.RangeRequest{Key: []byte("k"), SortTarget: 9}), rpctypes.ErrGRPCInvalidSortOption},
		{"range ok", Range(&pb.RangeRequest{Key: []byte("k"), SortOrder: pb.RangeRequest_DESCEND}), nil},
		{"put value with ignore_value", Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), IgnoreValue: true}, Limits{}), rpctypes.ErrGRPCValueProvided},
		{"put lease with ignore_lease", Put(&pb.PutRequest{Key: []byte("k"), Lease: 5, IgnoreLease: true}, Limits{}), rpctypes.ErrGRPCLeaseProvided},
		{"put ok", Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("v")}, Limits{}), nil},
		{"put key over the limit", Put(&pb.PutRequest{Key: []byte("kkk")}, Limits{MaxKeyBytes: 2}), ErrKeyTooLarge(2)},
		{"delete empty key", DeleteRange(&pb.DeleteRangeRequest{}), rpctypes.ErrGRPCEmptyKey},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}

func TestReadOnlyLeasesKeys(t *testing.T) {
	ro := &pb.TxnRequest{Success: ops(get("a")), Failure: ops(get("b"))}
	if !ReadOnly(ro) {
		t.Fatal("ranges only: want read-only")
	}
	rw := &pb.TxnRequest{Success: ops(get("a")), Failure: ops(txn(ops(get("b")), nil))}
	if ReadOnly(rw) {
		t.Fatal("a nested txn counts as a write, as in etcd")
	}
	leased := &pb.TxnRequest{Success: ops(txn(ops(&pb.RequestOp{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: []byte("k"), Lease: 42}}}), nil))}
	if l := Leases(leased); len(l) != 1 || l[0] != 42 {
		t.Fatalf("leases %v", l)
	}
	var keys []string
	Keys(&pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("c")}}, Success: ops(put("p"), del("d", "e")), Failure: ops(txn(ops(get("n")), nil))},
		func(k, _ []byte) { keys = append(keys, string(k)) })
	if got := len(keys); got != 4 || keys[0] != "c" || keys[3] != "n" {
		t.Fatalf("keys %v", keys)
	}
}
