package mvcc

import (
	"fmt"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// A store whose tables were compressed (every store before tables were
// left uncompressed) reads on after the upgrade, also once compaction
// has rewritten its tables without compression.
func TestCompressedStoreReadsOnUncompressed(t *testing.T) {
	dir := t.TempDir()
	old := testOptions()
	old.Knobs.CompressTables = true
	s := openStoreWith(t, dir, old)
	sh, err := s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	val := strings.Repeat("compressible ", 300)
	const n = 3000
	for i := 0; i < n; i++ {
		mustPut(t, sh, int64(i+2), fmt.Sprintf("k%05d", i), val)
	}
	if err := s.Close(); err != nil { // flushes the memtables to (compressed) tables
		t.Fatal(err)
	}

	s = openStore(t, dir)
	sh, err = s.OpenShard(1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		resp := mustRange(t, sh, &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l")})
		if len(resp.Kvs) != n+1 || resp.Count != n+1 {
			t.Fatalf("%s: %d keys (count %d), want %d", what, len(resp.Kvs), resp.Count, n+1)
		}
		for _, kv := range resp.Kvs {
			if string(kv.Value) != val {
				t.Fatalf("%s: %s has a value of %d bytes", what, kv.Key, len(kv.Value))
			}
		}
	}
	mustPut(t, sh, n+2, "k99999", val)
	check("reopened")
	if _, _, err := s.Defragment(); err != nil { // rewrites every table, uncompressed
		t.Fatal(err)
	}
	check("after rewriting the tables")
}

// A value that goes to Badger's value log is synced before the entry's
// apply returns (a table flushed later must not point past what a power
// loss keeps); values kept in the tables cost no sync.
func TestValueLogSyncedForLargeValues(t *testing.T) {
	o := testOptions()
	syncs := 0
	o.Knobs.SyncedValueLog = func() { syncs++ }
	_, sh, _ := newShardWith(t, o)
	mustPut(t, sh, 2, "small", strings.Repeat("v", 512<<10)) // its change-log record too is under 1 MiB
	if syncs != 0 {
		t.Fatalf("%d syncs for a value kept in the tables", syncs)
	}
	big := strings.Repeat("w", 1<<20)
	mustPut(t, sh, 3, "big", big)
	if syncs != 1 {
		t.Fatalf("%d syncs for a value in the value log, want 1", syncs)
	}
	if got := get(t, sh, "big", 0); string(got.Value) != big {
		t.Fatalf("big reads back %d bytes", len(got.Value))
	}
}
