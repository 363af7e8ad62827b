package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestOnlineSplit splits a shard twice while clients write on both sides
// of the split keys and a watch follows every key: no write fails, every
// acknowledged write is read back and was seen by the watch in revision
// order with none missing, and after every store restarts the shards and
// their keys are still there.
func TestOnlineSplit(t *testing.T) {
	c := testcluster.New(t, 3, testcluster.Options{})
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := adminpb.NewAdminClient(cli.ActiveConnection())

	start, err := cli.Put(ctx, "/k/start", "x")
	if err != nil {
		t.Fatal(err)
	}
	wch := cli.Watch(ctx, "/k/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))

	// Writers over keys that the splits at /k/3 and /k/6 will move.
	var (
		mu    sync.Mutex
		acked = map[string]int64{} // key -> revision of its last acknowledged put
		wg    sync.WaitGroup
		stop  = make(chan struct{})
		fails []error
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("/k/%d/%d", (w*3+i)%10, i)
				resp, err := cli.Put(ctx, key, "v")
				mu.Lock()
				if err != nil {
					fails = append(fails, fmt.Errorf("put %s: %w", key, err))
				} else {
					acked[key] = resp.Header.Revision
				}
				mu.Unlock()
			}
		}()
	}

	time.Sleep(300 * time.Millisecond)
	for _, key := range []string{"/k/6", "/k/3"} {
		resp, err := admin.SplitShard(ctx, &adminpb.SplitShardRequest{SplitKey: []byte(key)})
		if err != nil {
			t.Fatalf("split at %s: %v", key, err)
		}
		if string(resp.Right.StartKey) != key || string(resp.Left.EndKey) != key || resp.Right.SplitRevision == 0 {
			t.Fatalf("split at %s: left %v right %v", key, resp.Left, resp.Right)
		}
		time.Sleep(300 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if len(fails) > 0 {
		t.Fatalf("%d writes failed during the splits, first: %v", len(fails), fails[0])
	}
	if len(acked) < 20 {
		t.Fatalf("only %d writes in the test", len(acked))
	}

	list, err := admin.ListShards(ctx, &adminpb.ListShardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var starts []string
	for _, s := range list.Shards {
		starts = append(starts, string(s.Shard.StartKey))
	}
	if fmt.Sprint(starts) != "[ /k/3 /k/6]" {
		t.Fatalf("shards after the splits start at %q", starts)
	}

	// Every acknowledged write is read back, in one read over the three.
	all, err := cli.Get(ctx, "/k/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, kv := range all.Kvs {
		got[string(kv.Key)] = kv.ModRevision
	}
	for k, rev := range acked {
		if got[k] != rev {
			t.Fatalf("acknowledged put of %s at %d reads back at %d", k, rev, got[k])
		}
	}

	// The watch saw every put, in revision order, none missing.
	seen := map[string]bool{}
	last := int64(0)
	deadline := time.After(30 * time.Second)
	for len(seen) < len(acked) {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				t.Fatalf("watch ended: %v", wr.Err())
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision < last {
					t.Fatalf("watch event at %d after one at %d", ev.Kv.ModRevision, last)
				}
				last = ev.Kv.ModRevision
				if rev, ok := acked[string(ev.Kv.Key)]; ok && rev == ev.Kv.ModRevision {
					seen[string(ev.Kv.Key)] = true
				}
			}
		case <-deadline:
			for k := range acked {
				if !seen[k] {
					t.Fatalf("the watch saw %d of %d puts; missing %s at %d", len(seen), len(acked), k, acked[k])
				}
			}
		}
	}

	// Every store restarts: the children come back from the stores' own
	// records, with their keys.
	for i := 0; i < c.Size(); i++ {
		c.StopReplica(i)
	}
	for i := 0; i < c.Size(); i++ {
		c.StartReplica(i)
	}
	c.WaitReady()
	after, err := cli.Get(ctx, "/k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if after.Count != all.Count {
		t.Fatalf("%d keys after the restart, %d before", after.Count, all.Count)
	}
	for _, key := range []string{"/k/1/x", "/k/4/x", "/k/8/x"} {
		if _, err := cli.Put(ctx, key, "after"); err != nil {
			t.Fatalf("put %s after the restart: %v", key, err)
		}
	}
}

// TestSplitSeenByStaleGateway splits through one gateway while another
// still holds the map from before: the other one's reads report revisions
// at or above writes to the new shard, its writes reach the new shard,
// and a lease revoked through it deletes its keys on both sides, as does
// a compaction.
func TestSplitSeenByStaleGateway(t *testing.T) {
	c := testcluster.New(t, 3, testcluster.Options{SplitKeys: []string{"/z"}})
	cli := c.Client(t)
	other := c.ClientAs(t, "", "", c.StartGateway()...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := other.Get(ctx, "/zz"); err != nil { // loads its map
		t.Fatal(err)
	}

	lease, err := other.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"/a", "/q"} {
		if _, err := other.Put(ctx, k, "leased", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := adminpb.NewAdminClient(cli.ActiveConnection()).SplitShard(ctx, &adminpb.SplitShardRequest{SplitKey: []byte("/m")}); err != nil {
		t.Fatal(err)
	}
	w, err := cli.Put(ctx, "/q2", "on the new shard")
	if err != nil {
		t.Fatal(err)
	}
	// The other gateway has not read the map since the split, and this
	// read is of a shard the split did not touch.
	r, err := other.Get(ctx, "/zz")
	if err != nil {
		t.Fatal(err)
	}
	if r.Header.Revision < w.Header.Revision {
		t.Fatalf("a read after a write to the new shard reports revision %d, below the write's %d", r.Header.Revision, w.Header.Revision)
	}
	if _, err := other.Put(ctx, "/q3", "through the stale gateway"); err != nil {
		t.Fatalf("put to the new shard through the other gateway: %v", err)
	}
	if _, err := other.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"/a", "/q"} {
		if g, err := cli.Get(ctx, k); err != nil || len(g.Kvs) != 0 {
			t.Fatalf("%s after its lease was revoked: %v, %v", k, g.Kvs, err)
		}
	}
	last, err := other.Put(ctx, "/b", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Compact(ctx, last.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "/q2", clientv3.WithRev(w.Header.Revision)); err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Fatalf("read of the new shard below the compaction: %v, want compacted", err)
	}
}

// TestSplitFinishedWithoutMeta applies a split on the parent alone, as a
// split whose driver died before its last step would leave it: requests
// still reach the new shard (WrongShard), the parent's leader records the
// split in the meta map by itself, and a watcher started afterwards
// follows the new shard from the map.
func TestSplitFinishedWithoutMeta(t *testing.T) {
	c := testcluster.New(t, 3, testcluster.Options{})
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cli.Put(ctx, "/s/a", "1"); err != nil {
		t.Fatal(err)
	}
	leader := c.LeaderIndex(replica.FirstDataShardID)
	conn, err := grpc.NewClient(c.Replica(leader).APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Shard ID 9: above every ID the meta shard handed out.
	if _, err := shardpb.NewShardClient(conn).Split(ctx, &shardpb.SplitRequest{ShardId: replica.FirstDataShardID, SplitKey: []byte("/s/m"), ChildId: 9, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/s/z", "2"); err != nil {
		t.Fatalf("put to the new shard before the meta map has it: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := metapb.NewMetaClient(conn).GetShardMap(ctx, &metapb.GetShardMapRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(m.ShardMap.Shards) == 2 && m.ShardMap.Shards[1].Id == 9 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the meta map did not learn the split: %v", m.ShardMap.Shards)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.StopWatcher()
	c.StartWatcher()
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	wch := cli.Watch(wctx, "/s/", clientv3.WithPrefix())
	w, err := cli.Put(ctx, "/s/y", "3")
	if err != nil {
		t.Fatal(err)
	}
	for wr := range wch {
		for _, ev := range wr.Events {
			if string(ev.Kv.Key) == "/s/y" && ev.Kv.ModRevision == w.Header.Revision {
				return
			}
		}
	}
	t.Fatal("a watcher started after the split never delivered a put to the new shard")
}

// TestSplitWithStoreDown splits with one of three stores stopped (a
// majority of every group is up), then starts it: it applies the split
// from its log and runs the new shard too.
func TestSplitWithStoreDown(t *testing.T) {
	c := testcluster.New(t, 3, testcluster.Options{})
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < c.Size(); i++ {
		c.StopReplica(i)
		// Leaders it held are elected elsewhere first (etcd's clients
		// also wait out an election).
		time.Sleep(2 * time.Second)
		c.WaitReady()
		began := time.Now()
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		resp, err := c.SplitShard(sctx, fmt.Sprintf("/w/%d", i))
		scancel()
		if err != nil {
			t.Fatalf("split with %s stopped: %v", c.StoreName(i), err)
		}
		t.Logf("split with %s stopped: %s (shard %d)", c.StoreName(i), time.Since(began).Round(time.Millisecond), resp.Right.Id)
		if _, err := cli.Put(ctx, fmt.Sprintf("/w/%d/x", i), "y"); err != nil {
			t.Fatalf("put to the new shard: %v", err)
		}
		c.StartReplica(i)
		c.WaitReady()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := c.Replica(i).ShardState(resp.Right.Id)
			if err == nil && st.Revision > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not start shard %d after it came back: %v", c.StoreName(i), resp.Right.Id, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	g, err := cli.Get(ctx, "/w/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || g.Count != 3 {
		t.Fatalf("keys after the splits: %v %v", g, err)
	}
}
