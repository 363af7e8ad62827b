package mvcc

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

func TestInitialState(t *testing.T) {
	_, sh, _ := newShard(t)
	assertState(t, "fresh shard", sh.State(), State{Revision: 1})
	if sh.ID() != 1 {
		t.Errorf("ID %d, want 1", sh.ID())
	}
	resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
	if len(resp.Kvs) != 0 || resp.Count != 0 || resp.Header.GetRevision() != 1 {
		t.Errorf("empty shard range: kvs %s count %d header %v", fmtKVs(resp.Kvs), resp.Count, resp.Header)
	}
	_, err := sh.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 2})
	assertErr(t, "read above the initial revision", err, ErrFutureRev)
}

func TestPutPrevKV(t *testing.T) {
	_, sh, _ := newShard(t)
	put := func(rev int64, val string, prevKV bool) *pb.PutResponse {
		t.Helper()
		resp := mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("k"), Value: []byte(val), PrevKv: prevKV})}})
		if resp.Header.GetRevision() != rev {
			t.Errorf("rev %d: txn header revision %d", rev, resp.Header.GetRevision())
		}
		p := resp.Responses[0].GetResponsePut()
		if p == nil {
			t.Fatalf("rev %d: no put response in %v", rev, resp)
		}
		if p.Header.GetRevision() != rev {
			t.Errorf("rev %d: put header revision %d", rev, p.Header.GetRevision())
		}
		return p
	}
	assertKV(t, "first put", put(2, "v1", true).PrevKv, nil)
	assertKV(t, "second put", put(3, "v2", true).PrevKv, kv("k", "v1", 2, 2, 1, 0))
	assertKV(t, "put without prev_kv", put(4, "v3", false).PrevKv, nil)
	assertKV(t, "third put", put(5, "v4", true).PrevKv, kv("k", "v3", 2, 4, 3, 0))
	mustDelete(t, sh, 6, "k", "")
	assertKV(t, "put after delete", put(7, "v5", true).PrevKv, nil)
	assertKV(t, "final", get(t, sh, "k", 0), kv("k", "v5", 7, 7, 1, 0))
}

func TestPutLease(t *testing.T) {
	_, sh, _ := newShard(t)
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), Lease: 42})}})
	assertKV(t, "with lease", get(t, sh, "k", 0), kv("k", "v", 2, 2, 1, 42))
	// A plain put replaces the lease (here: with no lease).
	mustPut(t, sh, 3, "k", "w")
	assertKV(t, "lease dropped", get(t, sh, "k", 0), kv("k", "w", 2, 3, 2, 0))
	assertKV(t, "history keeps lease", get(t, sh, "k", 2), kv("k", "v", 2, 2, 1, 42))
}

func TestPutIgnoreValueAndLease(t *testing.T) {
	tests := []struct {
		name string
		req  *pb.PutRequest
		want *mvccpb.KeyValue
		prev *mvccpb.KeyValue
	}{
		{
			name: "ignore_value keeps value, takes new lease",
			req:  &pb.PutRequest{Key: []byte("k"), IgnoreValue: true, Lease: 9},
			want: kv("k", "v", 2, 3, 2, 9),
		},
		{
			name: "ignore_value without lease clears lease",
			req:  &pb.PutRequest{Key: []byte("k"), IgnoreValue: true},
			want: kv("k", "v", 2, 3, 2, 0),
		},
		{
			name: "ignore_lease keeps lease, takes new value",
			req:  &pb.PutRequest{Key: []byte("k"), Value: []byte("w"), IgnoreLease: true},
			want: kv("k", "w", 2, 3, 2, 7),
		},
		{
			name: "both keep value and lease but bump version",
			req:  &pb.PutRequest{Key: []byte("k"), IgnoreValue: true, IgnoreLease: true},
			want: kv("k", "v", 2, 3, 2, 7),
		},
		{
			name: "ignore_value with prev_kv",
			req:  &pb.PutRequest{Key: []byte("k"), IgnoreValue: true, IgnoreLease: true, PrevKv: true},
			want: kv("k", "v", 2, 3, 2, 7),
			prev: kv("k", "v", 2, 2, 1, 7),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sh, _ := newShard(t)
			mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), Lease: 7})}})
			resp := mustTxn(t, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(tt.req)}})
			assertKV(t, "prev_kv", resp.Responses[0].GetResponsePut().GetPrevKv(), tt.prev)
			assertKV(t, "after put", get(t, sh, "k", 0), tt.want)
		})
	}
}

func TestPutIgnoreOnMissingKey(t *testing.T) {
	tests := []struct {
		name string
		req  *pb.TxnRequest
	}{
		{"ignore_value on never-written key", &pb.TxnRequest{Success: []*pb.RequestOp{
			opPutReq(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true}),
		}}},
		{"ignore_lease on never-written key", &pb.TxnRequest{Success: []*pb.RequestOp{
			opPutReq(&pb.PutRequest{Key: []byte("missing"), Value: []byte("x"), IgnoreLease: true}),
		}}},
		{"ignore_value on deleted key", &pb.TxnRequest{Success: []*pb.RequestOp{
			opPutReq(&pb.PutRequest{Key: []byte("gone"), IgnoreValue: true}),
		}}},
		{"earlier ops of the txn are not applied", &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut("new", "1"),
			opPut("k", "changed"),
			opDelete("k2", ""),
			opPutReq(&pb.PutRequest{Key: []byte("missing"), IgnoreLease: true}),
		}}},
		{"in a nested txn", &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut("new", "1"),
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})}}),
		}}},
		{"in the taken failure branch", &pb.TxnRequest{
			Compare: []*pb.Compare{cmp("k", "", pb.Compare_VALUE, pb.Compare_EQUAL, "nope")},
			Success: []*pb.RequestOp{opPut("new", "1")},
			Failure: []*pb.RequestOp{opPut("new", "2"), opPutReq(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sh, _ := newShard(t)
			mustPut(t, sh, 2, "k", "v")
			mustPut(t, sh, 3, "k2", "v2")
			mustPut(t, sh, 4, "gone", "g")
			mustDelete(t, sh, 5, "gone", "")
			before := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")}).Kvs

			resp, err := sh.ApplyTxn(6, 8, tt.req)
			assertErr(t, "ApplyTxn", err, ErrKeyNotFound)
			if resp != nil {
				t.Errorf("response %v with ErrKeyNotFound", resp)
			}
			// The entry is recorded as applied...
			assertState(t, "after error", sh.State(), State{AppliedIndex: 6, Revision: 8})
			// ...but no data changes, and etcd's revision stays.
			after := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
			assertKVs(t, "data after error", after.Kvs, before)
			if after.Header.GetRevision() != 5 {
				t.Errorf("range header revision %d, want 5", after.Header.GetRevision())
			}
			for _, k := range []string{"missing", "new"} {
				assertKV(t, k, get(t, sh, k, 0), nil)
			}
			// The next write builds on the unchanged data.
			mustPut(t, sh, 9, "k", "v9")
			assertKV(t, "k after next put", get(t, sh, "k", 0), kv("k", "v9", 2, 9, 2, 0))
			mustPut(t, sh, 10, "new", "n")
			assertKV(t, "new after next put", get(t, sh, "new", 0), kv("new", "n", 10, 10, 1, 0))
		})
	}
}

func TestPutIgnoreOnMissingKeyInUntakenBranch(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "k", "v")
	resp := mustTxn(t, sh, 3, &pb.TxnRequest{
		Compare: []*pb.Compare{cmp("k", "", pb.Compare_VALUE, pb.Compare_EQUAL, "v")},
		Success: []*pb.RequestOp{opPut("a", "1")},
		Failure: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})},
	})
	if !resp.Succeeded {
		t.Errorf("succeeded = false")
	}
	assertKV(t, "a", get(t, sh, "a", 0), kv("a", "1", 3, 3, 1, 0))
}

func TestVersionAndCreateRevision(t *testing.T) {
	_, sh, _ := newShard(t)
	steps := []struct {
		rev  int64
		op   string // "put", "del", "other"
		val  string
		want *mvccpb.KeyValue // k after the step
	}{
		{2, "put", "v1", kv("k", "v1", 2, 2, 1, 0)},
		{3, "put", "v2", kv("k", "v2", 2, 3, 2, 0)},
		{4, "put", "v3", kv("k", "v3", 2, 4, 3, 0)},
		{5, "del", "", nil},
		{6, "other", "", nil},
		{7, "put", "v4", kv("k", "v4", 7, 7, 1, 0)},
		{8, "put", "v5", kv("k", "v5", 7, 8, 2, 0)},
		{12, "put", "v6", kv("k", "v6", 7, 12, 3, 0)}, // revisions may skip
		{13, "del", "", nil},
		{14, "put", "", kv("k", "", 14, 14, 1, 0)}, // empty value is still a key
	}
	for _, s := range steps {
		switch s.op {
		case "put":
			mustPut(t, sh, s.rev, "k", s.val)
		case "del":
			if d := mustDelete(t, sh, s.rev, "k", ""); d.Deleted != 1 {
				t.Fatalf("rev %d: deleted %d, want 1", s.rev, d.Deleted)
			}
		case "other":
			mustPut(t, sh, s.rev, "other", "x")
		}
		assertKV(t, fmt.Sprintf("after rev %d", s.rev), get(t, sh, "k", 0), s.want)
	}
	// Every revision reads back as of its time.
	history := map[int64]*mvccpb.KeyValue{1: nil}
	for _, s := range steps {
		history[s.rev] = s.want
	}
	var last *mvccpb.KeyValue
	for rev := int64(1); rev <= 14; rev++ {
		if w, ok := history[rev]; ok {
			last = w
		}
		assertKV(t, fmt.Sprintf("k@%d", rev), get(t, sh, "k", rev), last)
	}
}

func TestDeleteRange(t *testing.T) {
	all := []*mvccpb.KeyValue{
		kv("a", "1", 2, 2, 1, 0),
		kv("b", "2", 3, 3, 1, 0),
		kv("c/1", "3", 4, 4, 1, 0),
		kv("c/2", "4", 5, 5, 1, 0),
		kv("d", "5", 6, 6, 1, 0),
	}
	tests := []struct {
		name     string
		key, end string
		prevKV   bool
		deleted  []int // indexes into all
	}{
		{"single key with prev_kv", "b", "", true, []int{1}},
		{"single key without prev_kv", "b", "", false, []int{1}},
		{"missing key", "x", "", true, nil},
		{"already deleted key", "gone", "", true, nil},
		{"prefix", "c/", "c0", true, []int{2, 3}},
		{"from key to end", "c", "\x00", true, []int{2, 3, 4}},
		{"everything", "\x00", "\x00", false, []int{0, 1, 2, 3, 4}},
		{"interval", "a", "c/2", true, []int{0, 1, 2}},
		{"end before key", "d", "a", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sh, _ := newShard(t)
			for _, k := range all {
				mustPut(t, sh, k.ModRevision, string(k.Key), string(k.Value))
			}
			mustPut(t, sh, 7, "gone", "g")
			mustDelete(t, sh, 8, "gone", "")

			resp := mustTxn(t, sh, 10, &pb.TxnRequest{Success: []*pb.RequestOp{
				opDeleteReq(&pb.DeleteRangeRequest{Key: []byte(tt.key), RangeEnd: bytesOrNil(tt.end), PrevKv: tt.prevKV}),
			}})
			d := resp.Responses[0].GetResponseDeleteRange()
			if d == nil {
				t.Fatalf("no delete response in %v", resp)
			}
			if d.Deleted != int64(len(tt.deleted)) {
				t.Errorf("deleted %d, want %d", d.Deleted, len(tt.deleted))
			}
			var wantPrev, wantLeft []*mvccpb.KeyValue
			gone := map[int]bool{}
			for _, i := range tt.deleted {
				gone[i] = true
				wantPrev = append(wantPrev, all[i])
			}
			for i, k := range all {
				if !gone[i] {
					wantLeft = append(wantLeft, k)
				}
			}
			if tt.prevKV {
				assertKVs(t, "prev_kvs", d.PrevKvs, wantPrev)
			} else if len(d.PrevKvs) != 0 {
				t.Errorf("prev_kvs %s without prev_kv", fmtKVs(d.PrevKvs))
			}
			// The headers carry the new revision if something was deleted,
			// the previous one otherwise, as etcd's do.
			wantHdr := int64(10)
			if len(tt.deleted) == 0 {
				wantHdr = 8
			}
			if d.Header.GetRevision() != wantHdr {
				t.Errorf("delete header revision %d, want %d", d.Header.GetRevision(), wantHdr)
			}
			if resp.Header.GetRevision() != wantHdr {
				t.Errorf("txn header revision %d, want %d", resp.Header.GetRevision(), wantHdr)
			}
			if sh.State().Revision != wantHdr {
				t.Errorf("etcd revision %d, want %d", sh.State().Revision, wantHdr)
			}
			assertState(t, "state", sh.State(), State{AppliedIndex: 8, Revision: 10})
			left := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
			assertKVs(t, "left after delete", left.Kvs, wantLeft)
			// History before the delete is intact.
			old := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: 8})
			assertKVs(t, "history at 8", old.Kvs, all)
		})
	}
}

func TestTxnWritesShareRevision(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "c", "0")
	mustPut(t, sh, 3, "b", "0")
	resp := mustTxn(t, sh, 10, &pb.TxnRequest{Success: []*pb.RequestOp{
		opPut("a", "1"),
		opPut("b", "2"),
		opDelete("c", ""),
		opPut("d", "3"),
	}})
	if !resp.Succeeded || len(resp.Responses) != 4 {
		t.Fatalf("succeeded %v with %d responses", resp.Succeeded, len(resp.Responses))
	}
	if resp.Header.GetRevision() != 10 {
		t.Errorf("txn header %d, want 10", resp.Header.GetRevision())
	}
	for i, r := range resp.Responses {
		var h *pb.ResponseHeader
		switch {
		case r.GetResponsePut() != nil:
			h = r.GetResponsePut().Header
		case r.GetResponseDeleteRange() != nil:
			h = r.GetResponseDeleteRange().Header
		}
		if h.GetRevision() != 10 {
			t.Errorf("response %d header revision %d, want 10", i, h.GetRevision())
		}
	}
	got := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
	assertKVs(t, "after txn", got.Kvs, []*mvccpb.KeyValue{
		kv("a", "1", 10, 10, 1, 0),
		kv("b", "2", 3, 10, 2, 0),
		kv("d", "3", 10, 10, 1, 0),
	})
	assertState(t, "state", sh.State(), State{AppliedIndex: 3, Revision: 10})
	// Nothing of the txn is visible just below its revision.
	old := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: 9})
	assertKVs(t, "at 9", old.Kvs, []*mvccpb.KeyValue{kv("b", "0", 3, 3, 1, 0), kv("c", "0", 2, 2, 1, 0)})
}

func TestTxnReadsOwnWrites(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "x", "old")
	mustPut(t, sh, 3, "y", "y")
	all := func(extra func(*pb.RangeRequest)) *pb.RequestOp {
		r := &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")}
		if extra != nil {
			extra(r)
		}
		return opRange(r)
	}
	resp := mustTxn(t, sh, 5, &pb.TxnRequest{Success: []*pb.RequestOp{
		opRange(&pb.RangeRequest{Key: []byte("x")}), // 0: before any write
		opPut("x", "new"), // 1
		opRange(&pb.RangeRequest{Key: []byte("x")}),                         // 2: sees own put
		opRange(&pb.RangeRequest{Key: []byte("x"), Revision: 3}),            // 3: historical read
		opDeleteReq(&pb.DeleteRangeRequest{Key: []byte("y"), PrevKv: true}), // 4
		all(nil),        // 5: sees own delete
		opPut("z", "z"), // 6
		all(nil),        // 7
		all(func(r *pb.RangeRequest) { r.CountOnly = true }),                                                          // 8
		all(func(r *pb.RangeRequest) { r.SortTarget, r.SortOrder = pb.RangeRequest_CREATE, pb.RangeRequest_DESCEND }), // 9
		all(func(r *pb.RangeRequest) { r.MinCreateRevision = 5 }),                                                     // 10
	}})
	rng := func(i int) *pb.RangeResponse {
		t.Helper()
		r := resp.Responses[i].GetResponseRange()
		if r == nil {
			t.Fatalf("response %d is not a range: %v", i, resp.Responses[i])
		}
		return r
	}
	newX := kv("x", "new", 2, 5, 2, 0)
	z := kv("z", "z", 5, 5, 1, 0)
	tests := []struct {
		i     int
		want  []*mvccpb.KeyValue
		count int64
		hdr   int64
	}{
		{0, []*mvccpb.KeyValue{kv("x", "old", 2, 2, 1, 0)}, 1, 3}, // no write yet: previous revision
		{2, []*mvccpb.KeyValue{newX}, 1, 5},
		{3, []*mvccpb.KeyValue{kv("x", "old", 2, 2, 1, 0)}, 1, 5},
		{5, []*mvccpb.KeyValue{newX}, 1, 5},
		{7, []*mvccpb.KeyValue{newX, z}, 2, 5},
		{8, nil, 2, 5},
		{9, []*mvccpb.KeyValue{z, newX}, 2, 5},
		{10, []*mvccpb.KeyValue{z}, 2, 5},
	}
	for _, tt := range tests {
		r := rng(tt.i)
		assertKVs(t, fmt.Sprintf("response %d", tt.i), r.Kvs, tt.want)
		if r.Count != tt.count {
			t.Errorf("response %d: count %d, want %d", tt.i, r.Count, tt.count)
		}
		if r.Header.GetRevision() != tt.hdr {
			t.Errorf("response %d: header revision %d, want %d", tt.i, r.Header.GetRevision(), tt.hdr)
		}
	}
	d := resp.Responses[4].GetResponseDeleteRange()
	if d.GetDeleted() != 1 {
		t.Errorf("deleted %d, want 1", d.GetDeleted())
	}
	assertKVs(t, "delete prev_kvs", d.GetPrevKvs(), []*mvccpb.KeyValue{kv("y", "y", 3, 3, 1, 0)})
	got := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
	assertKVs(t, "after txn", got.Kvs, []*mvccpb.KeyValue{newX, z})
}

func TestTxnReadOnlyLeavesRevision(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	resp := mustTxn(t, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a")})}})
	r := resp.Responses[0].GetResponseRange()
	assertKVs(t, "range", r.GetKvs(), []*mvccpb.KeyValue{kv("a", "1", 2, 2, 1, 0)})
	if r.Header.GetRevision() != 2 {
		t.Errorf("range header %d, want 2 (nothing written)", r.Header.GetRevision())
	}
	if resp.Header.GetRevision() != 2 {
		t.Errorf("txn header %d, want 2: the txn wrote nothing", resp.Header.GetRevision())
	}
	assertState(t, "state", sh.State(), State{AppliedIndex: 2, Revision: 3})
	if sh.State().Revision != 2 {
		t.Errorf("etcd revision %d after a read-only entry, want 2", sh.State().Revision)
	}
	assertKV(t, "a unchanged", get(t, sh, "a", 0), kv("a", "1", 2, 2, 1, 0))
}

// cmp builds a Compare of target on [key, end) against operand (string for
// VALUE, int64 otherwise).
func cmp(key, end string, target pb.Compare_CompareTarget, result pb.Compare_CompareResult, operand any) *pb.Compare {
	c := &pb.Compare{Key: []byte(key), RangeEnd: bytesOrNil(end), Target: target, Result: result}
	switch target {
	case pb.Compare_VALUE:
		c.TargetUnion = &pb.Compare_Value{Value: []byte(operand.(string))}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: int64(operand.(int))}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: int64(operand.(int))}
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: int64(operand.(int))}
	case pb.Compare_LEASE:
		c.TargetUnion = &pb.Compare_Lease{Lease: int64(operand.(int))}
	}
	return c
}

// evalCompares applies a txn with the compares whose branches record which
// one ran, and checks the outcome.
func evalCompares(t *testing.T, sh *Shard, cs []*pb.Compare, want bool) {
	t.Helper()
	rev := sh.State().Revision + 1
	resp := mustTxn(t, sh, rev, &pb.TxnRequest{
		Compare: cs,
		Success: []*pb.RequestOp{opPut("#branch", "success")},
		Failure: []*pb.RequestOp{opPut("#branch", "failure")},
	})
	if resp.Succeeded != want {
		t.Errorf("succeeded %v, want %v", resp.Succeeded, want)
	}
	branch := get(t, sh, "#branch", 0)
	wantVal := map[bool]string{true: "success", false: "failure"}[want]
	if branch == nil || string(branch.Value) != wantVal || branch.ModRevision != rev {
		t.Errorf("branch key %s, want value %q at %d", fmtKV(branch), wantVal, rev)
	}
}

func TestTxnCompareTargets(t *testing.T) {
	_, sh, _ := newShard(t)
	mustTxn(t, sh, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v1"), Lease: 5})}})
	mustTxn(t, sh, 3, &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v2"), Lease: 5})}})
	// k: value "v2", create 2, mod 3, version 2, lease 5.
	operands := []struct {
		target              pb.Compare_CompareTarget
		below, equal, above any
	}{
		{pb.Compare_VALUE, "v1", "v2", "v3"},
		{pb.Compare_CREATE, 1, 2, 3},
		{pb.Compare_MOD, 2, 3, 4},
		{pb.Compare_VERSION, 1, 2, 3},
		{pb.Compare_LEASE, 4, 5, 6},
	}
	// GREATER means the key's field is greater than the operand.
	outcomes := []struct {
		result              pb.Compare_CompareResult
		below, equal, above bool
	}{
		{pb.Compare_EQUAL, false, true, false},
		{pb.Compare_NOT_EQUAL, true, false, true},
		{pb.Compare_GREATER, true, false, false},
		{pb.Compare_LESS, false, false, true},
	}
	for _, o := range operands {
		for _, r := range outcomes {
			for _, c := range []struct {
				name    string
				operand any
				want    bool
			}{{"below", o.below, r.below}, {"equal", o.equal, r.equal}, {"above", o.above, r.above}} {
				t.Run(fmt.Sprintf("%s/%s/%s", o.target, r.result, c.name), func(t *testing.T) {
					evalCompares(t, sh, []*pb.Compare{cmp("k", "", o.target, r.result, c.operand)}, c.want)
				})
			}
		}
	}
	// Compares are a conjunction.
	tv := cmp("k", "", pb.Compare_VERSION, pb.Compare_EQUAL, 2)
	fv := cmp("k", "", pb.Compare_VERSION, pb.Compare_EQUAL, 3)
	tval := cmp("k", "", pb.Compare_VALUE, pb.Compare_EQUAL, "v2")
	for _, c := range []struct {
		name string
		cs   []*pb.Compare
		want bool
	}{
		{"no compares", nil, true},
		{"true and true", []*pb.Compare{tv, tval}, true},
		{"true and false", []*pb.Compare{tv, fv}, false},
		{"false and true", []*pb.Compare{fv, tval}, false},
	} {
		t.Run("conjunction/"+c.name, func(t *testing.T) { evalCompares(t, sh, c.cs, c.want) })
	}
	assertKV(t, "k unchanged", get(t, sh, "k", 0), kv("k", "v2", 2, 3, 2, 5))
}

func TestTxnCompareMissingKey(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "gone", "g")
	mustDelete(t, sh, 3, "gone", "")
	mustPut(t, sh, 4, "empty", "")
	tests := []struct {
		key     string
		target  pb.Compare_CompareTarget
		result  pb.Compare_CompareResult
		operand any
		want    bool
	}{
		// A missing key has no value: VALUE compares never match.
		{"nokey", pb.Compare_VALUE, pb.Compare_EQUAL, "", false},
		{"nokey", pb.Compare_VALUE, pb.Compare_NOT_EQUAL, "x", false},
		{"nokey", pb.Compare_VALUE, pb.Compare_GREATER, "", false},
		{"nokey", pb.Compare_VALUE, pb.Compare_LESS, "z", false},
		{"gone", pb.Compare_VALUE, pb.Compare_EQUAL, "g", false},
		// Other targets compare a zero KeyValue.
		{"nokey", pb.Compare_CREATE, pb.Compare_EQUAL, 0, true},
		{"nokey", pb.Compare_CREATE, pb.Compare_NOT_EQUAL, 0, false},
		{"nokey", pb.Compare_CREATE, pb.Compare_GREATER, 0, false},
		{"nokey", pb.Compare_CREATE, pb.Compare_LESS, 1, true},
		{"nokey", pb.Compare_CREATE, pb.Compare_LESS, 0, false},
		{"nokey", pb.Compare_MOD, pb.Compare_EQUAL, 0, true},
		{"nokey", pb.Compare_MOD, pb.Compare_GREATER, -1, true},
		{"nokey", pb.Compare_MOD, pb.Compare_NOT_EQUAL, 0, false},
		{"nokey", pb.Compare_VERSION, pb.Compare_EQUAL, 0, true},
		{"nokey", pb.Compare_VERSION, pb.Compare_GREATER, 0, false},
		{"nokey", pb.Compare_VERSION, pb.Compare_NOT_EQUAL, 0, false},
		{"nokey", pb.Compare_LEASE, pb.Compare_EQUAL, 0, true},
		{"nokey", pb.Compare_LEASE, pb.Compare_NOT_EQUAL, 5, true},
		{"gone", pb.Compare_VERSION, pb.Compare_EQUAL, 0, true},
		{"gone", pb.Compare_CREATE, pb.Compare_EQUAL, 0, true},
		{"gone", pb.Compare_MOD, pb.Compare_EQUAL, 3, false},
		// An existing key with an empty value does compare its value.
		{"empty", pb.Compare_VALUE, pb.Compare_EQUAL, "", true},
		{"empty", pb.Compare_VALUE, pb.Compare_LESS, "a", true},
		{"empty", pb.Compare_VERSION, pb.Compare_EQUAL, 1, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%s/%v", tt.key, tt.target, tt.result, tt.operand), func(t *testing.T) {
			evalCompares(t, sh, []*pb.Compare{cmp(tt.key, "", tt.target, tt.result, tt.operand)}, tt.want)
		})
	}
}

func TestTxnCompareRange(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "r/1", "a")
	mustPut(t, sh, 3, "r/2", "x")
	mustPut(t, sh, 4, "r/2", "b")
	mustPut(t, sh, 5, "r/3", "c")
	mustDelete(t, sh, 6, "r/3", "")
	// r/1: "a" version 1 mod 2; r/2: "b" version 2 mod 4; r/3 deleted.
	tests := []struct {
		name     string
		key, end string
		target   pb.Compare_CompareTarget
		result   pb.Compare_CompareResult
		operand  any
		want     bool
	}{
		{"all versions positive", "r/", "r0", pb.Compare_VERSION, pb.Compare_GREATER, 0, true},
		{"not all versions equal 1", "r/", "r0", pb.Compare_VERSION, pb.Compare_EQUAL, 1, false},
		{"all versions below 3", "r/", "r0", pb.Compare_VERSION, pb.Compare_LESS, 3, true},
		{"one version not below 2", "r/", "r0", pb.Compare_VERSION, pb.Compare_LESS, 2, false},
		{"all values nonempty", "r/", "r0", pb.Compare_VALUE, pb.Compare_GREATER, "", true},
		{"value b is not below b", "r/", "r0", pb.Compare_VALUE, pb.Compare_LESS, "b", false},
		{"all values below c", "r/", "r0", pb.Compare_VALUE, pb.Compare_LESS, "c", true},
		{"one value equals a", "r/", "r0", pb.Compare_VALUE, pb.Compare_NOT_EQUAL, "a", false},
		{"all mods below 5 (tombstone ignored)", "r/", "r0", pb.Compare_MOD, pb.Compare_LESS, 5, true},
		{"all creates above 1", "r/", "r0", pb.Compare_CREATE, pb.Compare_GREATER, 1, true},
		{"interval with one key", "r/1", "r/2", pb.Compare_VERSION, pb.Compare_EQUAL, 1, true},
		{"from key to end", "r/2", "\x00", pb.Compare_VERSION, pb.Compare_EQUAL, 2, true},
		{"from key to end includes r/1", "r/1", "\x00", pb.Compare_VERSION, pb.Compare_EQUAL, 2, false},
		{"empty range create is zero", "s/", "s0", pb.Compare_CREATE, pb.Compare_EQUAL, 0, true},
		{"empty range version not positive", "s/", "s0", pb.Compare_VERSION, pb.Compare_GREATER, 0, false},
		{"empty range value never matches", "s/", "s0", pb.Compare_VALUE, pb.Compare_EQUAL, "", false},
		{"only tombstones is empty", "r/3", "r/4", pb.Compare_VERSION, pb.Compare_EQUAL, 0, true},
		{"end before key is empty", "r/2", "r/1", pb.Compare_MOD, pb.Compare_EQUAL, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evalCompares(t, sh, []*pb.Compare{cmp(tt.key, tt.end, tt.target, tt.result, tt.operand)}, tt.want)
		})
	}
}

func TestTxnComparesSeeStateBeforeTxn(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	resp := mustTxn(t, sh, 3, &pb.TxnRequest{
		Compare: []*pb.Compare{cmp("a", "", pb.Compare_VALUE, pb.Compare_EQUAL, "1")},
		Success: []*pb.RequestOp{
			opPut("a", "2"),
			// Nested compares are evaluated with the outer ones, before
			// anything executes: a is still "1" for them.
			opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmp("a", "", pb.Compare_VALUE, pb.Compare_EQUAL, "2")},
				Success: []*pb.RequestOp{opPut("n", "saw-own-write")},
				Failure: []*pb.RequestOp{opPut("n", "saw-old-state"), opRange(&pb.RangeRequest{Key: []byte("a")})},
			}),
		},
		Failure: []*pb.RequestOp{opPut("a", "failure")},
	})
	if !resp.Succeeded {
		t.Fatalf("outer txn failed")
	}
	inner := resp.Responses[1].GetResponseTxn()
	if inner == nil {
		t.Fatalf("response 1 is not a txn: %v", resp.Responses[1])
	}
	if inner.Succeeded {
		t.Errorf("nested compare saw the txn's own write")
	}
	if len(inner.Responses) != 2 {
		t.Fatalf("nested responses %d, want 2", len(inner.Responses))
	}
	// Ops of a nested txn do see earlier writes of the outer one.
	assertKVs(t, "nested range", inner.Responses[1].GetResponseRange().GetKvs(), []*mvccpb.KeyValue{kv("a", "2", 2, 3, 2, 0)})
	assertKV(t, "n", get(t, sh, "n", 0), kv("n", "saw-old-state", 3, 3, 1, 0))
}

func TestTxnNested(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	yes := cmp("a", "", pb.Compare_VERSION, pb.Compare_EQUAL, 1)
	no := cmp("a", "", pb.Compare_VERSION, pb.Compare_EQUAL, 9)
	resp := mustTxn(t, sh, 3, &pb.TxnRequest{
		Compare: []*pb.Compare{yes},
		Success: []*pb.RequestOp{
			opTxn(&pb.TxnRequest{ // 0: fails, its failure branch holds a succeeding txn
				Compare: []*pb.Compare{no},
				Success: []*pb.RequestOp{opPut("wrong", "0a")},
				Failure: []*pb.RequestOp{
					opTxn(&pb.TxnRequest{
						Compare: []*pb.Compare{yes},
						Success: []*pb.RequestOp{opPut("p1", "1")},
						Failure: []*pb.RequestOp{opPut("wrong", "0b")},
					}),
				},
			}),
			opPut("p2", "2"), // 1
			opTxn(&pb.TxnRequest{ // 2: succeeds, with a failing txn inside
				Compare: []*pb.Compare{yes},
				Success: []*pb.RequestOp{
					opTxn(&pb.TxnRequest{
						Compare: []*pb.Compare{no},
						Success: []*pb.RequestOp{opPut("wrong", "2a")},
						Failure: []*pb.RequestOp{opPut("p3", "3")},
					}),
					opRange(&pb.RangeRequest{Key: []byte("p"), RangeEnd: []byte("q")}),
				},
				Failure: []*pb.RequestOp{opPut("wrong", "2b")},
			}),
			opTxn(&pb.TxnRequest{ // 3: empty compare list succeeds
				Success: []*pb.RequestOp{opPut("p4", "4")},
			}),
		},
		Failure: []*pb.RequestOp{opPut("wrong", "outer")},
	})
	if !resp.Succeeded || len(resp.Responses) != 4 {
		t.Fatalf("outer: succeeded %v, %d responses", resp.Succeeded, len(resp.Responses))
	}
	t0 := resp.Responses[0].GetResponseTxn()
	if t0 == nil || t0.Succeeded || len(t0.Responses) != 1 {
		t.Fatalf("txn 0: %v", t0)
	}
	if t00 := t0.Responses[0].GetResponseTxn(); t00 == nil || !t00.Succeeded || len(t00.Responses) != 1 {
		t.Errorf("txn 0.0: %v", t00)
	}
	t2 := resp.Responses[2].GetResponseTxn()
	if t2 == nil || !t2.Succeeded || len(t2.Responses) != 2 {
		t.Fatalf("txn 2: %v", t2)
	}
	if t20 := t2.Responses[0].GetResponseTxn(); t20 == nil || t20.Succeeded {
		t.Errorf("txn 2.0: %v", t20)
	}
	assertKVs(t, "range in txn 2", t2.Responses[1].GetResponseRange().GetKvs(), []*mvccpb.KeyValue{
		kv("p1", "1", 3, 3, 1, 0), kv("p2", "2", 3, 3, 1, 0), kv("p3", "3", 3, 3, 1, 0),
	})
	if t3 := resp.Responses[3].GetResponseTxn(); t3 == nil || !t3.Succeeded {
		t.Errorf("txn 3: %v", t3)
	}
	got := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
	assertKVs(t, "after nested txns", got.Kvs, []*mvccpb.KeyValue{
		kv("a", "1", 2, 2, 1, 0),
		kv("p1", "1", 3, 3, 1, 0), kv("p2", "2", 3, 3, 1, 0), kv("p3", "3", 3, 3, 1, 0), kv("p4", "4", 3, 3, 1, 0),
	})
	if resp.Header.GetRevision() != 3 {
		t.Errorf("txn header %d, want 3", resp.Header.GetRevision())
	}
}

func TestTxnOuterFailureBranchWithNestedTxn(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	resp := mustTxn(t, sh, 3, &pb.TxnRequest{
		Compare: []*pb.Compare{cmp("a", "", pb.Compare_VALUE, pb.Compare_EQUAL, "2")},
		Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("wrong", "s")}})},
		Failure: []*pb.RequestOp{
			opDelete("a", ""),
			opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmp("a", "", pb.Compare_VERSION, pb.Compare_EQUAL, 1)},
				Success: []*pb.RequestOp{opPut("f", "1")},
				Failure: []*pb.RequestOp{opPut("wrong", "f")},
			}),
		},
	})
	if resp.Succeeded {
		t.Fatalf("outer txn succeeded")
	}
	if len(resp.Responses) != 2 || !resp.Responses[1].GetResponseTxn().GetSucceeded() {
		t.Fatalf("responses %v", resp.Responses)
	}
	got := mustRange(t, sh, &pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
	assertKVs(t, "after", got.Kvs, []*mvccpb.KeyValue{kv("f", "1", 3, 3, 1, 0)})
}

func TestTxnRangeRevisionErrors(t *testing.T) {
	setup := func(t *testing.T) *Shard {
		_, sh, _ := newShard(t)
		mustPut(t, sh, 2, "a", "1")
		mustPut(t, sh, 3, "a", "2")
		mustPut(t, sh, 4, "a", "3")
		if err := sh.Compact(nextIndex(sh), 5, 3); err != nil {
			t.Fatalf("Compact: %v", err)
		}
		assertState(t, "setup", sh.State(), State{AppliedIndex: 4, Revision: 5, CompactRevision: 3})
		return sh
	}
	tests := []struct {
		name    string
		rev     int64 // of the range inside the txn
		wantErr error
		want    *mvccpb.KeyValue
	}{
		// The compaction entry (5) changed no key: the current revision is 4.
		{"current revision", 4, nil, kv("a", "3", 2, 4, 3, 0)},
		{"compaction revision", 3, nil, kv("a", "2", 2, 3, 2, 0)},
		{"the compaction entry's revision", 5, ErrFutureRev, nil},
		{"future revision", 6, ErrFutureRev, nil},
		{"far future revision", 100, ErrFutureRev, nil},
		{"compacted revision", 2, ErrCompacted, nil},
		{"compacted revision 1", 1, ErrCompacted, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh := setup(t)
			resp, err := sh.ApplyTxn(5, 7, &pb.TxnRequest{Success: []*pb.RequestOp{
				opPut("b", "1"),
				opRange(&pb.RangeRequest{Key: []byte("a"), Revision: tt.rev}),
			}})
			assertErr(t, "ApplyTxn", err, tt.wantErr)
			assertState(t, "state", sh.State(), State{AppliedIndex: 5, Revision: 7, CompactRevision: 3})
			if tt.wantErr != nil {
				if resp != nil {
					t.Errorf("response with error: %v", resp)
				}
				assertKV(t, "b not written", get(t, sh, "b", 0), nil)
				return
			}
			assertKVs(t, "range", resp.Responses[1].GetResponseRange().GetKvs(), []*mvccpb.KeyValue{tt.want})
			assertKV(t, "b", get(t, sh, "b", 0), kv("b", "1", 7, 7, 1, 0))
		})
	}
	t.Run("error in untaken branch", func(t *testing.T) {
		sh := setup(t)
		resp := mustTxn(t, sh, 7, &pb.TxnRequest{
			Compare: []*pb.Compare{cmp("a", "", pb.Compare_VERSION, pb.Compare_EQUAL, 3)},
			Success: []*pb.RequestOp{opPut("b", "1")},
			Failure: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 100})},
		})
		if !resp.Succeeded {
			t.Errorf("succeeded = false")
		}
		assertKV(t, "b", get(t, sh, "b", 0), kv("b", "1", 7, 7, 1, 0))
	})
	t.Run("error in nested txn", func(t *testing.T) {
		sh := setup(t)
		_, err := sh.ApplyTxn(5, 7, &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut("b", "1"),
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 2})}}),
		}})
		assertErr(t, "ApplyTxn", err, ErrCompacted)
		assertState(t, "state", sh.State(), State{AppliedIndex: 5, Revision: 7, CompactRevision: 3})
		assertKV(t, "b not written", get(t, sh, "b", 0), nil)
	})
}

// A stale entry changes nothing but still counts as applied, also after a
// restart: dragonboat may take a snapshot at its index.
func TestStaleRevision(t *testing.T) {
	s, sh, dir := newShard(t)
	mustPut(t, sh, 5, "a", "1")
	want := State{AppliedIndex: 2, Revision: 5}
	tests := []struct {
		name  string
		apply func(rev int64) error
	}{
		{"ApplyTxn", func(rev int64) error {
			resp, err := sh.ApplyTxn(2, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "stale")}})
			if resp != nil {
				t.Errorf("response %v for a stale entry", resp)
			}
			return err
		}},
		{"Tick", func(rev int64) error { return sh.Tick(2, rev) }},
		{"Compact", func(rev int64) error { return sh.Compact(2, rev, 5) }},
	}
	for _, tt := range tests {
		for _, rev := range []int64{5, 4, 1, 0, -1} {
			t.Run(fmt.Sprintf("%s/rev=%d", tt.name, rev), func(t *testing.T) {
				assertErr(t, tt.name, tt.apply(rev), ErrStaleRevision)
				assertState(t, "state", sh.State(), want)
				assertKV(t, "a", get(t, sh, "a", 0), kv("a", "1", 5, 5, 1, 0))
			})
		}
	}
	s.Close()
	s = openStore(t, dir)
	sh, err := s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	assertState(t, "state after reopen", sh.State(), want)
	// The shard still accepts the next revision.
	mustPut(t, sh, 6, "a", "2")
	assertKV(t, "a", get(t, sh, "a", 0), kv("a", "2", 5, 6, 2, 0))
	assertState(t, "state", sh.State(), State{AppliedIndex: 3, Revision: 6})
}

func TestTick(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	if err := sh.Tick(7, 4); err != nil {
		t.Fatalf("Tick: %v", err)
	}
	assertState(t, "after tick", sh.State(), State{AppliedIndex: 7, Revision: 4})
	for _, rev := range []int64{0, 2} {
		assertKV(t, fmt.Sprintf("a@%d", rev), get(t, sh, "a", rev), kv("a", "1", 2, 2, 1, 0))
	}
	// A tick changes no key: etcd's revision is still 2.
	_, err := sh.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 3})
	assertErr(t, "read above the last change", err, ErrFutureRev)
	mustPut(t, sh, 5, "a", "2")
	assertKV(t, "a after tick", get(t, sh, "a", 0), kv("a", "2", 2, 5, 2, 0))
}

func TestAppliedIndexIsRecorded(t *testing.T) {
	_, sh, _ := newShard(t)
	// Indexes come from the Raft log and may skip (entries of other kinds).
	if _, err := sh.ApplyTxn(10, 2, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1")}}); err != nil {
		t.Fatal(err)
	}
	assertState(t, "after txn", sh.State(), State{AppliedIndex: 10, Revision: 2})
	if err := sh.Tick(12, 3); err != nil {
		t.Fatal(err)
	}
	assertState(t, "after tick", sh.State(), State{AppliedIndex: 12, Revision: 3})
	if err := sh.Compact(15, 4, 2); err != nil {
		t.Fatal(err)
	}
	assertState(t, "after compact", sh.State(), State{AppliedIndex: 15, Revision: 4, CompactRevision: 2})
}

func TestReadTxn(t *testing.T) {
	_, sh, _ := newShard(t)
	mustPut(t, sh, 2, "a", "1")
	mustPut(t, sh, 3, "b", "2")
	if err := sh.Compact(nextIndex(sh), 4, 3); err != nil {
		t.Fatal(err)
	}
	want := State{AppliedIndex: 3, Revision: 4, CompactRevision: 3}
	tests := []struct {
		name      string
		req       *pb.TxnRequest
		succeeded bool
		want      [][]*mvccpb.KeyValue // kvs of each range response
		wantErr   error
	}{
		{
			name:      "compare true",
			req:       &pb.TxnRequest{Compare: []*pb.Compare{cmp("a", "", pb.Compare_VALUE, pb.Compare_EQUAL, "1")}, Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("b")})}, Failure: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a")})}},
			succeeded: true,
			want:      [][]*mvccpb.KeyValue{{kv("b", "2", 3, 3, 1, 0)}},
		},
		{
			name: "compare false",
			req:  &pb.TxnRequest{Compare: []*pb.Compare{cmp("a", "", pb.Compare_VERSION, pb.Compare_GREATER, 1)}, Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("b")})}, Failure: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a")}), opRange(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), Revision: 3})}},
			want: [][]*mvccpb.KeyValue{{kv("a", "1", 2, 2, 1, 0)}, {kv("a", "1", 2, 2, 1, 0), kv("b", "2", 3, 3, 1, 0)}},
		},
		{
			name:    "future revision",
			req:     &pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 5})}},
			wantErr: ErrFutureRev,
		},
		{
			name:    "compacted revision",
			req:     &pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 2})}},
			wantErr: ErrCompacted,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := sh.ReadTxn(tt.req)
			assertErr(t, "ReadTxn", err, tt.wantErr)
			assertState(t, "state unchanged", sh.State(), want)
			if tt.wantErr != nil {
				return
			}
			if resp.Succeeded != tt.succeeded {
				t.Errorf("succeeded %v, want %v", resp.Succeeded, tt.succeeded)
			}
			if resp.Header.GetRevision() != 3 {
				t.Errorf("header revision %d, want 3", resp.Header.GetRevision())
			}
			if len(resp.Responses) != len(tt.want) {
				t.Fatalf("%d responses, want %d", len(resp.Responses), len(tt.want))
			}
			for i, w := range tt.want {
				r := resp.Responses[i].GetResponseRange()
				assertKVs(t, fmt.Sprintf("response %d", i), r.GetKvs(), w)
				if r.GetHeader().GetRevision() != 3 {
					t.Errorf("response %d header revision %d, want 3", i, r.GetHeader().GetRevision())
				}
			}
		})
	}
}
