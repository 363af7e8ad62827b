package mvcc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// FuzzApplyTxn: any bytes a replica's log may hold as a txn apply: the
// result is a response or a request error, never a storage error, and the
// shard stays readable and writable.
func FuzzApplyTxn(f *testing.F) {
	for _, req := range []*pb.TxnRequest{
		{Success: []*pb.RequestOp{opPut("a", "1"), opDelete("a", "z"), opRange(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})}},
		{Compare: []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_MOD, Result: pb.Compare_LESS, TargetUnion: &pb.Compare_ModRevision{ModRevision: 5}}},
			Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("b", "2")}})}, Failure: []*pb.RequestOp{{}}},
		{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("c"), IgnoreValue: true, IgnoreLease: true, Lease: 7})}},
		{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a"), Revision: -4, Limit: -1, SortTarget: 9, SortOrder: 7})}},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	// One shard per fuzzing process: a store per input would be slow.
	_, sh, _ := newShard(f)
	rev := int64(1)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.TxnRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		rev++
		_, err := sh.ApplyTxn(nextIndex(sh), rev, &req)
		if err != nil && !isRequestError(err) {
			t.Fatalf("ApplyTxn: %v", err)
		}
		if _, err := sh.Range(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Limit: 10}); err != nil {
			t.Fatalf("range after the entry: %v", err)
		}
		if sh.State().LastEntry != rev {
			t.Fatalf("entry at %d not recorded: %+v", rev, sh.State())
		}
	})
}

// FuzzChangeRecord: a change-log record's parser refuses what it cannot
// read, and what it reads re-encodes to a record that reads the same.
func FuzzChangeRecord(f *testing.F) {
	evs := []*mvccpb.Event{{Type: mvccpb.PUT, Kv: kv("a", "1", 2, 2, 1, 0)}, {Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("b"), ModRevision: 2}, PrevKv: kv("b", "x", 1, 1, 1, 0)}}
	for _, part := range encodeEventParts(evs, 16) {
		f.Add(part)
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		raw, err := splitEvents(data)
		if err != nil {
			return
		}
		var back []byte
		for _, e := range raw {
			back = binary.AppendUvarint(back, uint64(len(e)))
			back = append(back, e...)
		}
		again, err := splitEvents(back)
		if err != nil || len(again) != len(raw) {
			t.Fatalf("re-encoded record reads differently: %v", err)
		}
		for i := range raw {
			if !bytes.Equal(again[i], raw[i]) {
				t.Fatalf("event %d differs after re-encoding", i)
			}
		}
	})
}

// FuzzStoredValues: the shard-state record and the key-value envelope
// decode or fail, never panic.
func FuzzStoredValues(f *testing.F) {
	f.Add(State{AppliedIndex: 3, Revision: 9, CompactRevision: 2, LastEntry: 10}.encode())
	f.Add(State{AppliedIndex: 3, Revision: 9, LastEntry: 10, Bounds: Bounds{Start: []byte("m"), Generation: 2, Parent: 1, SplitRevision: 8}}.encode())
	f.Add(encodeKV(kv("a", "v", 2, 3, 2, 7)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if st, err := decodeState(data); err == nil {
			// The 24- and 32-byte forms predate bounds: the shard fills them
			// in when it opens, so only a record with bounds round-trips.
			if st.Bounds.Generation == 0 {
				if len(data) > stateFixed {
					t.Fatalf("state of %d bytes decoded without bounds", len(data))
				}
			} else if again, err := decodeState(st.encode()); err != nil || !reflect.DeepEqual(again, st) {
				t.Fatalf("state %+v re-encodes as %+v (%v)", st, again, err)
			}
		}
		var kv mvccpb.KeyValue
		_ = proto.Unmarshal(data, &kv)
	})
}

// FuzzSnapshotStream: a crafted shard snapshot (what a lagging replica
// receives, and what a backup holds) is refused with an error; nothing
// allocates what a length in it claims.
func FuzzSnapshotStream(f *testing.F) {
	_, sh, _ := newShard(f)
	mustPut(f, sh, 2, "a", "1")
	mustPut(f, sh, 3, "b", "2")
	var buf bytes.Buffer
	snap := sh.PrepareSnapshot()
	if err := snap.WriteTo(&buf, nil); err != nil {
		f.Fatal(err)
	}
	snap.Close()
	f.Add(buf.Bytes())
	f.Add(append(append([]byte{}, snapshotMagic...), make([]byte, 40)...))
	huge := append(append([]byte{}, buf.Bytes()[:len(snapshotMagic)+40]...), 0xff, 0xff, 0xff, 0xff, 0x0f)
	f.Add(huge)
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := InspectSnapshot(bufio.NewReaderSize(bytes.NewReader(data), 1<<20))
		if err == nil && info.Versions < info.Keys {
			t.Fatalf("inconsistent info %+v", info)
		}
	})
}
