package mvcc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
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
		// Its change-log record reads back (a nested txn may put and
		// delete one key: the record keeps that put inline), the same
		// from the writer's tail as from the log.
		recs, st, _, err := sh.ReadChanges(rev, 1<<20, nil)
		if err != nil {
			t.Fatalf("change record of the entry: %v", err)
		}
		sameChanges(t, "tail against log", recs, logRead(t, sh, rev, 1<<20, nil), st.CompactRevision)
	})
}

// FuzzChangeRecord: a change-log record's parser refuses what it cannot
// read, what it reads re-encodes to a record that reads the same, and the
// reader turns any record into events or an error, never a panic.
func FuzzChangeRecord(f *testing.F) {
	evs := []*mvccpb.Event{
		{Type: mvccpb.PUT, Kv: kv("a", "1", 2, 3, 2, 0), PrevKv: kv("a", "0", 2, 2, 1, 0)},
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("b"), ModRevision: 3}, PrevKv: kv("b", "x", 2, 2, 1, 0)},
		// Put and deleted by one txn: both inline.
		{Type: mvccpb.PUT, Kv: kv("c", "2", 3, 3, 1, 0)},
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("c"), ModRevision: 3}, PrevKv: kv("c", "2", 3, 3, 1, 0)},
	}
	final := func(ev *mvccpb.Event) bool { return string(ev.Kv.Key) != "c" }
	for _, part := range encodeRecordParts(evs, 3, 16, final) {
		f.Add(part)
	}
	old, _ := proto.Marshal(evs[0])
	f.Add(append(binary.AppendUvarint(nil, uint64(len(old))), old...)) // written before the refsFormat
	f.Add([]byte{refsFormat, refPrevRef, 1, 'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	// The versions the seeds refer to.
	_, sh, _ := newShard(f)
	mustTxn(f, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "0"), opPut("b", "x")}})
	mustTxn(f, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opDelete("b", "")}})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 0 && data[0] == refsFormat {
			if refs, err := parseEventRefs(data[1:]); err == nil {
				back := []byte{refsFormat}
				for _, e := range refs {
					back = appendParsedRef(back, e)
				}
				again, err := parseEventRefs(back[1:])
				if err != nil || !reflect.DeepEqual(again, refs) {
					t.Fatalf("re-encoded record reads differently: %v", err)
				}
			}
		}
		rd := &versionReader{sh: sh, rev: 3}
		defer rd.close()
		all, err := rd.events(data, nil)
		if err != nil {
			return
		}
		for _, b := range all {
			if err := proto.Unmarshal(b, &mvccpb.Event{}); err != nil {
				t.Fatalf("the reader made an event that does not parse: %v", err)
			}
		}
	})
}

// appendParsedRef writes an event reference back as appendEventRef wrote it.
func appendParsedRef(b []byte, e eventRef) []byte {
	b = append(b, e.flags)
	if e.flags&refKVInline != 0 {
		b = protowire.AppendBytes(b, e.kv)
	} else {
		b = protowire.AppendBytes(b, e.key)
	}
	switch {
	case e.flags&refPrevRef != 0:
		b = protowire.AppendVarint(b, uint64(e.prevRev))
	case e.flags&refPrevInline != 0:
		b = protowire.AppendBytes(b, e.prevKV)
	}
	return b
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
