package mvcc

import (
	"errors"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

func decodeRecord(t *testing.T, rec ChangeRecord) []*mvccpb.Event {
	t.Helper()
	var out []*mvccpb.Event
	for _, b := range rec.Events {
		ev := &mvccpb.Event{}
		if err := proto.Unmarshal(b, ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// The change log holds each revision's events with prev_kv, in order;
// failed writes leave no record; reads are bounded and resumable.
func TestReadChanges(t *testing.T) {
	_, sh, _ := newShard(t)
	changed := sh.Changed()
	mustPut(t, sh, 2, "a", "1")
	select {
	case <-changed:
	default:
		t.Fatal("Changed did not fire on an applied entry")
	}
	mustPut(t, sh, 3, "a", "2")
	mustDelete(t, sh, 4, "a", "")  // deletes a
	mustDelete(t, sh, 5, "zz", "") // deletes nothing: a revision without a record
	mustPut(t, sh, 6, "b", "1")

	recs, st, next, err := sh.ReadChanges(2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != 6 || next != 7 {
		t.Fatalf("state revision %d next %d, want 6 and 7", st.Revision, next)
	}
	var revs []int64
	for _, r := range recs {
		revs = append(revs, r.Revision)
	}
	if len(revs) != 4 || revs[0] != 2 || revs[1] != 3 || revs[2] != 4 || revs[3] != 6 {
		t.Fatalf("records at %v, want [2 3 4 6]", revs)
	}
	put := decodeRecord(t, recs[1])[0]
	if put.Type != mvccpb.PUT || string(put.PrevKv.GetValue()) != "1" || put.PrevKv.ModRevision != 2 {
		t.Fatalf("update event %v: prev_kv should be a@2", put)
	}
	if first := decodeRecord(t, recs[0])[0]; first.PrevKv != nil {
		t.Fatalf("create event has prev_kv %v", first.PrevKv)
	}
	del := decodeRecord(t, recs[2])[0]
	if del.Type != mvccpb.DELETE || del.Kv.ModRevision != 4 || string(del.PrevKv.GetValue()) != "2" {
		t.Fatalf("delete event %v", del)
	}

	// A tiny byte bound returns one record at a time, resumable from next.
	recs, _, next, err = sh.ReadChanges(3, 1)
	if err != nil || len(recs) != 1 || recs[0].Revision != 3 || next != 4 {
		t.Fatalf("bounded read: %d records, next %d, err %v", len(recs), next, err)
	}
	// Past the applied revision: nothing yet, next stays.
	if recs, _, next, _ = sh.ReadChanges(9, 1<<20); len(recs) != 0 || next != 9 {
		t.Fatalf("future read: %d records, next %d", len(recs), next)
	}
	// Below the compaction revision: gone.
	if err := sh.Compact(nextIndex(sh), 7, 4); err != nil {
		t.Fatal(err)
	}
	if _, st, _, err := sh.ReadChanges(3, 1<<20); !errors.Is(err, ErrCompacted) || st.CompactRevision != 4 {
		t.Fatalf("read below compaction: err %v, compact %d", err, st.CompactRevision)
	}
	if recs, _, _, err := sh.ReadChanges(4, 1<<20); err != nil || len(recs) != 2 {
		t.Fatalf("read from the compaction revision: %d records, err %v", len(recs), err)
	}
}
