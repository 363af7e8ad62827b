package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestPlacementSixStores: six stores in three zones with replication
// factor 3 and twelve data shards. Every shard has three replicas, one per
// zone; every store holds six (twice the shards a store of a three-store
// cluster would hold with the same load each); leaders spread until no
// store leads more than one above or below even; reads, writes and a watch work over
// every shard; the meta leader sees a stopped store go down and come
// back; and a backup (no store holds every shard) restores into six new
// stores with the same placement.
func TestPlacementSixStores(t *testing.T) {
	if testing.Short() {
		t.Skip("six stores: not in -short")
	}
	var keys []string
	for c := 'b'; c <= 'l'; c++ {
		keys = append(keys, fmt.Sprintf("/place/%c", c))
	}
	zones := []string{"a", "b", "c"}
	c := testcluster.New(t, 6, testcluster.Options{SplitKeys: keys, ReplicationFactor: 3, Zones: zones, BalanceInterval: 300 * time.Millisecond})
	cli := c.Client(t)
	admin := adminpb.NewAdminClient(cli.ActiveConnection())

	shards, err := admin.ListShards(ctxT(t), &adminpb.ListShardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	held := map[uint64]int{}
	for _, s := range shards.Shards {
		d := s.Shard
		zs := map[string]bool{}
		for _, id := range d.Replicas {
			held[id]++
			zs[zones[(id-1)%3]] = true
		}
		if len(d.Replicas) != 3 || len(zs) != 3 {
			t.Errorf("shard %d on stores %v (zones %v); want 3 stores in 3 zones", d.Id, d.Replicas, zs)
		}
	}
	if len(shards.Shards) != 12 {
		t.Fatalf("%d data shards, want 12", len(shards.Shards))
	}
	for id := uint64(1); id <= 6; id++ {
		if held[id] != 6 {
			t.Errorf("store %d holds %d shards, want 6 of 36 replicas", id, held[id])
		}
	}

	// Writes to every shard and a watch over all of them.
	ctx := ctxT(t)
	wch := cli.Watch(ctx, "/place/", clientv3.WithPrefix())
	for _, k := range append([]string{"/place/a"}, keys...) {
		mustPut(t, cli, k+"/x", "v")
	}
	got := 0
	for got < 12 {
		select {
		case resp := <-wch:
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			got += len(resp.Events)
		case <-time.After(10 * time.Second):
			t.Fatalf("the watch delivered %d of 12 events", got)
		}
	}
	all, err := cli.Get(ctx, "/place/", clientv3.WithPrefix())
	if err != nil || len(all.Kvs) != 12 {
		t.Fatalf("range over every shard: %v, %d keys", err, len(all.Kvs))
	}

	// A split's new shard is on its parent's three stores (its data is
	// there), and serves at once.
	split, err := admin.SplitShard(ctx, &adminpb.SplitShardRequest{SplitKey: []byte("/place/b/m")})
	if err != nil {
		t.Fatal(err)
	}
	if l, r := split.Left.Replicas, split.Right.Replicas; len(r) != 3 || !sameSet(l, r) {
		t.Fatalf("split of shard %d: parent on %v, child on %v; want the same three stores", split.Left.Id, l, r)
	}
	mustPut(t, cli, "/place/b/z", "after the split")
	mapped, err := admin.ListShards(ctx, &adminpb.ListShardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range mapped.Shards {
		if sh.Shard.Id == split.Right.Id && !sameSet(sh.Shard.Replicas, split.Right.Replicas) {
			t.Fatalf("the shard map has the child on %v, the split said %v", sh.Shard.Replicas, split.Right.Replicas)
		}
	}

	// Leaders spread: 2 per store is even; zones keep some pairs of stores
	// from sharing any shard, so the balancer may stop one off that.
	var spread map[uint64]int
	for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		spread = leadersByStore(t, admin)
		lo, hi := 12, 0
		for id := uint64(1); id <= 6; id++ {
			lo, hi = min(lo, spread[id]), max(hi, spread[id])
		}
		if hi <= 3 && lo >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaders per store after 40 s: %v; want each store leading 1 to 3 of the 12", spread)
		}
	}
	t.Logf("leaders per store: %v", spread)

	// Liveness: a stopped store goes down, and comes back up.
	c.StopReplica(5)
	waitStoreState(t, admin, 6, metapb.StoreStatus_STATE_DOWN)
	mustPut(t, cli, "/place/l/after-stop", "v") // a shard on store 6 still has a quorum
	c.StartReplica(5)
	waitStoreState(t, admin, 6, metapb.StoreStatus_STATE_UP)

	// A backup through the gateway is one cut of all twelve shards, though
	// no store holds more than six: the others come from their leaders.
	file := filepath.Join(t.TempDir(), "backup")
	saveBackup(t, cli, file)
	info, err := replica.InspectBackup(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Shards) != 13 || info.Keys() != 14 {
		t.Fatalf("backup of %d shards and %d keys, want 13 and 14", len(info.Shards), info.Keys())
	}
	// Restored into six new stores, each holds the shards placement gives
	// it, and every key is back.
	c2 := testcluster.New(t, 6, testcluster.Options{ReplicationFactor: 3, Zones: zones, RestoreFrom: file})
	cli2 := c2.Client(t)
	back, err := cli2.Get(ctx, "/place/", clientv3.WithPrefix())
	if err != nil || len(back.Kvs) != 14 {
		t.Fatalf("restored cluster: %v, %d keys, want 14", err, len(back.Kvs))
	}
	admin2 := adminpb.NewAdminClient(cli2.ActiveConnection())
	for id := uint64(1); id <= 6; id++ {
		waitStoreState(t, admin2, id, metapb.StoreStatus_STATE_UP)
	}
	restored, err := admin2.ListStores(ctx, &adminpb.ListStoresRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range restored.Stores {
		if n := len(s.Replicas); n != 6 && n != 7 {
			t.Errorf("restored store %d holds shards %v, want 6 or 7 of the 13 shards' 39 replicas", s.Store.Id, s.Replicas)
		}
	}
}

func saveBackup(t *testing.T, cli *clientv3.Client, path string) {
	t.Helper()
	rc, err := cli.Snapshot(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
}

func sameSet(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[uint64]bool{}
	for _, x := range a {
		in[x] = true
	}
	for _, x := range b {
		if !in[x] {
			return false
		}
	}
	return true
}

func leadersByStore(t *testing.T, admin adminpb.AdminClient) map[uint64]int {
	t.Helper()
	resp, err := admin.ListStores(ctxT(t), &adminpb.ListStoresRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]int{}
	for _, s := range resp.Stores {
		out[s.Store.Id] = len(s.Leading)
	}
	return out
}

func waitStoreState(t *testing.T, admin adminpb.AdminClient, store uint64, want metapb.StoreStatus_State) {
	t.Helper()
	var last *metapb.StoreStatus
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := admin.ListStores(ctx, &adminpb.ListStoresRequest{})
		cancel()
		if err != nil {
			continue // the meta leader may be the stopped store
		}
		for _, s := range resp.Stores {
			if s.Store.Id == store {
				last = s
				if s.State == want {
					return
				}
			}
		}
	}
	t.Fatalf("store %d is %v, want %v", store, last, want)
}
