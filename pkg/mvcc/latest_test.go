package mvcc

import (
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// badgerGet reads key's newest version at or below rev from Badger only.
func badgerGet(t *testing.T, sh *Shard, key string, rev int64) *mvccpb.KeyValue {
	t.Helper()
	txn := sh.store.db.NewTransactionAt(uint64(rev), false)
	defer txn.Discard()
	item, err := txn.Get(dataKey([]byte(key)))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	kv := &mvccpb.KeyValue{}
	if err := item.Value(func(v []byte) error { return proto.Unmarshal(v, kv) }); err != nil {
		t.Fatal(err)
	}
	kv.Key = []byte(key)
	return kv
}

// viewGet reads as every read of the shard does (the cache first).
func viewGet(t *testing.T, sh *Shard, key string, rev int64) *mvccpb.KeyValue {
	t.Helper()
	txn := sh.store.db.NewTransactionAt(uint64(rev), false)
	defer txn.Discard()
	kv, err := snapshotView{sh: sh, txn: txn}.get([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// The cache of newest versions answers every read exactly as Badger
// does, at the newest revision and below it, through overwrites, large
// values it does not keep, deletes one by one and in bulk, nested txns
// that put and delete a key, lease revokes, evictions, and a snapshot
// install that rewrites the keys under it.
func TestLatestVersionsMatchBadger(t *testing.T) {
	o := testOptions()
	o.LatestCacheSize = 2 << 10 // a few keys: evictions all along
	_, sh, _ := newShardWith(t, o)
	rnd := rand.New(rand.NewSource(2))
	key := func() string { return fmt.Sprintf("k%02d", rnd.Intn(40)) }
	hits, lease := 0, int64(9)
	rev := int64(1)
	for i := 0; i < 600; i++ {
		rev++
		switch op := rnd.Intn(12); {
		case i%100 == 50:
			// Install a snapshot of another shard's different history.
			_, other, _ := newShard(t)
			mustTxn(t, other, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opPut("k01", "installed"), opPut("k02", "installed")}})
			snap, _ := writeSnapshot(t, other)
			if err := sh.Restore(snap, make(chan struct{})); err != nil {
				t.Fatal(err)
			}
		case op < 5:
			mustPut(t, sh, rev, key(), strings.Repeat("v", rnd.Intn(200)))
		case op == 5:
			mustPut(t, sh, rev, key(), strings.Repeat("b", latestValueMax+1))
		case op == 6:
			mustTxn(t, sh, rev, &pb.TxnRequest{Success: []*pb.RequestOp{opDelete(key(), "")}})
		case op == 7:
			mustTxn(t, sh, rev, deleteBetween(key(), key()))
		case op == 8:
			mustTxn(t, sh, rev, putThenDelete(key(), lease))
		case op == 9:
			if _, err := sh.RevokeLease(nextIndex(sh), rev, []int64{lease}, nil); err != nil {
				t.Fatal(err)
			}
			lease++
		default:
			mustPut(t, sh, rev, key()+"/l", "z")
		}
		last := sh.State().LastEntry
		for j := 0; j < 40; j++ {
			k := fmt.Sprintf("k%02d", j)
			if j%2 == 1 {
				k += "/l"
			}
			for _, at := range []int64{last, last - 1, last - 7} {
				if at < 1 {
					continue
				}
				if _, ok := sh.store.latest.get(dataKey([]byte(k)), uint64(at)); ok {
					hits++
				}
				got, want := viewGet(t, sh, k, at), badgerGet(t, sh, k, at)
				if !proto.Equal(got, want) {
					t.Fatalf("entry %d: %s at %d reads %v, Badger has %v", i, k, at, got, want)
				}
			}
		}
		if sh.store.latest.bytes > int(o.LatestCacheSize) {
			t.Fatalf("the cache holds %d bytes, more than its %d", sh.store.latest.bytes, o.LatestCacheSize)
		}
	}
	if hits == 0 {
		t.Fatal("no read was answered from the cache: the test compared Badger with itself")
	}
}
