package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// splitCluster is a 3-store cluster with data shards starting at /b/, /c/
// and /d/ (4 data shards).
func splitCluster(t *testing.T) (*testcluster.Cluster, *clientv3.Client) {
	c := testcluster.New(t, 3, testcluster.Options{SplitKeys: []string{"/b/", "/c/", "/d/"}})
	return c, c.Client(t)
}

func TestRangeAcrossShards(t *testing.T) {
	_, cli := splitCluster(t)
	ctx := context.Background()
	var keys []string
	for _, p := range []string{"/a/", "/b/", "/c/", "/d/"} {
		for i := 0; i < 3; i++ {
			k := fmt.Sprintf("%s%d", p, i)
			keys = append(keys, k)
			if _, err := cli.Put(ctx, k, fmt.Sprintf("v%d", 9-len(keys))); err != nil {
				t.Fatal(err)
			}
		}
	}
	last, err := cli.Put(ctx, "/a/last", "x")
	if err != nil {
		t.Fatal(err)
	}
	keys = append(keys[:3], append([]string{"/a/last"}, keys[3:]...)...)

	all, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(all); got != strings.Join(keys, ",") || all.Count != int64(len(keys)) || all.More {
		t.Fatalf("range across shards: %v count %d more %v, want %v", got, all.Count, all.More, keys)
	}
	if all.Header.Revision != last.Header.Revision {
		t.Fatalf("header revision %d, want the last write's %d", all.Header.Revision, last.Header.Revision)
	}

	// A limit cuts in key order; count is the total; more says so.
	page, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithLimit(5))
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(page); got != strings.Join(keys[:5], ",") || page.Count != int64(len(keys)) || !page.More {
		t.Fatalf("limit 5: %v count %d more %v", got, page.Count, page.More)
	}
	// The next page at the first page's revision (Kubernetes' pagination).
	next, err := cli.Get(ctx, keys[4]+"\x00", clientv3.WithRange(clientv3.GetPrefixRangeEnd("/")), clientv3.WithLimit(5), clientv3.WithRev(page.Header.Revision))
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(next); got != strings.Join(keys[5:10], ",") {
		t.Fatalf("second page: %v, want %v", got, keys[5:10])
	}

	// Sorted by value, descending, across shards.
	byValue, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortDescend), clientv3.WithLimit(3), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(byValue); got != "/a/last,/a/0,/a/1" || byValue.Kvs[0].Value != nil {
		t.Fatalf("by value descending: %v (values %q)", got, byValue.Kvs[0].Value)
	}
	// Count only, and keys only.
	cnt, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || cnt.Count != int64(len(keys)) || len(cnt.Kvs) != 0 {
		t.Fatalf("count only: %v %v", cnt, err)
	}

	// A historical read across shards: before the last write.
	old, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithRev(last.Header.Revision-1))
	if err != nil {
		t.Fatal(err)
	}
	if old.Count != int64(len(keys)-1) {
		t.Fatalf("at revision %d: %d keys, want %d", last.Header.Revision-1, old.Count, len(keys)-1)
	}
	// A single shard read at a revision above its own but not the
	// cluster's: /d/ was written before /a/last.
	d, err := cli.Get(ctx, "/d/", clientv3.WithPrefix(), clientv3.WithRev(last.Header.Revision))
	if err != nil || d.Count != 3 {
		t.Fatalf("/d/ at the cluster's revision: %v %v", d, err)
	}
	if _, err := cli.Get(ctx, "/d/", clientv3.WithPrefix(), clientv3.WithRev(last.Header.Revision+1000)); err == nil || err.Error() != rpctypes.ErrFutureRev.Error() {
		t.Fatalf("a future revision: %v, want %v", err, rpctypes.ErrFutureRev)
	}
	if _, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithRev(last.Header.Revision+1000)); err == nil || err.Error() != rpctypes.ErrFutureRev.Error() {
		t.Fatalf("a future revision across shards: %v, want %v", err, rpctypes.ErrFutureRev)
	}
}

func TestWritesAcrossShardsRefused(t *testing.T) {
	_, cli := splitCluster(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "/a/1", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/c/1", "x"); err != nil {
		t.Fatal(err)
	}
	_, err := cli.Delete(ctx, "/", clientv3.WithPrefix())
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "shards 2, 3, 4, 5") {
		t.Fatalf("delete across shards: %v", err)
	}
	_, err = cli.Txn(ctx).Then(clientv3.OpPut("/a/2", "y"), clientv3.OpPut("/c/2", "y")).Commit()
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "shards 2, 4") {
		t.Fatalf("txn across shards: %v", err)
	}
	r, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil || r.Count != 2 {
		t.Fatalf("after refused writes: %v %v (want the 2 keys, nothing else)", r, err)
	}
	// Within one shard, as before.
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut("/c/2", "y"), clientv3.OpDelete("/c/1")).Commit(); err != nil {
		t.Fatal(err)
	}
}

// A watch over every shard gets writes of one shard while the others are
// idle: the watcher asks the idle shards to close revisions.
func TestWatchAcrossIdleShards(t *testing.T) {
	_, cli := splitCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wch := cli.Watch(ctx, "/", clientv3.WithPrefix())
	one := cli.Watch(ctx, "/c/", clientv3.WithPrefix())
	time.Sleep(200 * time.Millisecond)
	var revs []int64
	for i := 0; i < 5; i++ {
		for _, k := range []string{"/c/x", "/a/y"} {
			r, err := cli.Put(ctx, k, fmt.Sprint(i))
			if err != nil {
				t.Fatal(err)
			}
			revs = append(revs, r.Header.Revision)
		}
	}
	// Ticks closed the idle shards between the writes; they take no
	// revision of their own, so the writes' revisions have no gaps.
	for i := range revs {
		if revs[i] != revs[0]+int64(i) {
			t.Fatalf("write revisions %v have gaps", revs)
		}
	}
	start := time.Now()
	evs := recvEvents(t, wch, len(revs))
	for i, ev := range evs {
		if ev.Kv.ModRevision != revs[i] {
			t.Fatalf("event %d at %d, want %d (in revision order)", i, ev.Kv.ModRevision, revs[i])
		}
	}
	if got := recvEvents(t, one, 5); got[4].Kv.ModRevision != revs[8] {
		t.Fatalf("/c/ watch: last event at %d, want %d", got[4].Kv.ModRevision, revs[8])
	}
	t.Logf("10 events over 2 of 4 shards delivered %s after the last write", time.Since(start).Round(time.Millisecond))
	// Progress across shards: the revision of the last write.
	if err := cli.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case wr := <-wch:
		if !wr.IsProgressNotify() || wr.Header.Revision < revs[len(revs)-1] {
			t.Fatalf("progress: %+v", wr)
		}
	case <-ctx.Done():
		t.Fatal("no progress response")
	}
}

func TestCompactAcrossShards(t *testing.T) {
	c, cli := splitCluster(t)
	ctx := context.Background()
	first, err := cli.Put(ctx, "/a/k", "1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/c/k", "1"); err != nil {
		t.Fatal(err)
	}
	last, err := cli.Put(ctx, "/c/k", "2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, last.Header.Revision+100); err == nil || err.Error() != rpctypes.ErrFutureRev.Error() {
		t.Fatalf("compact above the cluster's revision: %v", err)
	}
	// Above /a/'s own revision (and /b/'s, /d/'s): every shard compacts.
	if _, err := cli.Compact(ctx, last.Header.Revision); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"/a/k", "/c/k", "/"} {
		if _, err := cli.Get(ctx, k, clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision)); err == nil || err.Error() != rpctypes.ErrCompacted.Error() {
			t.Fatalf("%s below the compaction: %v", k, err)
		}
	}
	r, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil || r.Count != 2 {
		t.Fatalf("after compaction: %v %v", r, err)
	}
	// A watcher that starts now follows shards compacted above their own
	// revision, and a watch from now gets the next write.
	c.StopWatcher()
	c.StartWatcher()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	wch := cli.Watch(wctx, "/", clientv3.WithPrefix())
	time.Sleep(200 * time.Millisecond)
	next, err := cli.Put(ctx, "/b/k", "1")
	if err != nil {
		t.Fatal(err)
	}
	if evs := recvEvents(t, wch, 1); evs[0].Kv.ModRevision != next.Header.Revision {
		t.Fatalf("event at %d, want %d", evs[0].Kv.ModRevision, next.Header.Revision)
	}
}

// Closing revisions costs nothing while nobody writes: with watches open on
// every shard and no writes, no shard applies an entry.
func TestIdleShardsWriteNoEntries(t *testing.T) {
	c, cli := splitCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/c/x", "1"); err != nil {
		t.Fatal(err)
	}
	wch := cli.Watch(ctx, "/", clientv3.WithPrefix())
	if _, err := cli.Put(ctx, "/a/x", "1"); err != nil {
		t.Fatal(err)
	}
	recvEvents(t, wch, 1)
	time.Sleep(500 * time.Millisecond) // the ticks that release it land
	before := map[uint64]uint64{}
	for id := uint64(2); id <= 5; id++ {
		st, err := c.Replica(0).ShardState(id)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = st.AppliedIndex
	}
	time.Sleep(2 * time.Second)
	for id, idx := range before {
		st, err := c.Replica(0).ShardState(id)
		if err != nil {
			t.Fatal(err)
		}
		if st.AppliedIndex != idx {
			t.Fatalf("shard %d applied entries %d..%d while the cluster was idle", id, idx+1, st.AppliedIndex)
		}
	}
}

// The admin API lists every shard with its range, leader and revisions
// (tessera shard list prints it).
func TestListShards(t *testing.T) {
	_, cli := splitCluster(t)
	ctx := context.Background()
	w, err := cli.Put(ctx, "/c/x", "1")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := adminpb.NewAdminClient(cli.ActiveConnection()).ListShards(ctx, &adminpb.ListShardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"", "/b/", "/c/", "/d/", ""}
	if len(resp.Shards) != 4 {
		t.Fatalf("%d shards, want 4", len(resp.Shards))
	}
	for i, s := range resp.Shards {
		if string(s.Shard.StartKey) != want[i] || string(s.Shard.EndKey) != want[i+1] || len(s.Shard.Replicas) != 3 {
			t.Fatalf("shard %d: %v", i, s.Shard)
		}
		if s.LeaderStoreId == 0 || s.ClosedRevision < s.Revision {
			t.Fatalf("shard %d: leader %d, revision %d, closed %d", s.Shard.Id, s.LeaderStoreId, s.Revision, s.ClosedRevision)
		}
	}
	if resp.Shards[2].Revision != w.Header.Revision || resp.Revision != w.Header.Revision {
		t.Fatalf("/c/'s shard at %d, cluster at %d; want the write's %d", resp.Shards[2].Revision, resp.Revision, w.Header.Revision)
	}
}

// TestHashKVAcrossShards hashes every shard at one revision of the
// cluster: at a revision above some shards' own last write, and at the
// current one, where two gateways agree.
func TestHashKVAcrossShards(t *testing.T) {
	c, cli := splitCluster(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "/a/x", "1"); err != nil {
		t.Fatal(err)
	}
	last, err := cli.Put(ctx, "/c/x", "2")
	if err != nil {
		t.Fatal(err)
	}
	ep := c.Endpoints()[0]
	h, err := cli.HashKV(ctx, ep, last.Header.Revision)
	if err != nil {
		t.Fatalf("HashKV at the last write's revision (above three shards' own): %v", err)
	}
	if h.HashRevision != last.Header.Revision {
		t.Fatalf("hash revision %d, want %d", h.HashRevision, last.Header.Revision)
	}
	other := c.ClientAs(t, "", "", c.StartGateway()...)
	h0, err := other.HashKV(ctx, other.Endpoints()[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	if h0.Hash != h.Hash || h0.HashRevision != last.Header.Revision {
		t.Fatalf("HashKV now on another gateway: %d at %d, want %d at %d", h0.Hash, h0.HashRevision, h.Hash, last.Header.Revision)
	}
	if _, err := cli.HashKV(ctx, ep, last.Header.Revision+100); err == nil || !strings.Contains(err.Error(), "future revision") {
		t.Fatalf("HashKV above the cluster's revision: %v", err)
	}
}

// TestCompactionIsOneMetaEntry: a compaction recorded in the meta shard
// and then never sent to the shards (its gateway died in between) is
// applied by every shard's leader by itself; compacting at or below it
// again is etcd's ErrCompacted.
func TestCompactionIsOneMetaEntry(t *testing.T) {
	c, cli := splitCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first := mustPut(t, cli, "/a/k", "1")
	mustPut(t, cli, "/c/k", "1")
	last := mustPut(t, cli, "/c/k", "2")
	conn, err := grpc.NewClient(c.Replica(0).APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := metapb.NewMetaClient(conn).Compact(ctx, &metapb.CompactRequest{Revision: last.Header.Revision}); err != nil {
		t.Fatal(err)
	}
	admin := adminpb.NewAdminClient(cli.ActiveConnection())
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := admin.ListShards(ctx, &adminpb.ListShardsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		behind := 0
		for _, s := range resp.Shards {
			if s.CompactRevision != last.Header.Revision {
				behind++
			}
		}
		if behind == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d shards not compacted at %d: %v", behind, len(resp.Shards), last.Header.Revision, resp.Shards)
		}
	}
	if _, err := cli.Get(ctx, "/a/k", clientv3.WithRev(first.Header.Revision)); err == nil || err.Error() != rpctypes.ErrCompacted.Error() {
		t.Fatalf("read below the compaction: %v", err)
	}
	if _, err := cli.Compact(ctx, last.Header.Revision); err == nil || err.Error() != rpctypes.ErrCompacted.Error() {
		t.Fatalf("compact again at the same revision: %v", err)
	}
}
