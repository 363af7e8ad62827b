package mvcc

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// openStore opens a store in dir and closes it when the test ends.
func openStore(t testing.TB, dir string) *Store { return openStoreWith(t, dir, testOptions()) }

func openStoreWith(t testing.TB, dir string, o Options) *Store {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() }) // Close is idempotent
	return s
}

func testOptions() Options {
	o := DefaultOptions()
	// Small enough to run many stores side by side.
	o.MemTableSize = 8 << 20
	o.BlockCacheSize = 8 << 20
	return o
}

// newShard opens a fresh store with one whole-keyspace shard (id 1).
func newShard(t testing.TB) (*Store, *Shard, string) { return newShardWith(t, testOptions()) }

func newShardWith(t testing.TB, o Options) (*Store, *Shard, string) {
	t.Helper()
	dir := t.TempDir()
	s := openStoreWith(t, dir, o)
	sh, err := s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatalf("OpenShard: %v", err)
	}
	return s, sh, dir
}

// nextIndex is the Raft index the next applied entry gets.
func nextIndex(sh *Shard) uint64 { return sh.State().AppliedIndex + 1 }

// mustTxn applies a txn at rev and fails the test on any error.
func mustTxn(t testing.TB, sh *Shard, rev int64, req *pb.TxnRequest) *pb.TxnResponse {
	t.Helper()
	resp, err := sh.ApplyTxn(nextIndex(sh), rev, req)
	if err != nil {
		t.Fatalf("ApplyTxn(rev %d, %s): %v", rev, prototext.Format(req), err)
	}
	if resp == nil {
		t.Fatalf("ApplyTxn(rev %d): nil response", rev)
	}
	return resp
}

// mustPut puts key=val at rev as a one-op txn.
func mustPut(t testing.TB, sh *Shard, rev int64, key, val string) *pb.PutResponse {
	t.Helper()
	resp := mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opPut(key, val)}})
	return resp.Responses[0].GetResponsePut()
}

// mustDelete deletes [key, end) at rev as a one-op txn.
func mustDelete(t *testing.T, sh *Shard, rev int64, key, end string) *pb.DeleteRangeResponse {
	t.Helper()
	resp := mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opDelete(key, end)}})
	return resp.Responses[0].GetResponseDeleteRange()
}

func mustRange(t *testing.T, sh *Shard, req *pb.RangeRequest) *pb.RangeResponse {
	t.Helper()
	resp, err := sh.Range(req)
	if err != nil {
		t.Fatalf("Range(%s): %v", prototext.Format(req), err)
	}
	return resp
}

// get reads one key at rev (0: current); nil if missing.
func get(t *testing.T, sh *Shard, key string, rev int64) *mvccpb.KeyValue {
	t.Helper()
	resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte(key), Revision: rev})
	switch len(resp.Kvs) {
	case 0:
		if resp.Count != 0 {
			t.Fatalf("get %q@%d: no kvs but count %d", key, rev, resp.Count)
		}
		return nil
	case 1:
		if resp.Count != 1 {
			t.Fatalf("get %q@%d: one kv but count %d", key, rev, resp.Count)
		}
		return resp.Kvs[0]
	}
	t.Fatalf("get %q@%d: %d kvs", key, rev, len(resp.Kvs))
	return nil
}

func opPut(key, val string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(val)}}}
}

func opPutReq(p *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}}
}

func opDelete(key, end string) *pb.RequestOp {
	return opDeleteReq(&pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end)})
}

func opDeleteReq(d *pb.DeleteRangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: d}}
}

func opRange(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opTxn(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

func bytesOrNil(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func kv(key, val string, create, mod, ver, lease int64) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(key), Value: bytesOrNil(val), CreateRevision: create, ModRevision: mod, Version: ver, Lease: lease}
}

func fmtKV(k *mvccpb.KeyValue) string {
	if k == nil {
		return "<nil>"
	}
	return fmt.Sprintf("{%q=%q c=%d m=%d v=%d l=%d}", k.Key, k.Value, k.CreateRevision, k.ModRevision, k.Version, k.Lease)
}

func fmtKVs(kvs []*mvccpb.KeyValue) string {
	parts := make([]string, len(kvs))
	for i, k := range kvs {
		parts[i] = fmtKV(k)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func kvsEqual(a, b []*mvccpb.KeyValue) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func assertKVs(t *testing.T, what string, got, want []*mvccpb.KeyValue) {
	t.Helper()
	if !kvsEqual(got, want) {
		t.Errorf("%s:\n got  %s\n want %s", what, fmtKVs(got), fmtKVs(want))
	}
}

func assertKV(t *testing.T, what string, got, want *mvccpb.KeyValue) {
	t.Helper()
	if (got == nil) != (want == nil) || (got != nil && !proto.Equal(got, want)) {
		t.Errorf("%s:\n got  %s\n want %s", what, fmtKV(got), fmtKV(want))
	}
}

func keysOf(kvs []*mvccpb.KeyValue) string {
	parts := make([]string, len(kvs))
	for i, k := range kvs {
		parts[i] = string(k.Key)
	}
	return strings.Join(parts, ",")
}

func assertErr(t *testing.T, what string, got, want error) {
	t.Helper()
	if want == nil {
		if got != nil {
			t.Errorf("%s: unexpected error %v", what, got)
		}
		return
	}
	if !errors.Is(got, want) {
		t.Errorf("%s: error %v, want %v", what, got, want)
	}
}

// assertState checks the applied index, the compaction revision and, as
// want.Revision, the revision of the last applied entry (State.LastEntry).
// etcd's revision (State.Revision) has its own tests: it moves only with
// entries that change keys.
func assertState(t *testing.T, what string, got, want State) {
	t.Helper()
	g := got
	g.Bounds, want.Bounds = Bounds{}, Bounds{} // TestSplit* check bounds
	if want.LastEntry == 0 {
		g = State{AppliedIndex: got.AppliedIndex, Revision: got.LastEntry, CompactRevision: got.CompactRevision}
	}
	if !reflect.DeepEqual(g, want) {
		t.Errorf("%s: state %+v, want %+v (Revision meaning the last entry's)", what, got, want)
	}
}

// readAll reads the whole keyspace of sh at rev.
type readResult struct {
	kvs   []*mvccpb.KeyValue
	count int64
	err   error
}

func readAll(sh *Shard, rev int64) readResult {
	resp, err := sh.Range(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: rev})
	if err != nil {
		return readResult{err: err}
	}
	return readResult{kvs: resp.Kvs, count: resp.Count}
}

// assertSameHistory checks that two shards answer whole-keyspace reads at
// every revision from 0 to through the same way.
func assertSameHistory(t *testing.T, got, want *Shard, through int64) {
	t.Helper()
	for rev := int64(0); rev <= through; rev++ {
		g, w := readAll(got, rev), readAll(want, rev)
		if !errors.Is(g.err, w.err) || (w.err == nil && g.err != nil) {
			t.Errorf("rev %d: error %v, want %v", rev, g.err, w.err)
			continue
		}
		if !kvsEqual(g.kvs, w.kvs) || g.count != w.count {
			t.Errorf("rev %d:\n got  %s (count %d)\n want %s (count %d)", rev, fmtKVs(g.kvs), g.count, fmtKVs(w.kvs), w.count)
		}
	}
}
