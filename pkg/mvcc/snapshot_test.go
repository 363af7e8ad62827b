package mvcc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// snapshotHistory builds a history with updates, leases, single and range
// deletes, re-creations, a compaction and a tick; it ends at revision 14.
func snapshotHistory(t *testing.T, sh *Shard) {
	t.Helper()
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "a2"), opPut("dir/1", "d1"), opPut("dir/2", "d2")}})
	mustTxn(t, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("l"), Value: []byte("lv"), Lease: 99})}})
	mustPut(t, sh, 4, "a", "a4")
	mustDelete(t, sh, 5, "dir/", "dir0")
	mustPut(t, sh, 6, "dir/1", "d1b")
	mustPut(t, sh, 7, "tmp", "t")
	mustDelete(t, sh, 8, "tmp", "")
	if err := sh.Compact(nextIndex(sh), 9, 3); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	mustPut(t, sh, 10, "a", "a10")
	if err := sh.Tick(nextIndex(sh), 11); err != nil {
		t.Fatalf("Tick: %v", err)
	}
	mustPut(t, sh, 12, "\xff", "ff")
	mustDelete(t, sh, 13, "l", "")
	mustPut(t, sh, 14, "z", "")
}

func writeSnapshot(t *testing.T, sh *Shard) (*bytes.Buffer, State) {
	t.Helper()
	snap := sh.PrepareSnapshot()
	defer snap.Close()
	var buf bytes.Buffer
	if err := snap.WriteTo(&buf, make(chan struct{})); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	return &buf, snap.State()
}

func restoreFresh(t *testing.T, snap []byte) (*Store, *Shard, string) {
	t.Helper()
	s, sh, dir := newShard(t)
	if err := sh.Restore(bytes.NewReader(snap), make(chan struct{})); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return s, sh, dir
}

func TestSnapshotRoundTrip(t *testing.T) {
	_, src, _ := newShard(t)
	snapshotHistory(t, src)
	wantState := State{AppliedIndex: 13, Revision: 14, CompactRevision: 3}
	assertState(t, "source", src.State(), wantState)

	buf, snapState := writeSnapshot(t, src)
	assertState(t, "snapshot", snapState, wantState)
	s, dst, dir := restoreFresh(t, buf.Bytes())
	assertState(t, "restored", dst.State(), wantState)

	// Every revision reads the same, errors included.
	assertSameHistory(t, dst, src, 15)

	// Literal checks, so the test does not only compare two stores.
	tests := []struct {
		rev     int64
		want    []*mvccpb.KeyValue
		wantErr error
	}{
		{rev: 2, wantErr: ErrCompacted},
		{rev: 3, want: []*mvccpb.KeyValue{kv("a", "a2", 2, 2, 1, 0), kv("dir/1", "d1", 2, 2, 1, 0), kv("dir/2", "d2", 2, 2, 1, 0), kv("l", "lv", 3, 3, 1, 99)}},
		{rev: 4, want: []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 2, 0), kv("dir/1", "d1", 2, 2, 1, 0), kv("dir/2", "d2", 2, 2, 1, 0), kv("l", "lv", 3, 3, 1, 99)}},
		// Tombstones survive the snapshot: deleted keys stay deleted.
		{rev: 5, want: []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 2, 0), kv("l", "lv", 3, 3, 1, 99)}},
		{rev: 6, want: []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 2, 0), kv("dir/1", "d1b", 6, 6, 1, 0), kv("l", "lv", 3, 3, 1, 99)}},
		{rev: 7, want: []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 2, 0), kv("dir/1", "d1b", 6, 6, 1, 0), kv("l", "lv", 3, 3, 1, 99), kv("tmp", "t", 7, 7, 1, 0)}},
		{rev: 8, want: []*mvccpb.KeyValue{kv("a", "a4", 2, 4, 2, 0), kv("dir/1", "d1b", 6, 6, 1, 0), kv("l", "lv", 3, 3, 1, 99)}},
		{rev: 14, want: []*mvccpb.KeyValue{kv("a", "a10", 2, 10, 3, 0), kv("dir/1", "d1b", 6, 6, 1, 0), kv("z", "", 14, 14, 1, 0), kv("\xff", "ff", 12, 12, 1, 0)}},
		{rev: 15, wantErr: ErrFutureRev},
	}
	for _, tt := range tests {
		r := readAll(dst, tt.rev)
		assertErr(t, fmt.Sprintf("restored rev %d", tt.rev), r.err, tt.wantErr)
		if tt.wantErr == nil {
			assertKVs(t, fmt.Sprintf("restored rev %d", tt.rev), r.kvs, tt.want)
		}
	}

	// The restored shard goes on like the source.
	for _, sh := range []*Shard{src, dst} {
		mustTxn(t, sh, 20, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "a20"), opPut("dir/2", "new"), opDelete("z", "")}})
	}
	assertKV(t, "a after restore", get(t, dst, "a", 0), kv("a", "a20", 2, 20, 4, 0))
	assertKV(t, "dir/2 after restore", get(t, dst, "dir/2", 0), kv("dir/2", "new", 20, 20, 1, 0))
	assertSameHistory(t, dst, src, 21)
	_, err := dst.ApplyTxn(100, 14, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "stale")}})
	assertErr(t, "stale entry after restore", err, ErrStaleRevision)
	for _, sh := range []*Shard{src, dst} {
		assertErr(t, "recompact", sh.Compact(100, 21, 3), ErrCompacted)
	}
	assertState(t, "restored after refused compaction", dst.State(), State{AppliedIndex: 100, Revision: 21, CompactRevision: 3})

	// The restored data and state are durable.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	dst2, err := s2.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	assertState(t, "restored after reopen", dst2.State(), src.State())
	assertSameHistory(t, dst2, src, 22)
}

func TestSnapshotIsPointInTime(t *testing.T) {
	_, src, _ := newShard(t)
	mustPut(t, src, 2, "a", "1")
	mustPut(t, src, 3, "b", "1")
	snap := src.PrepareSnapshot()
	defer snap.Close()
	// Writes after PrepareSnapshot are not part of it.
	mustPut(t, src, 4, "a", "2")
	mustDelete(t, src, 5, "b", "")
	mustPut(t, src, 6, "c", "1")
	if err := src.Compact(nextIndex(src), 7, 5); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.WriteTo(&buf, make(chan struct{})); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	_, dst, _ := restoreFresh(t, buf.Bytes())
	assertState(t, "restored", dst.State(), State{AppliedIndex: 2, Revision: 3})
	assertKVs(t, "restored data", readAll(dst, 0).kvs, []*mvccpb.KeyValue{kv("a", "1", 2, 2, 1, 0), kv("b", "1", 3, 3, 1, 0)})
	assertKVs(t, "restored at 2", readAll(dst, 2).kvs, []*mvccpb.KeyValue{kv("a", "1", 2, 2, 1, 0)})
	assertErr(t, "restored read at 4", readAll(dst, 4).err, ErrFutureRev)
}

func TestSnapshotRestoreReplacesContents(t *testing.T) {
	_, src, _ := newShard(t)
	mustPut(t, src, 2, "a", "src")
	mustPut(t, src, 3, "b", "src")
	buf, _ := writeSnapshot(t, src)

	// The target is ahead of the snapshot, with keys of its own.
	_, dst, _ := newShard(t)
	mustPut(t, dst, 2, "a", "dst")
	mustPut(t, dst, 30, "old", "dst")
	mustPut(t, dst, 40, "b", "dst")
	if err := dst.Compact(nextIndex(dst), 50, 30); err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(buf.Bytes()), make(chan struct{})); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	assertState(t, "restored", dst.State(), src.State())
	assertSameHistory(t, dst, src, 4)
	assertKVs(t, "restored data", readAll(dst, 0).kvs, []*mvccpb.KeyValue{kv("a", "src", 2, 2, 1, 0), kv("b", "src", 3, 3, 1, 0)})
	// The shard now follows the snapshot's revision, not its old one.
	mustPut(t, dst, 4, "old", "new")
	assertKV(t, "old re-created", get(t, dst, "old", 0), kv("old", "new", 4, 4, 1, 0))
	assertKVs(t, "final", readAll(dst, 0).kvs, []*mvccpb.KeyValue{kv("a", "src", 2, 2, 1, 0), kv("b", "src", 3, 3, 1, 0), kv("old", "new", 4, 4, 1, 0)})
}

func TestSnapshotOfEmptyShard(t *testing.T) {
	_, src, _ := newShard(t)
	buf, st := writeSnapshot(t, src)
	assertState(t, "snapshot state", st, State{Revision: 1})
	_, dst, _ := restoreFresh(t, buf.Bytes())
	assertState(t, "restored", dst.State(), State{Revision: 1})
	mustPut(t, dst, 2, "a", "1")
	assertKV(t, "a", get(t, dst, "a", 0), kv("a", "1", 2, 2, 1, 0))
}

func TestSnapshotOfPartialShard(t *testing.T) {
	s := openStore(t, t.TempDir())
	left, err := s.OpenShard(1, nil, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	right, err := s.OpenShard(2, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, left, 2, "a", "l")
	mustPut(t, right, 2, "x", "r")
	mustPut(t, left, 3, "b", "l")
	mustPut(t, right, 3, "m", "r")
	buf, _ := writeSnapshot(t, left)
	_, dst, _ := restoreFresh(t, buf.Bytes())
	assertState(t, "restored", dst.State(), left.State())
	assertKVs(t, "restored data", readAll(dst, 0).kvs, []*mvccpb.KeyValue{kv("a", "l", 2, 2, 1, 0), kv("b", "l", 3, 3, 1, 0)})

	// Restoring into a partial shard is refused and changes nothing.
	err = right.Restore(bytes.NewReader(buf.Bytes()), make(chan struct{}))
	if err == nil {
		t.Fatalf("Restore into a partial shard succeeded")
	}
	assertKVs(t, "right after refused restore", readAll(right, 0).kvs, []*mvccpb.KeyValue{kv("m", "r", 3, 3, 1, 0), kv("x", "r", 2, 2, 1, 0)})
	assertKVs(t, "left after refused restore", readAll(left, 0).kvs, []*mvccpb.KeyValue{kv("a", "l", 2, 2, 1, 0), kv("b", "l", 3, 3, 1, 0)})
}

func TestRestoreRejectsGarbage(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	for _, in := range [][]byte{nil, []byte("x"), []byte("NOT-A-TESSERA-SNAPSHOT-AT-ALL-PADDING-PADDING")} {
		if err := sh.Restore(bytes.NewReader(in), make(chan struct{})); err == nil {
			t.Errorf("Restore(%q) succeeded", in)
		}
	}
	assertState(t, "after rejected restores", sh.State(), State{AppliedIndex: 1, Revision: 2})
	assertKV(t, "a", get(t, sh, "a", 0), kv("a", "1", 2, 2, 1, 0))
}

func TestRestoreRejectsTruncatedSnapshot(t *testing.T) {
	_, src, _ := newShard(t)
	snapshotHistory(t, src)
	buf, _ := writeSnapshot(t, src)
	full := buf.Bytes()
	for _, n := range []int{len(snapshotMagic) + 10, len(full) / 2, len(full) - 1} {
		_, dst, _ := newShard(t)
		if err := dst.Restore(bytes.NewReader(full[:n]), make(chan struct{})); err == nil {
			t.Errorf("Restore of %d of %d bytes succeeded", n, len(full))
		}
	}
}

func TestSnapshotLarge(t *testing.T) {
	_, src, _ := newShard(t)
	const n = 5000 // more than the 4096 records between stop checks
	ops := make([]*pb.RequestOp, 0, n)
	for i := 0; i < n; i++ {
		ops = append(ops, opPut(fmt.Sprintf("k%05d", i), fmt.Sprintf("v%d", i)))
	}
	mustTxn(t, src, 2, &pb.TxnRequest{Success: ops})
	mustDelete(t, src, 3, "k00100", "k00200")
	mustPut(t, src, 4, "k04999", "last")

	buf, _ := writeSnapshot(t, src)
	_, dst, _ := restoreFresh(t, buf.Bytes())
	assertState(t, "restored", dst.State(), src.State())
	for _, rev := range []int64{2, 3, 4} {
		want := map[int64]int64{2: n, 3: n - 100, 4: n - 100}[rev]
		resp := mustRange(t, dst, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: rev, CountOnly: true})
		if resp.Count != want {
			t.Errorf("rev %d: count %d, want %d", rev, resp.Count, want)
		}
	}
	assertSameHistory(t, dst, src, 4)
	assertKV(t, "k04999", get(t, dst, "k04999", 0), kv("k04999", "last", 2, 4, 2, 0))
	assertKV(t, "k00150@2", get(t, dst, "k00150", 2), kv("k00150", "v150", 2, 2, 1, 0))
	assertKV(t, "k00150@3", get(t, dst, "k00150", 3), nil)

	// A closed stop channel aborts a long snapshot.
	snap := src.PrepareSnapshot()
	defer snap.Close()
	stop := make(chan struct{})
	close(stop)
	if err := snap.WriteTo(&bytes.Buffer{}, stop); err == nil {
		t.Errorf("WriteTo with a closed stop channel succeeded")
	}
}

// slowReader hands out a snapshot in small reads with pauses, so readers
// get to run in the middle of a restore.
type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n++; s.n%16 == 0 {
		time.Sleep(time.Millisecond)
	}
	return s.r.Read(p[:min(len(p), 4096)])
}

// A snapshot install is invisible until complete: reads and change-feed
// reads during it either fail with ErrRestoring or see the whole old or
// the whole new contents, never a mix or a part.
func TestRestoreIsInvisibleUntilComplete(t *testing.T) {
	_, src, _ := newShard(t)
	const revs, perRev = 100, 50
	for r := int64(2); r < 2+revs; r++ {
		var ops []*pb.RequestOp
		for i := 0; i < perRev; i++ {
			ops = append(ops, opPut(fmt.Sprintf("new/%03d/%02d", r, i), strings.Repeat("v", 100)))
		}
		mustTxn(t, src, r, &pb.TxnRequest{Success: ops})
	}
	buf, _ := writeSnapshot(t, src)

	_, dst, _ := newShard(t)
	mustPut(t, dst, 2, "old/a", "x")
	mustPut(t, dst, 3, "old/b", "x")
	oldCount, newCount := int64(2), int64(revs*perRev)

	done := make(chan error, 1)
	go func() { done <- dst.Restore(&slowReader{r: bytes.NewReader(buf.Bytes())}, make(chan struct{})) }()
	var reads, refused int
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			finished = true
		default:
		}
		resp, err := dst.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true})
		switch {
		case errors.Is(err, ErrRestoring):
			refused++
		case err != nil:
			t.Fatalf("range during restore: %v", err)
		case resp.Count != oldCount && resp.Count != newCount:
			t.Fatalf("a range during the restore saw %d keys at revision %d: neither the old %d nor the new %d", resp.Count, resp.Header.Revision, oldCount, newCount)
		default:
			reads++
		}
		recs, st, _, err := dst.ReadChanges(1, 1<<30, nil)
		switch {
		case errors.Is(err, ErrRestoring), errors.Is(err, ErrCompacted):
		case err != nil:
			t.Fatalf("change feed during restore: %v", err)
		case st.Revision == 3 && len(recs) != 2, st.Revision != 3 && len(recs) != revs:
			t.Fatalf("a change-feed read during the restore got %d records at revision %d", len(recs), st.Revision)
		}
	}
	if refused == 0 {
		t.Fatalf("no read ran during the restore (%d reads before or after it): the test proves nothing", reads)
	}
	if got := mustRange(t, dst, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true}).Count; got != newCount {
		t.Fatalf("after the restore: %d keys, want %d", got, newCount)
	}
	t.Logf("%d reads refused during the restore, %d served before or after it", refused, reads)
}

// A shard over part of the keyspace installs a snapshot over the lagging
// copy it has, next to another shard of the same store: it ends with the
// source's history and the other shard keeps its own.
func TestSnapshotRestorePartialRange(t *testing.T) {
	open := func() (*Shard, *Shard) {
		s := openStoreWith(t, t.TempDir(), testOptions())
		low, err := s.OpenShard(1, nil, []byte("m"))
		if err != nil {
			t.Fatal(err)
		}
		high, err := s.OpenShard(2, []byte("m"), nil)
		if err != nil {
			t.Fatal(err)
		}
		return low, high
	}
	srcLow, _ := open()
	dstLow, dstHigh := open()
	history := []func(*Shard){
		func(sh *Shard) { mustPut(t, sh, 2, "a", "a2") },
		func(sh *Shard) { mustPut(t, sh, 3, "b", "b3") },
		func(sh *Shard) { mustPut(t, sh, 4, "a", "a4") },
		func(sh *Shard) { mustDelete(t, sh, 5, "b", "") },
		func(sh *Shard) {
			if err := sh.Compact(nextIndex(sh), 6, 3); err != nil {
				t.Fatal(err)
			}
		},
		func(sh *Shard) { mustPut(t, sh, 7, "c", "c7") },
	}
	for _, step := range history {
		step(srcLow)
	}
	for _, step := range history[:2] { // the lagging copy
		step(dstLow)
	}
	mustPut(t, dstHigh, 8, "x", "x8")
	buf, _ := writeSnapshot(t, srcLow)
	if err := dstLow.Restore(bytes.NewReader(buf.Bytes()), make(chan struct{})); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	assertSameHistory(t, dstLow, srcLow, 8)
	r, err := dstHigh.Range(&pb.RangeRequest{Key: []byte("m"), RangeEnd: []byte{0}})
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "x8" {
		t.Fatalf("the other shard after the install: %v %v", r, err)
	}
}
