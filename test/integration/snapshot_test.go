package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// serializableRange reads a shard directly from one store's local state.
func serializableRange(t *testing.T, apiAddr string, req *pb.RangeRequest) *pb.RangeResponse {
	t.Helper()
	return serializableRangeOf(t, apiAddr, replica.FirstDataShardID, req)
}

// serializableRangeOf is serializableRange of a given shard.
func serializableRangeOf(t *testing.T, apiAddr string, shardID uint64, req *pb.RangeRequest) *pb.RangeResponse {
	t.Helper()
	conn, err := grpc.NewClient(apiAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req.Serializable = true
	b, _ := proto.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := shardpb.NewShardClient(conn).Range(ctx, &shardpb.RangeRequest{ShardId: shardID, Request: b})
	if err != nil {
		t.Fatalf("range on %s: %v", apiAddr, err)
	}
	resp := &pb.RangeResponse{}
	if err := proto.Unmarshal(out.Response, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestLaggingReplicaSnapshot stops a follower, writes more entries than the
// log keeps (so the leader must send a snapshot), restarts it and checks it
// holds the same current and historical data as the leader. Serializable
// reads of the follower run all through its catch-up: each must see the
// data as of its header revision, never part of the snapshot.
func TestLaggingReplicaSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("snapshot catch-up: not in -short")
	}
	t.Run("one shard", func(t *testing.T) { laggingReplicaSnapshot(t, nil, replica.FirstDataShardID) })
	// The keys in a shard over part of the keyspace, next to another
	// shard in the same stores: its snapshot is written over the lagging
	// copy without touching the other shard's keys.
	t.Run("part of the keyspace", func(t *testing.T) {
		laggingReplicaSnapshot(t, []string{"/snap/", "/snap0"}, replica.FirstDataShardID+1)
	})
}

func laggingReplicaSnapshot(t *testing.T, splitKeys []string, shard uint64) {
	c := testcluster.New(t, 3, testcluster.Options{SplitKeys: splitKeys})
	cli := c.Client(t)
	ctx := ctxT(t)
	if _, err := cli.Put(ctx, "/other", "kept"); err != nil {
		t.Fatal(err)
	}
	leader := c.LeaderIndex(shard)
	lagging := (leader + 1) % 3
	c.StopReplica(lagging)

	// 10,000 entries per snapshot plus 5,000 kept: write past both.
	const writers, perWriter = 32, 520
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				// A put may fail during an election under load; it is
				// idempotent here, so try again (bounded).
				var err error
				for try := 0; try < 20; try++ {
					wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err = cli.Put(wctx, fmt.Sprintf("/snap/%02d/%04d", w, i%100), fmt.Sprintf("v%d", i))
					cancel()
					if err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	mid, err := cli.Get(ctx, "/snap/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "/snap/00/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, mid.Header.Revision-1000); err != nil {
		t.Fatal(err)
	}
	head, err := cli.Get(ctx, "/snap/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}

	c.StartReplica(lagging)
	type seen struct{ rev, count int64 }
	var reads []seen
	refused := 0
	probe := func() {
		conn, err := grpc.NewClient(c.Replica(lagging).APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		b, _ := proto.Marshal(&pb.RangeRequest{Key: []byte("/snap/"), RangeEnd: []byte("/snap0"), CountOnly: true, Serializable: true})
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		out, err := shardpb.NewShardClient(conn).Range(rctx, &shardpb.RangeRequest{ShardId: shard, Request: b})
		if err != nil {
			refused++ // not open yet, or installing the snapshot
			return
		}
		resp := &pb.RangeResponse{}
		if err := proto.Unmarshal(out.Response, resp); err != nil {
			t.Fatal(err)
		}
		reads = append(reads, seen{resp.Header.Revision, resp.Count})
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		probe()
		st, err := c.Replica(lagging).ShardState(shard)
		if err == nil && st.Revision >= head.Header.Revision {
			if st.CompactRevision != mid.Header.Revision-1000 {
				t.Fatalf("compaction revision %d on the restored replica, want %d", st.CompactRevision, mid.Header.Revision-1000)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lagging replica did not catch up: %+v %v (leader at %d)", st, err, head.Header.Revision)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := c.Replica(lagging).SnapshotsRestored(); n == 0 {
		t.Fatal("the lagging replica caught up without a snapshot: the test did not exercise snapshots")
	}
	// What the follower served while catching up, against the leader's
	// history: below the compaction only its state from before the writes
	// (no /snap/ key) can have been served.
	compacted := mid.Header.Revision - 1000
	for _, r := range reads {
		want := int64(0)
		if r.rev >= compacted {
			g, err := cli.Get(ctx, "/snap/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(r.rev))
			if err != nil {
				t.Fatal(err)
			}
			want = g.Count
		}
		if r.count != want {
			t.Fatalf("during catch-up the follower served %d keys at revision %d, where there were %d", r.count, r.rev, want)
		}
	}
	t.Logf("%d serializable reads of the follower checked during its catch-up, %d refused", len(reads), refused)
	lagAddr := c.Replica(lagging).APIAddr()
	leadAddr := c.Replica(leader).APIAddr()
	for _, rev := range []int64{0, head.Header.Revision, mid.Header.Revision, mid.Header.Revision - 1000} {
		req := func() *pb.RangeRequest {
			return &pb.RangeRequest{Key: []byte("/snap/"), RangeEnd: []byte("/snap0"), Revision: rev}
		}
		got, want := serializableRangeOf(t, lagAddr, shard, req()), serializableRangeOf(t, leadAddr, shard, req())
		if got.Count != want.Count || len(got.Kvs) != len(want.Kvs) {
			t.Fatalf("rev %d: restored replica has %d keys, leader %d", rev, got.Count, want.Count)
		}
		for i := range got.Kvs {
			if !proto.Equal(got.Kvs[i], want.Kvs[i]) {
				t.Fatalf("rev %d: key %d differs: %v vs %v", rev, i, got.Kvs[i], want.Kvs[i])
			}
		}
	}
	// The store's other keys are intact.
	if o := serializableRangeOf(t, lagAddr, replica.FirstDataShardID, &pb.RangeRequest{Key: []byte("/other")}); len(o.Kvs) != 1 || string(o.Kvs[0].Value) != "kept" {
		t.Fatalf("/other on the restored replica: %v", o.Kvs)
	}
}
