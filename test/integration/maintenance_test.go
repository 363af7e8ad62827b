package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestMaintenance covers etcd's Maintenance and Cluster services on a
// three-store cluster: status, hash (and that every replica of the shard
// hashes the same), defragment, move-leader, member list, and the refusal
// of etcd member changes; plus /health.
func TestMaintenance(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores: not in -short")
	}
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	ep := c.Endpoints()[0]
	for i := 0; i < 50; i++ {
		mustPut(t, cli, fmt.Sprintf("/m/%02d", i%10), strings.Repeat("v", i))
	}
	last := mustPut(t, cli, "/m/last", "x").Header.Revision

	t.Run("status", func(t *testing.T) {
		st, err := cli.Status(ctxT(t), ep)
		if err != nil {
			t.Fatal(err)
		}
		if st.Version != "3.7.0" || st.DbSize <= 0 || st.Leader != st.Header.MemberId || st.RaftIndex == 0 ||
			st.RaftTerm == 0 || st.Header.Revision < last || st.IsLearner {
			t.Fatalf("status %+v", st)
		}
	})

	t.Run("every replica hashes the same", func(t *testing.T) {
		h, err := cli.HashKV(ctxT(t), ep, last)
		if err != nil {
			t.Fatal(err)
		}
		if h.HashRevision != last || h.Hash == 0 {
			t.Fatalf("hashkv %+v", h)
		}
		for i := 0; i < c.Size(); i++ {
			conn, err := grpc.NewClient(c.Replica(i).APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			var got *shardpb.HashKVResponse
			deadline := time.Now().Add(10 * time.Second)
			for {
				// A follower may still be applying the last write.
				got, err = shardpb.NewShardClient(conn).HashKV(ctxT(t), &shardpb.HashKVRequest{ShardId: replica.FirstDataShardID, Revision: last})
				if err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			conn.Close()
			if err != nil || got.Hash != h.Hash {
				t.Fatalf("store %d hashes %v (%v), the gateway %08x", i+1, got, err, h.Hash)
			}
		}
		mustPut(t, cli, "/m/after", "y")
		if h2, err := cli.HashKV(ctxT(t), ep, 0); err != nil || h2.Hash == h.Hash {
			t.Fatalf("a write did not change the hash: %v %v", h2, err)
		}
	})

	t.Run("defragment", func(t *testing.T) {
		if _, err := cli.Defragment(ctxT(t), ep); err != nil {
			t.Fatal(err)
		}
		if g, err := cli.Get(ctxT(t), "/m/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || g.Count != 12 {
			t.Fatalf("after defragment: %v %v", g, err)
		}
		// Clients asking at once are served one at a time per store, all
		// of them (two Badger defragments at once would race).
		errc := make(chan error, 6)
		for i := 0; i < 6; i++ {
			go func() {
				var err error
				if i%2 == 0 {
					_, err = cli.Defragment(ctxT(t), ep)
				} else {
					_, err = cli.HashKV(ctxT(t), ep, 0)
				}
				errc <- err
			}()
		}
		for i := 0; i < 6; i++ {
			if err := <-errc; err != nil {
				t.Fatalf("concurrent defragment and hash: %v", err)
			}
		}
	})

	t.Run("move leader", func(t *testing.T) {
		from := c.LeaderIndex(replica.FirstDataShardID)
		to := (from + 1) % c.Size()
		target := c.Replica(to).StoreID()
		if _, err := cli.MoveLeader(ctxT(t), target); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for c.LeaderIndex(replica.FirstDataShardID) != to {
			if time.Now().After(deadline) {
				t.Fatalf("the data shard's leader is store %d, not %d", c.LeaderIndex(replica.FirstDataShardID)+1, to+1)
			}
			time.Sleep(50 * time.Millisecond)
		}
		mustPut(t, cli, "/m/moved", "x")
		if _, err := cli.MoveLeader(ctxT(t), 999); err == nil || !strings.Contains(err.Error(), "bad leader transferee") {
			t.Fatalf("move to an unknown store: %v", err)
		}
	})

	t.Run("members are gateways", func(t *testing.T) {
		ml, err := cli.MemberList(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(ml.Members) != 1 || ml.Members[0].ClientURLs[0] != ep || ml.Members[0].ID != ml.Header.MemberId {
			t.Fatalf("members %+v", ml.Members)
		}
		_, err = cli.MemberAdd(ctxT(t), []string{"http://127.0.0.1:1"})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "gateways") {
			t.Fatalf("member add: %v", err)
		}
		_, err = pb.NewClusterClient(cli.ActiveConnection()).MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: ml.Members[0].ID})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("member remove: %v", err)
		}
	})

	t.Run("health", func(t *testing.T) {
		resp, err := http.Get(ep + "/health")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != `{"health":"true","reason":""}` {
			t.Fatalf("/health: %d %s", resp.StatusCode, body)
		}
		c.StopReplica(0)
		c.StopReplica(1)
		c.StopReplica(2)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ep+"/health", nil)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"health":"false"`) {
			t.Fatalf("/health without replicas: %d %s", resp.StatusCode, body)
		}
	})
}
