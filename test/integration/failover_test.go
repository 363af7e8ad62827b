package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// ack is one acknowledged write.
type ack struct {
	key, value string
	rev        int64
}

// writer puts fresh keys until stop closes, recording every acknowledged
// write. Failed writes are allowed (their outcome is unknown to the client);
// acknowledged ones must survive.
func writer(cli *clientv3.Client, id int, stop <-chan struct{}, out *[]ack, mu *sync.Mutex) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		k, v := fmt.Sprintf("/w/%d/%06d", id, i), fmt.Sprintf("v%d-%d", id, i)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r, err := cli.Put(ctx, k, v)
		cancel()
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		mu.Lock()
		*out = append(*out, ack{k, v, r.Header.Revision})
		mu.Unlock()
	}
}

// checkAcks verifies every acknowledged write is readable with its value
// and revision, and revisions are unique and increase in ack order per writer.
func checkAcks(t *testing.T, cli *clientv3.Client, acks []ack) {
	t.Helper()
	seen := map[int64]string{}
	last := map[string]int64{}
	for _, a := range acks {
		if other, dup := seen[a.rev]; dup {
			t.Fatalf("revision %d acknowledged for %s and %s", a.rev, other, a.key)
		}
		seen[a.rev] = a.key
		w := a.key[:len("/w/0")]
		if a.rev <= last[w] {
			t.Fatalf("writer %s: revision %d after %d", w, a.rev, last[w])
		}
		last[w] = a.rev
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		g, err := cli.Get(ctx, a.key)
		cancel()
		if err != nil {
			t.Fatalf("get %s: %v", a.key, err)
		}
		if len(g.Kvs) != 1 || string(g.Kvs[0].Value) != a.value || g.Kvs[0].ModRevision != a.rev {
			t.Fatalf("acknowledged write %+v lost or changed: %+v", a, g.Kvs)
		}
	}
}

func waitAcks(t *testing.T, mu *sync.Mutex, acks *[]ack, atLeast int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(*acks)
		mu.Unlock()
		if n >= atLeast {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("only %d acknowledged writes after %v, want %d", len(*acks), within, atLeast)
}

// writeLoad is n writers running in the background (see writer).
type writeLoad struct {
	mu   sync.Mutex
	acks []ack
	stop chan struct{}
	wg   sync.WaitGroup
}

func startWriters(cli *clientv3.Client, n int) *writeLoad {
	l := &writeLoad{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() { defer l.wg.Done(); writer(cli, i, l.stop, &l.acks, &l.mu) }()
	}
	return l
}

// waitMore waits until n more writes than now are acknowledged.
func (l *writeLoad) waitMore(t *testing.T, n int, within time.Duration) {
	t.Helper()
	l.mu.Lock()
	before := len(l.acks)
	l.mu.Unlock()
	waitAcks(t, &l.mu, &l.acks, before+n, within)
}

// finish stops the writers and returns every acknowledged write.
func (l *writeLoad) finish() []ack {
	close(l.stop)
	l.wg.Wait()
	return l.acks
}

// TestLeaderKill stops the store leading the data shard while writes flow;
// writes resume after re-election and nothing acknowledged is lost.
func TestLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("failover: not in -short")
	}
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	load := startWriters(cli, 4)
	cycleLeader(t, c, load)
	checkAcks(t, cli, load.finish())
}

// cycleLeader stops the store leading the data shard under load, then
// restarts it, waiting each time for writes to go on.
func cycleLeader(t *testing.T, c *testcluster.Cluster, load *writeLoad) {
	t.Helper()
	load.waitMore(t, 100, 20*time.Second)
	leader := c.LeaderIndex(replica.FirstDataShardID)
	if leader < 0 {
		t.Fatal("no leader for the data shard")
	}
	c.StopReplica(leader)
	load.waitMore(t, 100, 30*time.Second)
	c.StartReplica(leader)
	load.waitMore(t, 50, 30*time.Second)
}

// TestRestartKeepsWrites stops every store and restarts them on the same
// data: all acknowledged writes are there and revisions continue upward.
func TestRestartKeepsWrites(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("stores=%d", n), func(t *testing.T) {
			if n == 3 && testing.Short() {
				t.Skip("three stores: not in -short")
			}
			c := testcluster.New(t, n)
			cli := c.Client(t)
			var acks []ack
			for i := 0; i < 50; i++ {
				k, v := fmt.Sprintf("/w/0/%06d", i), fmt.Sprintf("v%d", i)
				r := mustPut(t, cli, k, v)
				acks = append(acks, ack{k, v, r.Header.Revision})
			}
			for i := 0; i < n; i++ {
				c.StopReplica(i)
			}
			for i := 0; i < n; i++ {
				c.StartReplica(i)
			}
			c.WaitReady()
			checkAcks(t, cli, acks)
			r := mustPut(t, cli, "/after", "restart")
			if r.Header.Revision <= acks[len(acks)-1].rev {
				t.Fatalf("revision went back: %d after %d", r.Header.Revision, acks[len(acks)-1].rev)
			}
		})
	}
}
