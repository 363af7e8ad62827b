package datasm

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

func testStore(t testing.TB, dir string) *mvcc.Store {
	t.Helper()
	o := mvcc.DefaultOptions()
	o.MemTableSize, o.BlockCacheSize = 8<<20, 8<<20
	s, err := mvcc.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func open(t testing.TB, s *mvcc.Store) (*StateMachine, uint64) {
	t.Helper()
	m := Factory(s, nil, nil, Hooks{})(2, 1).(*StateMachine)
	idx, err := m.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, idx
}

func txnCmd(rev int64, req *pb.TxnRequest) []byte {
	b, _ := proto.Marshal(req)
	c, _ := proto.Marshal(&raftcmdpb.DataCommand{Revision: rev, Op: &raftcmdpb.DataCommand_Txn{Txn: b}})
	return c
}

func putReq(key []byte, val string) *pb.TxnRequest {
	return &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: []byte(val)}}}}}
}

func txnBytes(req *pb.TxnRequest) []byte {
	b, _ := proto.Marshal(req)
	return b
}

// TestSplitRefusesStaleGeneration splits the shard: a write and a read
// routed by the generation from before are refused with WrongShard, the
// same ones routed by the new one go through, and the hook sees the child.
func TestSplitRefusesStaleGeneration(t *testing.T) {
	s := testStore(t, t.TempDir())
	var child uint64
	m := Factory(s, nil, nil, Hooks{Split: func(_, _ mvcc.Bounds, id uint64, _ []uint64) { child = id }})(2, 1).(*StateMachine)
	if _, err := m.Open(nil); err != nil {
		t.Fatal(err)
	}
	apply := func(index uint64, c *raftcmdpb.DataCommand) raftcmdpb.DataResult_Code {
		out, err := m.Update([]sm.Entry{{Index: index, Cmd: cmd(c)}})
		if err != nil {
			t.Fatal(err)
		}
		var res raftcmdpb.DataResult
		if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
			t.Fatal(err)
		}
		return res.Code
	}
	put := func(rev int64, gen uint64) *raftcmdpb.DataCommand {
		return &raftcmdpb.DataCommand{Revision: rev, Generation: gen, Op: &raftcmdpb.DataCommand_Txn{Txn: txnBytes(putReq([]byte("a"), "1"))}}
	}
	if c := apply(1, put(2, 1)); c != raftcmdpb.DataResult_CODE_OK {
		t.Fatalf("put at generation 1: %s", c)
	}
	if c := apply(2, &raftcmdpb.DataCommand{Revision: 3, Op: &raftcmdpb.DataCommand_Split{Split: &raftcmdpb.Split{SplitKey: []byte("m"), ChildId: 7, Generation: 1}}}); c != raftcmdpb.DataResult_CODE_OK || child != 7 {
		t.Fatalf("split: %s, hook saw child %d", c, child)
	}
	if c := apply(3, put(4, 1)); c != raftcmdpb.DataResult_CODE_WRONG_SHARD {
		t.Fatalf("put routed by generation 1 after the split: %s, want WRONG_SHARD", c)
	}
	if c := apply(4, put(5, 2)); c != raftcmdpb.DataResult_CODE_OK {
		t.Fatalf("put at generation 2: %s", c)
	}
	if _, err := m.Lookup(RangeQuery{Request: &pb.RangeRequest{Key: []byte("a")}, Generation: 1}); !errors.Is(err, mvcc.ErrWrongShard) {
		t.Fatalf("read routed by generation 1: %v, want ErrWrongShard", err)
	}
	if _, err := m.Lookup(RangeQuery{Request: &pb.RangeRequest{Key: []byte("a")}, Generation: 2}); err != nil {
		t.Fatalf("read at generation 2: %v", err)
	}
}

func cmd(c *raftcmdpb.DataCommand) []byte {
	b, _ := proto.Marshal(c)
	return b
}

// Every hostile entry applies with an error result; the store keeps
// working and reopens at the last index.
func TestHostileEntriesApply(t *testing.T) {
	dir := t.TempDir()
	s := testStore(t, dir)
	m, _ := open(t, s)

	// Everything of a 100k-key delete in one entry, and a deeply nested txn.
	var ops []*pb.RequestOp
	for i := 0; i < 1000; i++ {
		ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: fmt.Appendf(nil, "/d/%06d", i), Value: []byte("v")}}})
	}
	nested := putReq([]byte("/n/leaf"), "v")
	for i := 0; i < 200; i++ {
		nested = &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: nested}}}}
	}
	deleteAll := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("/d/"), RangeEnd: []byte("/d0")}}}}}

	tests := []struct {
		name string
		cmd  []byte
		want raftcmdpb.DataResult_Code
	}{
		{"a put", txnCmd(10, putReq([]byte("a"), "1")), raftcmdpb.DataResult_CODE_OK},
		{"garbage bytes", []byte{0xff, 0xfe, 0x01, 0x02, 0x03}, raftcmdpb.DataResult_CODE_INVALID},
		{"empty entry", nil, raftcmdpb.DataResult_CODE_INVALID},
		{"no command", cmd(&raftcmdpb.DataCommand{Revision: 20}), raftcmdpb.DataResult_CODE_INVALID},
		{"unknown field only", []byte{0xf8, 0x3f, 0x01}, raftcmdpb.DataResult_CODE_INVALID},
		{"txn bytes not a txn", cmd(&raftcmdpb.DataCommand{Revision: 21, Op: &raftcmdpb.DataCommand_Txn{Txn: []byte{0xff, 0xff}}}), raftcmdpb.DataResult_CODE_INVALID},
		{"revision at the last one", txnCmd(10, putReq([]byte("a"), "stale")), raftcmdpb.DataResult_CODE_STALE_REVISION},
		{"revision below the last one", txnCmd(3, putReq([]byte("a"), "stale")), raftcmdpb.DataResult_CODE_STALE_REVISION},
		{"negative revision", txnCmd(-5, putReq([]byte("a"), "stale")), raftcmdpb.DataResult_CODE_STALE_REVISION},
		{"key over the store's limit", txnCmd(22, putReq(bytes.Repeat([]byte("k"), 65001), "v")), raftcmdpb.DataResult_CODE_TOO_LARGE},
		{"empty op", txnCmd(23, &pb.TxnRequest{Success: []*pb.RequestOp{{}}}), raftcmdpb.DataResult_CODE_OK},
		{"1000 puts", txnCmd(24, &pb.TxnRequest{Success: ops}), raftcmdpb.DataResult_CODE_OK},
		{"200 nested levels", txnCmd(25, nested), raftcmdpb.DataResult_CODE_OK},
		{"delete range", txnCmd(26, deleteAll), raftcmdpb.DataResult_CODE_OK},
		{"compact above the revision", cmd(&raftcmdpb.DataCommand{Revision: 27, Op: &raftcmdpb.DataCommand_Compact{Compact: &raftcmdpb.Compact{Revision: 1000}}}), raftcmdpb.DataResult_CODE_FUTURE_REVISION},
		{"compact at a negative revision", cmd(&raftcmdpb.DataCommand{Revision: 28, Op: &raftcmdpb.DataCommand_Compact{Compact: &raftcmdpb.Compact{Revision: -1}}}), raftcmdpb.DataResult_CODE_COMPACTED},
		{"revoke of unknown leases", cmd(&raftcmdpb.DataCommand{Revision: 29, Op: &raftcmdpb.DataCommand_RevokeLease{RevokeLease: &raftcmdpb.RevokeLease{LeaseIds: []int64{0, -1, 99}}}}), raftcmdpb.DataResult_CODE_OK},
		{"tick", cmd(&raftcmdpb.DataCommand{Revision: 30, Op: &raftcmdpb.DataCommand_Tick{Tick: &raftcmdpb.Tick{}}}), raftcmdpb.DataResult_CODE_OK},
		{"a put after all that", txnCmd(31, putReq([]byte("a"), "2")), raftcmdpb.DataResult_CODE_OK},
	}
	index := uint64(0)
	for _, tt := range tests {
		index++
		out, err := m.Update([]sm.Entry{{Index: index, Cmd: tt.cmd}})
		if err != nil {
			t.Fatalf("%s: Update returned %v: apply must be total", tt.name, err)
		}
		var res raftcmdpb.DataResult
		if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
			t.Fatalf("%s: result: %v", tt.name, err)
		}
		if res.Code != tt.want || out[0].Result.Value != uint64(res.Code)+1 {
			t.Errorf("%s: result %v (%q), want %v", tt.name, res.Code, res.Message, tt.want)
		}
		if got := m.shard.State().AppliedIndex; got != index {
			t.Errorf("%s: applied index %d, want %d", tt.name, got, index)
		}
	}
	resp, err := m.Lookup(RangeQuery{Request: &pb.RangeRequest{Key: []byte("a")}})
	if err != nil {
		t.Fatal(err)
	}
	if kvs := resp.(*pb.RangeResponse).Kvs; len(kvs) != 1 || string(kvs[0].Value) != "2" {
		t.Fatalf("a = %v, want 2", kvs)
	}

	// A stale entry last, then a restart: Open reports its index.
	index++
	if _, err := m.Update([]sm.Entry{{Index: index, Cmd: txnCmd(5, putReq([]byte("a"), "stale"))}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = testStore(t, dir)
	defer s.Close()
	if _, got := open(t, s); got != index {
		t.Fatalf("Open after restart returned index %d, want %d", got, index)
	}
}
