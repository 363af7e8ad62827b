package mvcc

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// keySelectionShard holds, at revision 9:
//
//	a=1 foo=2 foo/a=3 foo/b=4 zoo=6 \xff\xff=7   (fop=5 written at 6, deleted at 9)
func keySelectionShard(t *testing.T) *Shard {
	t.Helper()
	_, sh, _ := newShard(t)
	for i, p := range [][2]string{{"a", "1"}, {"foo", "2"}, {"foo/a", "3"}, {"foo/b", "4"}, {"fop", "5"}, {"zoo", "6"}, {"\xff\xff", "7"}} {
		mustPut(t, sh, int64(i+2), p[0], p[1])
	}
	mustDelete(t, sh, 9, "fop", "")
	if got := sh.State().Revision; got != 9 {
		t.Fatalf("setup revision %d, want 9", got)
	}
	return sh
}

func TestRangeKeySelection(t *testing.T) {
	sh := keySelectionShard(t)
	tests := []struct {
		name     string
		key, end string
		want     string // comma-separated keys in order
	}{
		{"single key", "foo", "", "foo"},
		{"single key missing", "fo", "", ""},
		{"single key deleted", "fop", "", ""},
		{"single key is not a prefix", "foo/", "", ""},
		{"prefix foo/", "foo/", "foo0", "foo/a,foo/b"},
		{"prefix foo", "foo", "fop", "foo,foo/a,foo/b"},
		{"half-open interval", "a", "foo/b", "a,foo,foo/a"},
		{"interval end is exclusive", "foo", "foo/b", "foo,foo/a"},
		{"interval over a tombstone", "foo/b", "zoo", "foo/b"},
		{"from key to end", "foo/b", "\x00", "foo/b,zoo,\xff\xff"},
		{"everything", "\x00", "\x00", "a,foo,foo/a,foo/b,zoo,\xff\xff"},
		{"from last key to end", "\xff\xff", "\x00", "\xff\xff"},
		{"from past last key to end", "\xff\xff\x00", "\x00", ""},
		{"end before key", "zoo", "a", ""},
		{"end equals key", "foo", "foo", ""},
		{"empty interval between keys", "b", "c", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte(tt.key), RangeEnd: bytesOrNil(tt.end)})
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
			wantCount := int64(len(resp.Kvs))
			if tt.want == "" {
				wantCount = 0
			}
			if resp.Count != wantCount {
				t.Errorf("count %d, want %d", resp.Count, wantCount)
			}
			if resp.More {
				t.Errorf("more = true without a limit")
			}
			if resp.Header == nil || resp.Header.Revision != 9 {
				t.Errorf("header %v, want revision 9", resp.Header)
			}
		})
	}
}

func TestRangeReturnsFullKeyValues(t *testing.T) {
	sh := keySelectionShard(t)
	resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("foo"), RangeEnd: []byte("fop")})
	assertKVs(t, "prefix foo", resp.Kvs, []*mvccpb.KeyValue{
		kv("foo", "2", 3, 3, 1, 0),
		kv("foo/a", "3", 4, 4, 1, 0),
		kv("foo/b", "4", 5, 5, 1, 0),
	})
	assertKV(t, "get zoo", get(t, sh, "zoo", 0), kv("zoo", "6", 7, 7, 1, 0))
	assertKV(t, "get binary key", get(t, sh, "\xff\xff", 0), kv("\xff\xff", "7", 8, 8, 1, 0))
}

func TestRangeLimitMoreCount(t *testing.T) {
	sh := keySelectionShard(t)
	all := "a,foo,foo/a,foo/b,zoo,\xff\xff"
	tests := []struct {
		name     string
		key, end string
		limit    int64
		want     string
		more     bool
		count    int64
	}{
		{"no limit", "\x00", "\x00", 0, all, false, 6},
		{"limit 1", "\x00", "\x00", 1, "a", true, 6},
		{"limit 2", "\x00", "\x00", 2, "a,foo", true, 6},
		{"limit one below total", "\x00", "\x00", 5, "a,foo,foo/a,foo/b,zoo", true, 6},
		{"limit equals total", "\x00", "\x00", 6, all, false, 6},
		{"limit above total", "\x00", "\x00", 7, all, false, 6},
		{"limit on prefix", "foo", "fop", 2, "foo,foo/a", true, 3},
		{"limit on single key", "foo", "", 1, "foo", false, 1},
		{"limit on empty range", "b", "c", 1, "", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte(tt.key), RangeEnd: bytesOrNil(tt.end), Limit: tt.limit})
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
			if resp.More != tt.more {
				t.Errorf("more %v, want %v", resp.More, tt.more)
			}
			if resp.Count != tt.count {
				t.Errorf("count %d, want %d", resp.Count, tt.count)
			}
		})
	}
}

func TestRangeAtRevision(t *testing.T) {
	sh := keySelectionShard(t)
	tests := []struct {
		rev     int64
		want    string
		wantErr error
	}{
		{rev: 0, want: "a,foo,foo/a,foo/b,zoo,\xff\xff"},
		{rev: -1, want: "a,foo,foo/a,foo/b,zoo,\xff\xff"}, // <= 0 is the current revision
		{rev: 1, want: ""}, // the initial, empty revision
		{rev: 2, want: "a"},
		{rev: 3, want: "a,foo"},
		{rev: 6, want: "a,foo,foo/a,foo/b,fop"},
		{rev: 8, want: "a,foo,foo/a,foo/b,fop,zoo,\xff\xff"},
		{rev: 9, want: "a,foo,foo/a,foo/b,zoo,\xff\xff"}, // fop deleted at 9
		{rev: 10, wantErr: ErrFutureRev},
		{rev: 1000, wantErr: ErrFutureRev},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("rev=%d", tt.rev), func(t *testing.T) {
			resp, err := sh.Range(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: tt.rev})
			assertErr(t, "Range", err, tt.wantErr)
			if tt.wantErr != nil {
				if resp != nil {
					t.Errorf("response %v with error", resp)
				}
				return
			}
			if resp == nil {
				t.Fatal("nil response")
			}
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
			if resp.Header.GetRevision() != 9 {
				t.Errorf("header revision %d, want the current revision 9", resp.Header.GetRevision())
			}
		})
	}
	// A historical single-key read returns the version of that time.
	assertKV(t, "fop@8", get(t, sh, "fop", 8), kv("fop", "5", 6, 6, 1, 0))
	assertKV(t, "fop@9", get(t, sh, "fop", 9), nil)
	assertKV(t, "fop@5", get(t, sh, "fop", 5), nil)
}

// sortShard holds four keys whose order differs for every sort target:
//
//	key  value create mod version
//	a    "2"   3      10  3
//	b    "4"   5      5   1
//	c    "3"   2      9   4
//	d    "1"   4      11  2
func sortShard(t *testing.T) *Shard {
	t.Helper()
	_, sh, _ := newShard(t)
	writes := []struct {
		rev      int64
		key, val string
	}{
		{2, "c", "c1"}, {3, "a", "a1"}, {4, "d", "d1"}, {5, "b", "4"},
		{6, "c", "c2"}, {7, "a", "a2"}, {8, "c", "c3"}, {9, "c", "3"},
		{10, "a", "2"}, {11, "d", "1"},
	}
	for _, w := range writes {
		mustPut(t, sh, w.rev, w.key, w.val)
	}
	return sh
}

var sortShardKVs = map[string]*mvccpb.KeyValue{
	"a": kv("a", "2", 3, 10, 3, 0),
	"b": kv("b", "4", 5, 5, 1, 0),
	"c": kv("c", "3", 2, 9, 4, 0),
	"d": kv("d", "1", 4, 11, 2, 0),
}

func TestRangeSort(t *testing.T) {
	sh := sortShard(t)
	assertKVs(t, "setup", mustRange(t, sh, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e")}).Kvs,
		[]*mvccpb.KeyValue{sortShardKVs["a"], sortShardKVs["b"], sortShardKVs["c"], sortShardKVs["d"]})

	const (
		none = pb.RangeRequest_NONE
		asc  = pb.RangeRequest_ASCEND
		desc = pb.RangeRequest_DESCEND
	)
	tests := []struct {
		target pb.RangeRequest_SortTarget
		order  pb.RangeRequest_SortOrder
		want   string
	}{
		{pb.RangeRequest_KEY, none, "a,b,c,d"},
		{pb.RangeRequest_KEY, asc, "a,b,c,d"},
		{pb.RangeRequest_KEY, desc, "d,c,b,a"},
		// NONE with a target other than KEY means ascending.
		{pb.RangeRequest_CREATE, none, "c,a,d,b"},
		{pb.RangeRequest_CREATE, asc, "c,a,d,b"},
		{pb.RangeRequest_CREATE, desc, "b,d,a,c"},
		{pb.RangeRequest_MOD, none, "b,c,a,d"},
		{pb.RangeRequest_MOD, asc, "b,c,a,d"},
		{pb.RangeRequest_MOD, desc, "d,a,c,b"},
		{pb.RangeRequest_VERSION, none, "b,d,a,c"},
		{pb.RangeRequest_VERSION, asc, "b,d,a,c"},
		{pb.RangeRequest_VERSION, desc, "c,a,d,b"},
		{pb.RangeRequest_VALUE, none, "d,a,c,b"},
		{pb.RangeRequest_VALUE, asc, "d,a,c,b"},
		{pb.RangeRequest_VALUE, desc, "b,c,a,d"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.target, tt.order), func(t *testing.T) {
			resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), SortTarget: tt.target, SortOrder: tt.order})
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
			if resp.Count != 4 || resp.More {
				t.Errorf("count %d more %v, want 4 false", resp.Count, resp.More)
			}
			// Sorting moves whole KeyValues.
			for _, k := range resp.Kvs {
				assertKV(t, "sorted kv", k, sortShardKVs[string(k.Key)])
			}
		})
	}
}

func TestRangeSortWithLimit(t *testing.T) {
	sh := sortShard(t)
	tests := []struct {
		name   string
		target pb.RangeRequest_SortTarget
		order  pb.RangeRequest_SortOrder
		limit  int64
		want   string
	}{
		// An explicit order sorts the whole range, then cuts it.
		{"mod descend", pb.RangeRequest_MOD, pb.RangeRequest_DESCEND, 2, "d,a"},
		{"version ascend", pb.RangeRequest_VERSION, pb.RangeRequest_ASCEND, 3, "b,d,a"},
		{"value descend", pb.RangeRequest_VALUE, pb.RangeRequest_DESCEND, 1, "b"},
		{"key descend", pb.RangeRequest_KEY, pb.RangeRequest_DESCEND, 2, "d,c"},
		{"create ascend", pb.RangeRequest_CREATE, pb.RangeRequest_ASCEND, 2, "c,a"},
		{"key ascend", pb.RangeRequest_KEY, pb.RangeRequest_ASCEND, 2, "a,b"},
		// Order NONE counts as the default ordering when etcd picks the
		// keys (executeRange's rangeLimit pushes limit+1 down to the key
		// index), and only those limit+1 keys are then sorted ascending:
		// the first 3 keys a,b,c sorted by value are a("2"),c("3"),b("4").
		{"value none takes first keys (etcd limit push-down)", pb.RangeRequest_VALUE, pb.RangeRequest_NONE, 2, "a,c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), SortTarget: tt.target, SortOrder: tt.order, Limit: tt.limit})
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
			if !resp.More || resp.Count != 4 {
				t.Errorf("more %v count %d, want true 4", resp.More, resp.Count)
			}
		})
	}
}

func TestRangeRevisionFilters(t *testing.T) {
	sh := sortShard(t)
	tests := []struct {
		name  string
		req   *pb.RangeRequest
		want  string
		more  bool
		count int64 // always the whole range: filters do not change it
	}{
		{name: "min mod", req: &pb.RangeRequest{MinModRevision: 9}, want: "a,c,d", count: 4},
		{name: "min mod is inclusive", req: &pb.RangeRequest{MinModRevision: 11}, want: "d", count: 4},
		{name: "max mod", req: &pb.RangeRequest{MaxModRevision: 9}, want: "b,c", count: 4},
		{name: "max mod is inclusive", req: &pb.RangeRequest{MaxModRevision: 5}, want: "b", count: 4},
		{name: "mod window", req: &pb.RangeRequest{MinModRevision: 6, MaxModRevision: 10}, want: "a,c", count: 4},
		{name: "min create", req: &pb.RangeRequest{MinCreateRevision: 4}, want: "b,d", count: 4},
		{name: "max create", req: &pb.RangeRequest{MaxCreateRevision: 3}, want: "a,c", count: 4},
		{name: "create window", req: &pb.RangeRequest{MinCreateRevision: 3, MaxCreateRevision: 4}, want: "a,d", count: 4},
		{name: "mod and create", req: &pb.RangeRequest{MinModRevision: 9, MaxCreateRevision: 3}, want: "a,c", count: 4},
		{name: "filters out everything", req: &pb.RangeRequest{MinModRevision: 12}, want: "", count: 4},
		{name: "empty window", req: &pb.RangeRequest{MinCreateRevision: 4, MaxCreateRevision: 3}, want: "", count: 4},
		{name: "limit after filter", req: &pb.RangeRequest{MinModRevision: 9, Limit: 2}, want: "a,c", more: true, count: 4},
		{name: "limit equals filtered", req: &pb.RangeRequest{MinModRevision: 9, Limit: 3}, want: "a,c,d", more: false, count: 4},
		{name: "filter then sort", req: &pb.RangeRequest{MinModRevision: 9, SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND}, want: "d,a,c", count: 4},
		{name: "filter sort limit", req: &pb.RangeRequest{MaxModRevision: 10, SortTarget: pb.RangeRequest_VERSION, SortOrder: pb.RangeRequest_DESCEND, Limit: 2}, want: "c,a", more: true, count: 4},
		{name: "filter on single key", req: &pb.RangeRequest{Key: []byte("a"), MinModRevision: 11}, want: "", count: 1},
		{name: "filter at old revision", req: &pb.RangeRequest{Revision: 6, MinModRevision: 5}, want: "b,c", count: 4},
		{name: "filter at old revision counts old range", req: &pb.RangeRequest{Revision: 3, MinCreateRevision: 3}, want: "a", count: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.req.Key == nil {
				tt.req.Key, tt.req.RangeEnd = []byte("a"), []byte("e")
			}
			resp := mustRange(t, sh, tt.req)
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
			if resp.More != tt.more {
				t.Errorf("more %v, want %v", resp.More, tt.more)
			}
			if resp.Count != tt.count {
				t.Errorf("count %d, want %d", resp.Count, tt.count)
			}
		})
	}
}

func TestRangeKeysOnly(t *testing.T) {
	sh := sortShard(t)
	strip := func(k *mvccpb.KeyValue) *mvccpb.KeyValue {
		return kv(string(k.Key), "", k.CreateRevision, k.ModRevision, k.Version, k.Lease)
	}
	resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), KeysOnly: true})
	assertKVs(t, "keys only", resp.Kvs, []*mvccpb.KeyValue{
		strip(sortShardKVs["a"]), strip(sortShardKVs["b"]), strip(sortShardKVs["c"]), strip(sortShardKVs["d"]),
	})
	if resp.Count != 4 {
		t.Errorf("count %d, want 4", resp.Count)
	}
	// Sorting by value still uses the values, which are then dropped.
	resp = mustRange(t, sh, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), KeysOnly: true,
		SortTarget: pb.RangeRequest_VALUE, SortOrder: pb.RangeRequest_ASCEND, Limit: 3})
	assertKVs(t, "keys only sorted by value", resp.Kvs, []*mvccpb.KeyValue{
		strip(sortShardKVs["d"]), strip(sortShardKVs["a"]), strip(sortShardKVs["c"]),
	})
	if !resp.More || resp.Count != 4 {
		t.Errorf("more %v count %d, want true 4", resp.More, resp.Count)
	}
	// Keys-only does not change the stored values.
	assertKV(t, "a after keys-only reads", get(t, sh, "a", 0), sortShardKVs["a"])
}

func TestRangeCountOnly(t *testing.T) {
	sh := sortShard(t)
	tests := []struct {
		name  string
		req   *pb.RangeRequest
		count int64
	}{
		{"whole range", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e")}, 4},
		{"with limit", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), Limit: 1}, 4},
		{"sub range", &pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("d")}, 2},
		{"single key", &pb.RangeRequest{Key: []byte("c")}, 1},
		{"missing key", &pb.RangeRequest{Key: []byte("x")}, 0},
		{"from key", &pb.RangeRequest{Key: []byte("c"), RangeEnd: []byte("\x00")}, 2},
		{"ignores filters", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), MinModRevision: 11}, 4},
		{"at old revision", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), Revision: 4}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.CountOnly = true
			resp := mustRange(t, sh, tt.req)
			if resp.Count != tt.count {
				t.Errorf("count %d, want %d", resp.Count, tt.count)
			}
			if len(resp.Kvs) != 0 {
				t.Errorf("count-only returned kvs %s", fmtKVs(resp.Kvs))
			}
			if resp.More {
				t.Errorf("count-only returned more = true")
			}
		})
	}
}

func TestRangeHistoricalKeyValues(t *testing.T) {
	sh := sortShard(t)
	tests := []struct {
		rev  int64
		want []*mvccpb.KeyValue
	}{
		{1, nil},
		{2, []*mvccpb.KeyValue{kv("c", "c1", 2, 2, 1, 0)}},
		{5, []*mvccpb.KeyValue{kv("a", "a1", 3, 3, 1, 0), kv("b", "4", 5, 5, 1, 0), kv("c", "c1", 2, 2, 1, 0), kv("d", "d1", 4, 4, 1, 0)}},
		{8, []*mvccpb.KeyValue{kv("a", "a2", 3, 7, 2, 0), kv("b", "4", 5, 5, 1, 0), kv("c", "c3", 2, 8, 3, 0), kv("d", "d1", 4, 4, 1, 0)}},
		{11, []*mvccpb.KeyValue{sortShardKVs["a"], sortShardKVs["b"], sortShardKVs["c"], sortShardKVs["d"]}},
	}
	for _, tt := range tests {
		resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("e"), Revision: tt.rev})
		assertKVs(t, fmt.Sprintf("rev %d", tt.rev), resp.Kvs, tt.want)
		if resp.Count != int64(len(tt.want)) {
			t.Errorf("rev %d: count %d, want %d", tt.rev, resp.Count, len(tt.want))
		}
	}
}

func TestRangeOnPartialShards(t *testing.T) {
	s := openStore(t, t.TempDir())
	left, err := s.OpenShard(1, nil, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	right, err := s.OpenShard(2, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, left, 2, "b", "1")
	mustPut(t, left, 3, "l", "2")
	mustPut(t, right, 2, "m", "3")
	mustPut(t, right, 3, "x", "4")
	mustPut(t, right, 4, "y", "5")

	tests := []struct {
		name     string
		sh       *Shard
		key, end string
		want     string
	}{
		{"left everything", left, "\x00", "\x00", "b,l"},
		{"right everything", right, "\x00", "\x00", "m,x,y"},
		{"left range crossing boundary", left, "c", "z", "l"},
		{"right range crossing boundary", right, "c", "z", "m,x,y"},
		{"left single key of right", left, "x", "", ""},
		{"right single key of left", right, "b", "", ""},
		{"right single key", right, "m", "", "m"},
		{"left range entirely in right", left, "n", "\x00", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mustRange(t, tt.sh, &pb.RangeRequest{Key: []byte(tt.key), RangeEnd: bytesOrNil(tt.end)})
			if got := keysOf(resp.Kvs); got != tt.want {
				t.Errorf("keys %q, want %q", got, tt.want)
			}
		})
	}
	assertState(t, "left", left.State(), State{AppliedIndex: 2, Revision: 3})
	assertState(t, "right", right.State(), State{AppliedIndex: 3, Revision: 4})
}

// RevisionAt names the last write at or below a revision, with the entries
// that changed nothing in between, and a shard's initial revision before its
// first entry.
func TestRevisionAt(t *testing.T) {
	_, sh, _ := newShard(t)
	got := func(rev int64) int64 {
		t.Helper()
		r, err := sh.RevisionAt(rev)
		if err != nil {
			t.Fatalf("RevisionAt(%d): %v", rev, err)
		}
		return r
	}
	if err := sh.Tick(nextIndex(sh), 3); err != nil {
		t.Fatal(err)
	}
	mustPut(t, sh, 6, "a", "1")
	if err := sh.Tick(nextIndex(sh), 8); err != nil {
		t.Fatal(err)
	}
	mustPut(t, sh, 9, "b", "1")
	for rev, want := range map[int64]int64{2: InitialRevision, 3: InitialRevision, 5: InitialRevision, 6: 6, 7: 6, 8: 6, 9: 9, 12: 9} {
		if g := got(rev); g != want {
			t.Errorf("RevisionAt(%d) = %d, want %d", rev, g, want)
		}
	}
}
