package mvcc

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// logRead is ReadChanges from the log only, never from the writer's tail.
func logRead(t testing.TB, sh *Shard, from int64, maxBytes int, in func([]byte) bool) []ChangeRecord {
	t.Helper()
	done, err := sh.reading()
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	recs, _, _, err := sh.readLog(sh.State(), from, maxBytes, in)
	if err != nil {
		t.Fatalf("read the log from %d: %v", from, err)
	}
	return recs
}

// sameChanges fails the test unless the records hold the same events,
// prev_kv aside where etcd has none (at mod_revision-1 below compact).
func sameChanges(t testing.TB, what string, got, want []ChangeRecord, compact int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := decodeRecord(t, got[i]), decodeRecord(t, want[i])
		if got[i].Revision != want[i].Revision || len(g) != len(w) {
			t.Fatalf("%s: record %d at %d with %d events, want %d with %d", what, i, got[i].Revision, len(g), want[i].Revision, len(w))
		}
		for j := range w {
			for _, ev := range []*mvccpb.Event{g[j], w[j]} {
				if ev.Kv.ModRevision-1 < compact {
					ev.PrevKv = nil
				}
			}
			if !proto.Equal(g[j], w[j]) {
				t.Fatalf("%s: revision %d event %d: %v, want %v", what, want[i].Revision, j, g[j], w[j])
			}
		}
	}
}

func decodeRecord(t testing.TB, rec ChangeRecord) []*mvccpb.Event {
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

	recs, st, next, err := sh.ReadChanges(2, 1<<20, nil)
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
	recs, _, next, err = sh.ReadChanges(3, 1, nil)
	if err != nil || len(recs) != 1 || recs[0].Revision != 3 || next != 4 {
		t.Fatalf("bounded read: %d records, next %d, err %v", len(recs), next, err)
	}
	// Past the applied revision: nothing yet, next stays.
	if recs, _, next, _ = sh.ReadChanges(9, 1<<20, nil); len(recs) != 0 || next != 9 {
		t.Fatalf("future read: %d records, next %d", len(recs), next)
	}
	// Below the compaction revision: gone.
	if err := sh.Compact(nextIndex(sh), 7, 4); err != nil {
		t.Fatal(err)
	}
	if _, st, _, err := sh.ReadChanges(3, 1<<20, nil); !errors.Is(err, ErrCompacted) || st.CompactRevision != 4 {
		t.Fatalf("read below compaction: err %v, compact %d", err, st.CompactRevision)
	}
	if recs, _, _, err := sh.ReadChanges(4, 1<<20, nil); err != nil || len(recs) != 2 {
		t.Fatalf("read from the compaction revision: %d records, err %v", len(recs), err)
	}
}

// rawRecord is the stored part 0 of the change record at rev.
func rawRecord(t *testing.T, sh *Shard, rev int64) []byte {
	t.Helper()
	txn := sh.store.db.NewTransactionAt(uint64(rev), false)
	defer txn.Discard()
	item, err := txn.Get(changeKey(sh.id, rev))
	if err != nil {
		t.Fatal(err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// writeRaw writes a Badger key at version rev, as an entry at rev would.
func writeRaw(t *testing.T, sh *Shard, key, value []byte, rev int64) {
	t.Helper()
	txn := sh.store.db.NewTransactionAt(math.MaxUint64, true)
	defer txn.Discard()
	if err := txn.Set(key, value); err != nil {
		t.Fatal(err)
	}
	if err := txn.CommitAt(uint64(rev), nil); err != nil {
		t.Fatal(err)
	}
}

// A record refers to the versions its events made instead of holding
// their values: an overwrite of a 4 KiB value writes a record of a few
// bytes, and the events read back whole.
func TestChangeRecordRefersToVersions(t *testing.T) {
	_, sh, _ := newShard(t)
	big := strings.Repeat("x", 4096)
	mustPut(t, sh, 2, "k", big)
	mustPut(t, sh, 3, "k", big+"y")
	if raw := rawRecord(t, sh, 3); len(raw) > 16 {
		t.Fatalf("the record of a 4 KiB overwrite holds %d bytes: it copies the values", len(raw))
	}
	ev := decodeRecord(t, logRead(t, sh, 3, 1, nil)[0])[0]
	want := &mvccpb.Event{Type: mvccpb.PUT, Kv: kv("k", big+"y", 2, 3, 2, 0), PrevKv: kv("k", big, 2, 2, 1, 0)}
	if !proto.Equal(ev, want) {
		t.Fatalf("event read back %v, want %v", ev, want)
	}
}

func mustRecord(t *testing.T, sh *Shard, rev int64) ChangeRecord {
	t.Helper()
	recs, _, _, err := sh.ReadChanges(rev, 1, nil)
	if err != nil || len(recs) == 0 || recs[0].Revision != rev {
		t.Fatalf("record at %d: %v, %v", rev, recs, err)
	}
	return recs[0]
}

// A nested txn may put a key and delete it again (etcd allows it across
// sibling txns): the put's version at the revision is the delete, so the
// record keeps the put and the delete's prev_kv inline.
func TestChangeRecordPutThenDeleteInOneTxn(t *testing.T) {
	_, sh, _ := newShard(t)
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "old"), opPut("b", "old")}})
	mustTxn(t, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{
		opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opPut("b", "new")}}),
		opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDelete("a", "")}}),
	}})
	sameChanges(t, "tail against log", []ChangeRecord{mustRecord(t, sh, 3)}, logRead(t, sh, 3, 1, nil), 0)
	got := decodeRecord(t, logRead(t, sh, 3, 1, nil)[0])
	want := []*mvccpb.Event{
		{Type: mvccpb.PUT, Kv: kv("a", "1", 2, 3, 2, 0), PrevKv: kv("a", "old", 2, 2, 1, 0)},
		{Type: mvccpb.PUT, Kv: kv("b", "new", 2, 3, 2, 0), PrevKv: kv("b", "old", 2, 2, 1, 0)},
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("a"), ModRevision: 3}, PrevKv: kv("a", "1", 2, 3, 2, 0)},
	}
	if len(got) != len(want) {
		t.Fatalf("%d events, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("event %d: %v, want %v", i, got[i], want[i])
		}
	}
}

// Records written before the reference format (whole events) still read.
func TestChangeRecordOldFormatReads(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: kv("a", "1", 2, 2, 1, 0)}
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	writeRaw(t, sh, changeKey(sh.id, 2), append(binary.AppendUvarint(nil, uint64(len(b))), b...), 2)
	if raw := rawRecord(t, sh, 2); raw[0] == refsFormat {
		t.Fatal("the old record was not written")
	}
	if got := decodeRecord(t, logRead(t, sh, 2, 1, nil)[0]); len(got) != 1 || !proto.Equal(got[0], ev) {
		t.Fatalf("old record read as %v", got)
	}
	if recs := logRead(t, sh, 2, 1<<20, func(k []byte) bool { return string(k) == "b" }); len(recs) != 0 {
		t.Fatalf("filtered read of the old record: %v", recs)
	}
}

// A filtered read returns only the events of the keys asked for, leaves
// out revisions with none, and is still bounded by the records it skips.
func TestReadChangesFiltered(t *testing.T) {
	_, sh, _ := newShard(t)
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opPut("m", "1")}})
	mustPut(t, sh, 3, "b", "1")
	mustPut(t, sh, 4, "n", "1")
	inAM := func(k []byte) bool { return string(k) < "m" }
	recs, _, next, err := sh.ReadChanges(2, 1<<20, inAM)
	if err != nil || next != 5 || len(recs) != 2 || recs[0].Revision != 2 || recs[1].Revision != 3 || len(recs[0].Events) != 1 {
		t.Fatalf("filtered read: %+v, next %d, %v", recs, next, err)
	}
	if ev := decodeRecord(t, recs[0])[0]; string(ev.Kv.Key) != "a" {
		t.Fatalf("filtered event of %q", ev.Kv.Key)
	}
	sameChanges(t, "filtered tail against log", recs, logRead(t, sh, 2, 1<<20, inAM), 0)
	// One byte per batch: each batch stops after a record, kept or not.
	if recs, _, next, err = sh.ReadChanges(4, 1, inAM); err != nil || len(recs) != 0 || next != 5 {
		t.Fatalf("filtered read of a record with no match: %+v, next %d, %v", recs, next, err)
	}
}

// A version a record refers to can only be missing once a compaction
// passed it (one that overtook a feed's read): the record's own version is
// then ErrCompacted, a prev_kv at mod_revision-1 below the compaction is
// left out (etcd has none there either), and anything else is corruption.
func TestChangeRecordMissingVersion(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	mustPut(t, sh, 3, "b", "1")
	// Records naming versions that are not in Badger.
	put := encodeRecordParts([]*mvccpb.Event{{Type: mvccpb.PUT, Kv: kv("zz", "1", 3, 3, 1, 0)}}, 3, 1<<20, func(*mvccpb.Event) bool { return true })[0]
	prev := encodeRecordParts([]*mvccpb.Event{{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("b"), ModRevision: 3}, PrevKv: kv("b", "0", 1, 1, 1, 0)}}, 3, 1<<20, nil)[0]
	read := func(part []byte) ([][]byte, error) {
		rd := &versionReader{sh: sh, rev: 3}
		defer rd.close()
		return rd.events(part, nil)
	}
	if _, err := read(put); !errors.Is(err, errCorruptRecord) {
		t.Fatalf("missing version above the compaction: %v, want a corrupt record", err)
	}
	if _, err := read(prev); !errors.Is(err, errCorruptRecord) {
		t.Fatalf("missing prev version above the compaction: %v, want a corrupt record", err)
	}
	mustPut(t, sh, 4, "c", "1")
	if err := sh.Compact(nextIndex(sh), 5, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := read(put); !errors.Is(err, ErrCompacted) {
		t.Fatalf("missing version below the compaction: %v, want ErrCompacted", err)
	}
	evs, err := read(prev)
	if err != nil || len(evs) != 1 {
		t.Fatalf("missing prev version below the compaction: %v, %v", evs, err)
	}
	var ev mvccpb.Event
	if err := proto.Unmarshal(evs[0], &ev); err != nil || ev.PrevKv != nil || ev.Type != mvccpb.DELETE || ev.Kv.ModRevision != 3 {
		t.Fatalf("event without its compacted prev_kv: %v, %v", &ev, err)
	}
}
