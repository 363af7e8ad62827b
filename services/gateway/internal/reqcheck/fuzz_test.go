package reqcheck

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/limits"
	"github.com/tessera-kv/tessera/pkg/mvcc"
)

// FuzzValidateThenApply: any txn the gateway accepts applies with no error
// outside the documented set (those that depend on state: a missing key
// for ignore_value/ignore_lease, a compacted or future revision in a
// range), and leaves the store readable.
func FuzzValidateThenApply(f *testing.F) {
	for _, req := range []*pb.TxnRequest{
		{Success: ops(put("a"), del("b", "c"), get("a"))},
		{Compare: []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_VERSION, TargetUnion: &pb.Compare_Version{Version: 1}}},
			Success: ops(txn(ops(put("x")), ops(put("x")))), Failure: ops(del("a", "\x00"))},
		{Success: ops(&pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k"), IgnoreValue: true}}})},
		{Success: ops(&pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), Revision: 1 << 40}}})},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	o := mvcc.DefaultOptions()
	o.MemTableSize, o.BlockCacheSize = 8<<20, 8<<20
	s, err := mvcc.Open(f.TempDir(), o)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	sh, err := s.OpenShard(1, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	lim := Limits{MaxTxnOps: limits.DefaultMaxTxnOps, MaxKeyBytes: limits.MaxKeyBytes}
	rev := int64(1)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.TxnRequest
		if proto.Unmarshal(data, &req) != nil || len(data) > limits.DefaultMaxRequestBytes || Txn(&req, lim) != nil {
			return
		}
		rev++
		st := sh.State()
		_, err := sh.ApplyTxn(st.AppliedIndex+1, rev, &req)
		if err != nil && !errors.Is(err, mvcc.ErrKeyNotFound) && !errors.Is(err, mvcc.ErrCompacted) && !errors.Is(err, mvcc.ErrFutureRev) {
			t.Fatalf("an accepted txn failed in apply: %v", err)
		}
		if _, err := sh.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 10}); err != nil {
			t.Fatalf("range after the txn: %v", err)
		}
	})
}
