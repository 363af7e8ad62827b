package datasm

import (
	"testing"

	sm "github.com/lni/dragonboat/v4/statemachine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

// FuzzUpdate: whatever bytes a committed entry holds, Update applies it
// (no error to dragonboat), records its index, and the shard still serves.
func FuzzUpdate(f *testing.F) {
	f.Add(txnCmd(5, putReq([]byte("a"), "1")))
	f.Add(cmd(&raftcmdpb.DataCommand{Revision: 9, Op: &raftcmdpb.DataCommand_Compact{Compact: &raftcmdpb.Compact{Revision: 3}}}))
	f.Add(cmd(&raftcmdpb.DataCommand{Revision: 9, Op: &raftcmdpb.DataCommand_RevokeLease{RevokeLease: &raftcmdpb.RevokeLease{LeaseIds: []int64{1, 2}}}}))
	f.Add(cmd(&raftcmdpb.DataCommand{Revision: 11, Op: &raftcmdpb.DataCommand_Split{Split: &raftcmdpb.Split{SplitKey: []byte("m"), ChildId: 7, Generation: 1, Replicas: []uint64{1}}}}))
	f.Add(cmd(&raftcmdpb.DataCommand{Revision: 12, Generation: 1, Op: &raftcmdpb.DataCommand_Txn{Txn: txnBytes(putReq([]byte("z"), "2"))}}))
	f.Add([]byte{0x12, 0x03, 0x0a, 0x01, 0xff})
	s := testStore(f, f.TempDir())
	f.Cleanup(func() { s.Close() })
	m, index := open(f, s)
	f.Fuzz(func(t *testing.T, data []byte) {
		index++
		out, err := m.Update([]sm.Entry{{Index: index, Cmd: data}})
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		var res raftcmdpb.DataResult
		if err := proto.Unmarshal(out[0].Result.Data, &res); err != nil {
			t.Fatalf("result: %v", err)
		}
		if got := m.shard.State().AppliedIndex; got != index {
			t.Fatalf("applied index %d, want %d", got, index)
		}
		if _, err := m.Lookup(RangeQuery{Request: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 5}}); err != nil {
			t.Fatalf("range: %v", err)
		}
	})
}
